"""Assembly: spans held per trace until idle or old, duplicates once, late spans merged, bounds."""

from __future__ import annotations

from observer.collector.assemble import (
    IDLE_TIMEOUT,
    MAX_AGE,
    MAX_LIVE_SPANS,
    MAX_LIVE_TRACES,
    SHUTDOWN,
    Assembler,
)
from observer.collector.model import SpanKind
from tests.unit.collector_spans import FakeClock, sid, span

A = "a" * 32
B = "b" * 32
C = "c" * 32


def assembler(clock: FakeClock, **overrides: float) -> Assembler:
    settings: dict[str, float] = {
        "idle_timeout": 5.0,
        "max_age": 60.0,
        "late_window": 30.0,
        "max_live_traces": 100,
        "max_live_spans": 1000,
    }
    settings.update(overrides)
    return Assembler(
        idle_timeout=settings["idle_timeout"],
        max_age=settings["max_age"],
        late_window=settings["late_window"],
        max_live_traces=int(settings["max_live_traces"]),
        max_live_spans=int(settings["max_live_spans"]),
        clock=clock,
    )


def test_a_trace_is_held_until_it_has_been_quiet_for_the_idle_timeout() -> None:
    """Spans wait while the trace is active; once quiet for idle_timeout it is emitted whole."""
    clock = FakeClock()
    assembly = assembler(clock)
    assembly.add([span("1", trace_id=A)])
    clock.advance(4)
    assembly.add([span("2", "1", trace_id=A)])
    clock.advance(4)
    assert assembly.expire() == []
    clock.advance(1)
    (trace,) = assembly.expire()
    assert [s.span_id for s in trace.spans] == [sid("1"), sid("2")]
    assert assembly.counts.emitted == {IDLE_TIMEOUT: 1}
    assert assembly.live_traces == 0


def test_a_busy_trace_is_emitted_at_its_max_age() -> None:
    """A trace that never goes quiet is emitted when it reaches max_age."""
    clock = FakeClock()
    assembly = assembler(clock, idle_timeout=5, max_age=14)
    for number in range(1, 5):
        assembly.add([span(str(number), trace_id=A)])
        assert assembly.expire() == []
        clock.advance(4)
    (trace,) = assembly.expire()
    assert len(trace.spans) == 4
    assert assembly.counts.emitted == {MAX_AGE: 1}


def test_a_span_delivered_twice_is_held_once() -> None:
    """A retried span (same id, kind and service) is dropped and counted as a duplicate."""
    clock = FakeClock()
    assembly = assembler(clock)
    assembly.add([span("1", trace_id=A), span("2", "1", trace_id=A)])
    assembly.add([span("2", "1", trace_id=A)])
    clock.advance(5)
    (trace,) = assembly.expire()
    assert [s.span_id for s in trace.spans] == [sid("1"), sid("2")]
    assert assembly.counts.duplicate_spans == 1


def test_the_two_halves_of_a_zipkin_shared_span_id_are_both_kept() -> None:
    """A client and a server span sharing one id are two spans, not a duplicate."""
    clock = FakeClock()
    assembly = assembler(clock)
    assembly.add(
        [
            span("1", service="web", kind=SpanKind.CLIENT, trace_id=A),
            span("1", service="app", kind=SpanKind.SERVER, trace_id=A),
            span("1", service="app", kind=SpanKind.SERVER, trace_id=A),
        ]
    )
    clock.advance(5)
    (trace,) = assembly.expire()
    assert [(s.service, s.kind) for s in trace.spans] == [
        ("web", SpanKind.CLIENT),
        ("app", SpanKind.SERVER),
    ]
    assert assembly.counts.duplicate_spans == 1


def test_a_late_span_is_merged_into_the_emitted_trace_which_is_emitted_again_marked_late() -> None:
    """A span arriving after emission joins its trace; the trace comes again, late, whole."""
    clock = FakeClock()
    assembly = assembler(clock)
    assembly.add([span("1", trace_id=A), span("2", "1", trace_id=A)])
    clock.advance(5)
    (first,) = assembly.expire()
    assert not first.late
    clock.advance(10)
    assembly.add([span("3", "2", trace_id=A)])
    clock.advance(5)
    (again,) = assembly.expire()
    assert again.late
    assert [s.span_id for s in again.spans] == [sid("1"), sid("2"), sid("3")]
    assert again.already_emitted == 2
    assert [s.span_id for s in first.spans] == [sid("1"), sid("2")]
    assert assembly.counts.late_spans == 1
    assert assembly.counts.reemitted == 1


def test_a_late_duplicate_of_an_emitted_span_does_not_reopen_the_trace() -> None:
    """A retried span that was already emitted is a duplicate, not a reason to emit again."""
    clock = FakeClock()
    assembly = assembler(clock)
    assembly.add([span("1", trace_id=A)])
    clock.advance(5)
    assembly.expire()
    assembly.add([span("1", trace_id=A)])
    clock.advance(5)
    assert assembly.expire() == []
    assert assembly.counts.duplicate_spans == 1


def test_a_span_later_than_the_late_window_starts_a_new_trace() -> None:
    """After late_window an emitted trace is forgotten; its next span is a trace of its own."""
    clock = FakeClock()
    assembly = assembler(clock, late_window=30)
    assembly.add([span("1", trace_id=A)])
    clock.advance(5)
    assembly.expire()
    clock.advance(30)
    assembly.expire()
    assembly.add([span("2", "1", trace_id=A)])
    clock.advance(5)
    (trace,) = assembly.expire()
    assert not trace.late
    assert [s.span_id for s in trace.spans] == [sid("2")]


def test_at_the_live_trace_bound_the_oldest_trace_is_emitted_early_and_counted() -> None:
    """One trace too many emits the oldest at once, counted under max_live_traces."""
    clock = FakeClock()
    assembly = assembler(clock, max_live_traces=2)
    assembly.add([span("1", trace_id=A)])
    clock.advance(1)
    assembly.add([span("1", trace_id=B)])
    clock.advance(1)
    assembly.add([span("2", "1", trace_id=A)])  # A is the oldest opened, though busy
    early = assembly.add([span("1", trace_id=C)])
    assert [trace.trace_id for trace in early] == [A]
    assert assembly.counts.emitted == {MAX_LIVE_TRACES: 1}
    assert assembly.live_traces == 2


def test_at_the_span_bound_retained_traces_are_forgotten_before_live_ones_are_cut() -> None:
    """Held spans over the bound drop emitted traces kept for late spans first."""
    clock = FakeClock()
    assembly = assembler(clock, max_live_spans=3)
    assembly.add([span("1", trace_id=A), span("2", "1", trace_id=A)])
    clock.advance(5)
    assembly.expire()
    assert assembly.retained_spans == 2
    early = assembly.add([span("1", trace_id=B), span("2", "1", trace_id=B)])
    assert early == []
    assert assembly.counts.forgotten_early == 1
    assert (assembly.retained_spans, assembly.live_spans) == (0, 2)


def test_at_the_span_bound_the_oldest_live_trace_is_emitted_early_and_counted() -> None:
    """With nothing retained to forget, the oldest live traces go out early, counted."""
    clock = FakeClock()
    assembly = assembler(clock, max_live_spans=3, late_window=0)
    assembly.add([span("1", trace_id=A), span("2", "1", trace_id=A)])
    clock.advance(1)
    early = assembly.add([span("1", trace_id=B), span("2", "1", trace_id=B)])
    assert [trace.trace_id for trace in early] == [A]
    assert assembly.counts.emitted == {MAX_LIVE_SPANS: 1}
    assert assembly.held_spans == 2


def test_drain_emits_every_live_trace() -> None:
    """At shutdown every live trace is emitted, whatever its age."""
    clock = FakeClock()
    assembly = assembler(clock)
    assembly.add([span("1", trace_id=A), span("1", trace_id=B)])
    assert sorted(trace.trace_id for trace in assembly.drain()) == [A, B]
    assert assembly.counts.emitted == {SHUTDOWN: 2}
    assert assembly.held_spans == 0
