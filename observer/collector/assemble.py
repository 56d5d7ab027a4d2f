"""Assembly: spans held per trace id until the trace is whole enough to judge.

A trace is emitted when it has been quiet for `idle_timeout` (no new span), or when it
has been live for `max_age` however busy it is. Senders deliver at least once, so a span
seen before (same span id, kind and service) is dropped and counted. After emission a
trace is *retained* for `late_window`: a span that arrives for it then is merged into it,
and the whole trace is emitted again marked `late` once it is quiet again, with
`already_emitted` telling which spans are new. Later than that, a span starts a new trace.

Memory is bounded by the number of live traces and by the spans held (live and
retained). At the trace bound the oldest live trace is emitted early; at the span bound
retained traces are forgotten first, oldest first, then the oldest live traces are
emitted early without being retained. Each is counted by reason, and each batch that
caused one says so in one log line.

The clock is injected (seconds, monotonic), so tests drive time. Not thread-safe: one
task owns an `Assembler`.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from observer.collector.model import Span, SpanKind, Trace

log = logging.getLogger(__name__)

Clock = Callable[[], float]

# Why a trace was emitted; the values are metric labels.
IDLE_TIMEOUT = "idle_timeout"
MAX_AGE = "max_age"
MAX_LIVE_TRACES = "max_live_traces"
MAX_LIVE_SPANS = "max_live_spans"
SHUTDOWN = "shutdown"

_DedupKey = str | tuple[str, SpanKind, str]


@dataclass(slots=True, eq=False)
class _Held:
    """One trace's spans while live, and after emission while retained."""

    trace_id: str
    opened_at: float
    last_span_at: float
    spans: list[Span] = field(default_factory=list)
    # Span id → span; a second span with the same id but another kind or service (a
    # Zipkin shared client/server pair) is keyed by (id, kind, service).
    seen: dict[_DedupKey, Span] = field(default_factory=dict)
    # Bumped each time the trace is opened, so stale entries of the age queue are skipped.
    generation: int = 0
    emitted_at: float = 0.0
    already_emitted: int = 0
    late: bool = False


@dataclass(slots=True)
class AssemblyCounts:
    """What the assembler has done since it started; read by the metrics at scrape time."""

    spans_in: int = 0
    duplicate_spans: int = 0
    # Spans merged into a trace that had already been emitted.
    late_spans: int = 0
    # Emissions by reason (IDLE_TIMEOUT, MAX_AGE, MAX_LIVE_TRACES, MAX_LIVE_SPANS, SHUTDOWN).
    emitted: Counter[str] = field(default_factory=Counter)
    # Emissions of traces that had been emitted before (late spans merged).
    reemitted: int = 0
    # Retained traces dropped before their late window ended, to respect max_live_spans.
    forgotten_early: int = 0


class Assembler:
    def __init__(
        self,
        *,
        idle_timeout: float,
        max_age: float,
        late_window: float,
        max_live_traces: int,
        max_live_spans: int,
        clock: Clock = time.monotonic,
    ) -> None:
        self.idle_timeout = idle_timeout
        self.max_age = max_age
        self.late_window = late_window
        self.max_live_traces = max_live_traces
        self.max_live_spans = max_live_spans
        self._clock = clock
        # Live traces, least recently added to first (idle expiry reads from the front).
        self._live: OrderedDict[str, _Held] = OrderedDict()
        # Live traces in the order they were opened (max_age and early flushes read from
        # the front); entries of traces since emitted are skipped when met.
        self._by_age: deque[tuple[float, int, _Held]] = deque()
        # Emitted traces kept for late spans, oldest emission first.
        self._retained: OrderedDict[str, _Held] = OrderedDict()
        self.live_spans = 0
        self.retained_spans = 0
        self.counts = AssemblyCounts()

    @property
    def live_traces(self) -> int:
        return len(self._live)

    @property
    def retained_traces(self) -> int:
        return len(self._retained)

    def add(self, spans: Iterable[Span]) -> list[Trace]:
        """Hold a batch of spans; returns the traces the bounds forced out early."""
        now = self._clock()
        live = self._live
        retained = self._retained
        counts = self.counts
        touched: dict[str, _Held] = {}
        added = 0
        for span in spans:
            added += 1
            trace_id = span.trace_id
            held = touched.get(trace_id) or live.get(trace_id)
            if held is None:
                held = retained.get(trace_id)
                if held is None:
                    held = _Held(trace_id, now, now)
                    live[trace_id] = held
                    self._by_age.append((now, 0, held))
                elif _is_duplicate(held, span):
                    counts.duplicate_spans += 1
                    continue
                else:
                    self._reopen(held, now)
            if _is_duplicate(held, span):
                counts.duplicate_spans += 1
                continue
            _remember(held, span)
            held.spans.append(span)
            if held.late:
                counts.late_spans += 1
            self.live_spans += 1
            touched[trace_id] = held
        counts.spans_in += added
        for trace_id, held in touched.items():
            held.last_span_at = now
            live.move_to_end(trace_id)
        if len(live) > self.max_live_traces or self.held_spans > self.max_live_spans:
            return self._enforce_bounds(now)
        return []

    @property
    def held_spans(self) -> int:
        return self.live_spans + self.retained_spans

    def expire(self) -> list[Trace]:
        """Emit the traces due now (quiet for idle_timeout, or live for max_age), and
        forget retained traces whose late window has passed."""
        now = self._clock()
        emitted: list[Trace] = []
        live = self._live
        while live:
            held = live[next(iter(live))]
            if held.last_span_at + self.idle_timeout > now:
                break
            emitted.append(self._emit(held, IDLE_TIMEOUT, now, retain=True))
        by_age = self._by_age
        while by_age:
            opened_at, generation, held = by_age[0]
            if live.get(held.trace_id) is not held or held.generation != generation:
                by_age.popleft()
                continue
            if opened_at + self.max_age > now:
                break
            by_age.popleft()
            emitted.append(self._emit(held, MAX_AGE, now, retain=True))
        retained = self._retained
        while retained:
            held = retained[next(iter(retained))]
            if held.emitted_at + self.late_window > now:
                break
            self._forget(held)
        return emitted

    def drain(self) -> list[Trace]:
        """Emit every live trace (at shutdown)."""
        now = self._clock()
        return [self._emit(held, SHUTDOWN, now, retain=False) for held in list(self._live.values())]

    def _reopen(self, held: _Held, now: float) -> None:
        """A retained trace got a new span: it is live again, and will be emitted late."""
        del self._retained[held.trace_id]
        self.retained_spans -= len(held.spans)
        self.live_spans += len(held.spans)
        held.late = True
        held.opened_at = now
        held.generation += 1
        self._live[held.trace_id] = held
        self._by_age.append((now, held.generation, held))

    def _emit(self, held: _Held, reason: str, now: float, *, retain: bool) -> Trace:
        del self._live[held.trace_id]
        count = len(held.spans)
        self.live_spans -= count
        trace = Trace(
            trace_id=held.trace_id,
            # A copy: spans merged later must not appear in a trace already handed on.
            spans=list(held.spans),
            late=held.late,
            already_emitted=held.already_emitted,
        )
        self.counts.emitted[reason] += 1
        if held.late:
            self.counts.reemitted += 1
        held.already_emitted = count
        if retain and self.late_window > 0:
            held.emitted_at = now
            self._retained[held.trace_id] = held
            self.retained_spans += count
        return trace

    def _forget(self, held: _Held) -> None:
        del self._retained[held.trace_id]
        self.retained_spans -= len(held.spans)

    def _oldest_live(self) -> _Held:
        while True:
            _, generation, held = self._by_age.popleft()
            if self._live.get(held.trace_id) is held and held.generation == generation:
                return held

    def _enforce_bounds(self, now: float) -> list[Trace]:
        emitted: list[Trace] = []
        while len(self._live) > self.max_live_traces:
            emitted.append(self._emit(self._oldest_live(), MAX_LIVE_TRACES, now, retain=True))
        forgotten = 0
        while self.held_spans > self.max_live_spans and self._retained:
            self._forget(self._retained[next(iter(self._retained))])
            forgotten += 1
        self.counts.forgotten_early += forgotten
        flushed_for_spans = 0
        while self.held_spans > self.max_live_spans and self._live:
            emitted.append(self._emit(self._oldest_live(), MAX_LIVE_SPANS, now, retain=False))
            flushed_for_spans += 1
        if emitted or forgotten:
            log.warning(
                "Trace assembly is at its memory bounds: emitted the oldest traces early and "
                "forgot retained ones; raise assembly.max_live_traces / max_live_spans or "
                "shorten idle_timeout if this persists.",
                extra={
                    "emitted_early_for_traces": len(emitted) - flushed_for_spans,
                    "emitted_early_for_spans": flushed_for_spans,
                    "retained_forgotten": forgotten,
                    "live_traces": len(self._live),
                    "held_spans": self.held_spans,
                },
            )
        return emitted


def _is_duplicate(held: _Held, span: Span) -> bool:
    existing = held.seen.get(span.span_id)
    if existing is None:
        return False
    if existing.kind is span.kind and existing.service == span.service:
        return True
    return (span.span_id, span.kind, span.service) in held.seen


def _remember(held: _Held, span: Span) -> None:
    if span.span_id in held.seen:
        held.seen[(span.span_id, span.kind, span.service)] = span
    else:
        held.seen[span.span_id] = span
