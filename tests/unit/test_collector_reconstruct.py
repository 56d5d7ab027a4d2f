"""Reconstruction: Zipkin shared ids split, the tree, clock skew, and the completeness verdict."""

from __future__ import annotations

import copy

from observer.collector.model import Completeness, Span, SpanEvent, SpanKind, Trace
from observer.collector.reconstruct import (
    ADJUSTED_ATTRIBUTE,
    CLIENT_WITHOUT_SERVER,
    DUPLICATE_SPAN_ID,
    MISSING_PARENT,
    ORPHAN,
    PARENT_CYCLE,
    UNADJUSTED_ATTRIBUTE,
    derived_span_id,
    reconstruct,
)
from observer.protocols import ZIPKIN_SHARED
from tests.unit.collector_spans import MS, TRACE, sid, span

SKEW_BOUND = 60_000 * MS

SERVER = SpanKind.SERVER
CLIENT = SpanKind.CLIENT


def rebuilt(*spans: Span) -> Trace:
    trace = Trace(TRACE, list(spans))
    reconstruct(trace, max_skew_ns=SKEW_BOUND)
    return trace


def shared(span_: Span) -> Span:
    span_.attributes[ZIPKIN_SHARED] = True
    return span_


def by_name(trace: Trace) -> dict[str, Span]:
    return {s.name: s for s in trace.spans}


# --- Zipkin shared span ids ---------------------------------------------------------------


def shared_rpc() -> list[Span]:
    """web's client and app's server share span id 2; app's own work hangs below id 2."""
    return [
        span("1", service="web", kind=SERVER, name="web-in", end_ms=100),
        span("2", "1", service="web", kind=CLIENT, name="web-out", start_ms=10, end_ms=90),
        shared(span("2", "1", service="app", kind=SERVER, name="app-in", start_ms=15, end_ms=85)),
        span("3", "2", service="app", name="app-work", start_ms=20, end_ms=80),
    ]


def test_a_shared_server_half_gets_its_own_id_under_its_client_half() -> None:
    """The server half of a shared id becomes a child of the client half, with a new id."""
    spans = by_name(rebuilt(*shared_rpc()))
    server = spans["app-in"]
    assert server.parent_span_id == sid("2")
    assert server.span_id == derived_span_id(sid("2"), "app")
    assert spans["web-out"].span_id == sid("2")


def test_spans_below_a_shared_id_follow_the_half_of_their_own_service() -> None:
    """The server side's work moves under the server half; the trace is then complete."""
    trace = rebuilt(*shared_rpc())
    spans = by_name(trace)
    assert spans["app-work"].parent_span_id == spans["app-in"].span_id
    assert trace.verdict.completeness is Completeness.COMPLETE


def test_reconstructing_a_trace_again_leaves_the_split_as_it_was() -> None:
    """A second reconstruction (a late re-emission) gives the same ids and parents."""
    trace = rebuilt(*shared_rpc())
    before = [(s.span_id, s.parent_span_id) for s in trace.spans]
    reconstruct(trace, max_skew_ns=SKEW_BOUND)
    assert [(s.span_id, s.parent_span_id) for s in trace.spans] == before


def test_a_late_child_of_a_shared_id_follows_the_half_split_earlier() -> None:
    """A span below the shared id that arrives after the split goes under the server half."""
    trace = rebuilt(*shared_rpc())
    trace.spans.append(span("4", "2", service="app", name="late-work", start_ms=30, end_ms=40))
    reconstruct(trace, max_skew_ns=SKEW_BOUND)
    spans = by_name(trace)
    assert spans["late-work"].parent_span_id == spans["app-in"].span_id


def test_a_shared_server_half_whose_client_never_came_is_split_and_partial() -> None:
    """Without its client half the shared span still gets its own id; the missing half shows."""
    trace = rebuilt(shared(span("2", service="app", kind=SERVER, name="app-in")))
    assert trace.spans[0].span_id == derived_span_id(sid("2"), "app")
    assert trace.verdict.reasons[MISSING_PARENT] == [sid("2")]


# --- the verdict --------------------------------------------------------------------------


def test_a_whole_trace_is_complete() -> None:
    """A trace where every parent is present and every client has its server is complete."""
    trace = rebuilt(
        span("1", service="web", kind=SERVER, end_ms=100),
        span("2", "1", service="web", kind=CLIENT, start_ms=10, end_ms=90),
        span("3", "2", service="app", kind=SERVER, start_ms=20, end_ms=80),
    )
    assert trace.verdict.completeness is Completeness.COMPLETE
    assert trace.verdict.reasons == {}


def test_a_missing_middle_span_makes_the_trace_partial_naming_it_and_the_cut_off_span() -> None:
    """Root and grandchild without the child: partial, the child's id missing, its child orphaned."""
    trace = rebuilt(
        span("1", service="web", kind=SERVER, end_ms=100),
        span("3", "2", service="db", kind=SERVER, start_ms=20, end_ms=80),
    )
    assert trace.verdict.completeness is Completeness.PARTIAL
    assert trace.verdict.reasons == {ORPHAN: [sid("3")], MISSING_PARENT: [sid("2")]}


def test_a_client_span_without_its_server_side_makes_the_trace_partial() -> None:
    """A client span with nothing below it and no peer named is reported as such."""
    trace = rebuilt(
        span("1", service="web", kind=SERVER, end_ms=100),
        span("2", "1", service="web", kind=CLIENT, start_ms=10, end_ms=90),
    )
    assert trace.verdict.reasons == {CLIENT_WITHOUT_SERVER: [sid("2")]}


def test_a_client_span_naming_a_peer_that_sends_no_spans_is_complete() -> None:
    """A call to a database (db.system) needs no server span to be whole."""
    trace = rebuilt(
        span("1", service="web", kind=SERVER, end_ms=100),
        span("2", "1", service="web", kind=CLIENT, attributes={"db.system": "postgresql"}),
    )
    assert trace.verdict.completeness is Completeness.COMPLETE


def test_an_app_client_calling_through_its_sidecar_client_is_complete() -> None:
    """Client → client of one service is a proxy hop: the outer client is not unpaired."""
    trace = rebuilt(
        span("1", service="web", kind=SERVER, end_ms=100),
        span("2", "1", service="web", kind=CLIENT, start_ms=5, end_ms=95),
        span("3", "2", service="web", kind=CLIENT, start_ms=6, end_ms=94),
        span("4", "3", service="app", kind=SERVER, start_ms=10, end_ms=90),
    )
    assert trace.verdict.completeness is Completeness.COMPLETE


def test_spans_whose_parents_form_a_cycle_are_reported() -> None:
    """Parent ids that go round in a circle leave spans no root reaches; they are named."""
    trace = rebuilt(span("1"), span("2", "3"), span("3", "2"))
    assert sorted(trace.verdict.reasons[PARENT_CYCLE]) == [sid("2"), sid("3")]


def test_two_spans_with_one_id_are_reported() -> None:
    """A span id used twice (without the Zipkin shared mark) is a reason of its own."""
    trace = rebuilt(span("1", service="a"), span("1", service="b"))
    assert trace.verdict.reasons == {DUPLICATE_SPAN_ID: [sid("1")]}


# --- clock skew ---------------------------------------------------------------------------


def skewed_pair(child_start_ms: float, child_end_ms: float) -> tuple[Span, Span]:
    parent = span("1", service="web", kind=CLIENT, end_ms=100, resource={"host.name": "node-a"})
    child = span(
        "2",
        "1",
        service="app",
        kind=SERVER,
        start_ms=child_start_ms,
        end_ms=child_end_ms,
        resource={"host.name": "node-b"},
    )
    return parent, child


def test_a_child_from_a_skewed_host_is_moved_inside_its_parent_and_marked() -> None:
    """A server span starting before its client is centred in it, and says by how much."""
    parent, child = skewed_pair(-30, 50)  # 80 ms long, 30 ms too early
    child.events.append(SpanEvent(child.start_ns + 5 * MS, "received"))
    original_start = child.start_ns
    rebuilt(parent, child)
    delta = parent.start_ns + (100 - 80) // 2 * MS - original_start
    assert child.start_ns == parent.start_ns + 10 * MS
    assert child.end_ns - child.start_ns == 80 * MS
    assert child.skew_adjustment_ns == delta
    assert child.attributes[ADJUSTED_ATTRIBUTE] == delta
    assert child.events[0].time_ns == child.start_ns + 5 * MS


def test_spans_on_the_same_host_as_an_adjusted_span_move_with_it() -> None:
    """A descendant sharing the adjusted span's clock moves by the same amount."""
    parent, child = skewed_pair(-30, 50)
    grandchild = span(
        "3", "2", service="app", start_ms=-20, end_ms=40, resource={"host.name": "node-b"}
    )
    rebuilt(parent, child, grandchild)
    assert grandchild.skew_adjustment_ns == child.skew_adjustment_ns != 0


def test_a_skew_beyond_the_bound_is_left_and_marked() -> None:
    """A move larger than max_clock_skew is not made; the span records the skew it saw."""
    parent, child = skewed_pair(-30, 50)
    original = (child.start_ns, child.end_ns)
    trace = Trace(TRACE, [parent, child])
    reconstruct(trace, max_skew_ns=10 * MS)
    assert (child.start_ns, child.end_ns) == original
    assert child.skew_adjustment_ns == 0
    assert child.attributes[UNADJUSTED_ATTRIBUTE] == 40 * MS


def test_a_child_that_fits_inside_its_parent_is_not_moved() -> None:
    """No skew, no move, no mark."""
    parent, child = skewed_pair(10, 90)
    rebuilt(parent, child)
    assert child.skew_adjustment_ns == 0
    assert ADJUSTED_ATTRIBUTE not in child.attributes


def test_a_consumer_outliving_its_producer_is_not_moved() -> None:
    """Messaging is asynchronous: a consumer after its producer ended is not skew."""
    producer = span("1", service="web", kind=SpanKind.PRODUCER, end_ms=10)
    consumer = span("2", "1", service="worker", kind=SpanKind.CONSUMER, start_ms=50, end_ms=55)
    rebuilt(producer, consumer)
    assert consumer.skew_adjustment_ns == 0


def test_reconstructing_an_adjusted_trace_again_moves_nothing() -> None:
    """An adjusted span fits its parent, so a second pass leaves every time as it is."""
    parent, child = skewed_pair(-30, 50)
    trace = rebuilt(parent, child)
    before = copy.deepcopy(trace.spans)
    reconstruct(trace, max_skew_ns=SKEW_BOUND)
    assert trace.spans == before
