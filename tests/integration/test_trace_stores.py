"""The trace store contract, run against both stores: the embedded SQLite one and the real
Elasticsearch node. What each store does beyond it is in test_trace_store_specifics.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from observer.collector.model import SpanKind, Trace
from observer.collector.store import (
    Dependency,
    Operation,
    TraceQuery,
    TraceStore,
)
from observer.collector.store.elasticsearch import ElasticsearchTraceStore
from observer.collector.store.elasticsearch_indices import (
    SPANS_DATA_STREAM,
    SUMMARY_INDEX_PREFIX,
)
from observer.collector.store.sqlite import SqliteTraceStore
from observer.config import ElasticsearchConfig
from tests.integration.stored_traces import (
    BASE_NS,
    MS,
    TraceEmitter,
    make_span,
    rich_trace,
    shop_trace,
    trace_id,
)
from tests.services.elasticsearch import Node

DAY = 86400 * 1_000_000_000


@dataclass
class Subject:
    store: TraceStore
    registry: CollectorRegistry
    settle: Callable[[], Awaitable[None]]
    """Makes what was written visible to searches (Elasticsearch refreshes; SQLite is at once)."""

    def counted(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, {"store": self.store.name, **labels})
        return value or 0.0


async def _nothing() -> None:
    return None


@pytest.fixture(params=["embedded", pytest.param("elasticsearch", marks=pytest.mark.elasticsearch)])
async def subject(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Subject]:
    registry = CollectorRegistry()
    if request.param == "embedded":
        embedded = await SqliteTraceStore.open(tmp_path / "traces.sqlite", registry)
        yield Subject(embedded, registry, _nothing)
        await embedded.close()
        return
    es: Node = request.getfixturevalue("es")
    store = ElasticsearchTraceStore(ElasticsearchConfig(hosts=[es.url]), registry)

    async def refresh() -> None:
        await store.client.indices.refresh(
            index=f"{SPANS_DATA_STREAM},{SUMMARY_INDEX_PREFIX}*",
            ignore_unavailable=True,
            allow_no_indices=True,
        )

    yield Subject(store, registry, refresh)
    await store.close()


async def write(subject: Subject, *traces: Trace, emitter: TraceEmitter | None = None) -> None:
    """Store the traces as the trace core emits them (a fresh core unless `emitter` is given)."""
    emitter = emitter or TraceEmitter(subject.store.span_documents)
    await subject.store.write(emitter.emit(*traces))
    await subject.settle()


def ids(traces: list[Trace]) -> list[str]:
    return [trace.trace_id for trace in traces]


# --- the contract -------------------------------------------------------------------------


async def test_a_written_trace_comes_back_whole(subject: Subject) -> None:
    """Every field of every span, the verdict and the edges come back as they were written."""
    written = rich_trace(1)
    await write(subject, written)

    stored = await subject.store.get_trace(trace_id(1))

    assert stored == written


async def test_an_unknown_trace_is_none(subject: Subject) -> None:
    """Asking for a trace id that was never written gives None."""
    await write(subject, shop_trace(1))
    assert await subject.store.get_trace(trace_id(2)) is None


async def test_a_span_written_twice_is_stored_once(subject: Subject) -> None:
    """A trace delivered twice keeps one copy of each span and counts the second as duplicates."""
    await write(subject, shop_trace(1))
    await write(subject, shop_trace(1))

    stored = await subject.store.get_trace(trace_id(1))

    assert stored is not None
    assert len(stored.spans) == 6
    assert subject.counted("observer_trace_store_spans_total", outcome="stored") == 6
    assert subject.counted("observer_trace_store_spans_total", outcome="duplicate") == 6


async def test_a_late_trace_adds_its_spans_and_replaces_verdict_and_edges(
    subject: Subject,
) -> None:
    """Written again with a late span, a trace holds old and new spans and the new verdict and edges."""
    emitter = TraceEmitter(subject.store.span_documents)
    whole = shop_trace(1)
    first = Trace(whole.trace_id, whole.spans[:-1])  # the payments server span is late
    await write(subject, first, emitter=emitter)
    early = await subject.store.get_trace(trace_id(1))
    assert early is not None
    assert early.verdict.reasons == {"client_without_server": [first.spans[-1].span_id]}
    late = Trace(whole.trace_id, whole.spans[-1:])
    await write(subject, late, emitter=emitter)
    whole.late = True

    stored = await subject.store.get_trace(trace_id(1))

    assert stored == whole
    assert await subject.store.dependencies(BASE_NS + DAY, 2 * DAY) == [
        Dependency("checkout", "payments", calls=1, errors=1),
        Dependency("checkout", "postgresql", calls=1, errors=0),
        Dependency("frontend", "checkout", calls=1, errors=0),
    ]


async def test_the_halves_of_a_shared_span_id_are_both_kept(subject: Subject) -> None:
    """A Zipkin client and server span sharing one span id are two stored spans."""
    client = make_span(1, 5, 4, "webapp", "GET", SpanKind.CLIENT)
    server = make_span(1, 5, 4, "backend", "GET /api", SpanKind.SERVER, start_ms=1)
    await write(subject, Trace(trace_id(1), [client, server]))

    stored = await subject.store.get_trace(trace_id(1))

    assert stored is not None
    assert stored.spans == [client, server]


async def test_services_are_listed_once_and_sorted(subject: Subject) -> None:
    """Every service that sent a span is listed once, in order."""
    await write(subject, shop_trace(1), shop_trace(2), rich_trace(3))
    assert await subject.store.services() == [
        "checkout",
        "frontend",
        "gateway",
        "items",
        "payments",
    ]


async def test_operations_are_listed_with_their_kinds(subject: Subject) -> None:
    """A service's operations come with their span kinds, sorted by name."""
    await write(subject, shop_trace(1))
    assert await subject.store.operations("checkout") == [
        Operation("POST", SpanKind.CLIENT),
        Operation("POST /orders", SpanKind.SERVER),
        Operation("SELECT orders", SpanKind.CLIENT),
    ]


async def test_operations_can_be_filtered_by_kind(subject: Subject) -> None:
    """Asking for one span kind lists only the operations of that kind."""
    await write(subject, shop_trace(1))
    assert await subject.store.operations("checkout", SpanKind.SERVER) == [
        Operation("POST /orders", SpanKind.SERVER)
    ]


async def test_search_by_service_gives_the_latest_traces_first_up_to_the_limit(
    subject: Subject,
) -> None:
    """Traces of a service come latest first, at most `limit` of them, each whole."""
    await write(subject, *(shop_trace(n, start_ms=n * 1000) for n in range(1, 6)))

    found = await subject.store.find_traces(TraceQuery("payments", limit=3))

    assert ids(found) == [trace_id(5), trace_id(4), trace_id(3)]
    assert [len(trace.spans) for trace in found] == [6, 6, 6]
    assert found[0].edges == shop_trace(5).edges


async def test_search_by_operation(subject: Subject) -> None:
    """Only traces with a span of that service and operation are found."""
    other = shop_trace(2)
    other.spans[2].name = "POST /refunds"
    await write(subject, shop_trace(1), other)

    found = await subject.store.find_traces(TraceQuery("checkout", operation="POST /refunds"))

    assert ids(found) == [trace_id(2)]


@pytest.mark.parametrize(
    ("service", "tags", "expected"),
    [
        ("payments", {"http.route": "/pay"}, [1, 2]),  # a span attribute
        ("payments", {"http.status_code": "502"}, [1]),  # an integer, compared as text
        ("frontend", {"k8s.namespace.name": "shop"}, [1, 2]),  # a resource attribute
        ("payments", {"exception.type": "CardDeclined"}, [1]),  # an event attribute
        ("payments", {"error": "true"}, [1]),  # derived from the status, as Jaeger does
        ("payments", {"otel.status_code": "OK"}, [2]),
        ("checkout", {"span.kind": "server"}, [1, 2]),
        ("payments", {"error": "true", "http.route": "/pay"}, [1]),  # every tag must match
        ("payments", {"http.route": "/nowhere"}, []),
    ],
)
async def test_search_by_tags(
    subject: Subject, service: str, tags: dict[str, str], expected: list[int]
) -> None:
    """Tags match span, resource and event attributes and the derived status tags, as text."""
    await write(subject, shop_trace(1, start_ms=1000), shop_trace(2, payments_fail=False))

    found = await subject.store.find_traces(TraceQuery(service, tags=tags))

    assert ids(found) == [trace_id(n) for n in expected]


async def test_every_search_condition_must_hold_on_one_span(subject: Subject) -> None:
    """A service and a tag that only another service's span has do not make a match."""
    await write(subject, shop_trace(1))
    assert await subject.store.find_traces(TraceQuery("frontend", tags={"error": "true"})) == []


async def test_search_by_duration_range(subject: Subject) -> None:
    """Only traces with a span of the service lasting within the range are found."""
    quick, slow = shop_trace(1), shop_trace(2)
    slow.spans[5].end_ns = slow.spans[5].start_ns + 900 * MS
    await write(subject, quick, slow)

    longer = TraceQuery("payments", min_duration_ns=500 * MS)
    shorter = TraceQuery("payments", max_duration_ns=500 * MS)
    assert ids(await subject.store.find_traces(longer)) == [trace_id(2)]
    assert ids(await subject.store.find_traces(shorter)) == [trace_id(1)]


async def test_search_by_start_time_window(subject: Subject) -> None:
    """Only traces with a span of the service starting within the window are found."""
    await write(subject, *(shop_trace(n, start_ms=n * 60_000) for n in range(1, 4)))

    query = TraceQuery(
        "frontend", start_min_ns=BASE_NS + 90_000 * MS, start_max_ns=BASE_NS + 150_000 * MS
    )
    assert ids(await subject.store.find_traces(query)) == [trace_id(2)]


async def test_dependencies_sum_the_edges_of_traces_in_the_window(subject: Subject) -> None:
    """Calls and errors per caller → callee are summed over traces started in (end - lookback, end]."""
    inside = [shop_trace(1), shop_trace(2, payments_fail=False), shop_trace(3, start_ms=3000)]
    outside = [shop_trace(4, start_ms=-1000), shop_trace(5, start_ms=3001)]
    await write(subject, *inside, *outside)

    found = await subject.store.dependencies(end_ns=BASE_NS + 3000 * MS, lookback_ns=3000 * MS + 1)

    assert found == [
        Dependency("checkout", "payments", calls=3, errors=2),
        Dependency("checkout", "postgresql", calls=3, errors=0),
        Dependency("frontend", "checkout", calls=3, errors=0),
    ]


async def test_prune_deletes_traces_that_started_before_the_cutoff(subject: Subject) -> None:
    """Within two prunes (Elasticsearch rolls its write index over, then deletes it), old traces are gone."""
    old = shop_trace(1, start_ms=-10 * DAY / MS)
    await write(subject, old)

    for _ in range(2):
        await subject.store.prune(BASE_NS - 5 * DAY)
        await subject.settle()

    assert await subject.store.get_trace(trace_id(1)) is None
    assert await subject.store.find_traces(TraceQuery("frontend")) == []
    assert await subject.store.dependencies(BASE_NS, 30 * DAY) == []
    assert subject.counted("observer_trace_store_pruned_spans_total") == 6


async def test_prune_keeps_traces_that_started_after_the_cutoff(subject: Subject) -> None:
    """Traces newer than the cutoff survive pruning, old ones beside them or not."""
    await write(subject, shop_trace(1, start_ms=-10 * DAY / MS), shop_trace(2))

    for _ in range(2):
        await subject.store.prune(BASE_NS - 5 * DAY)
        await subject.settle()

    assert await subject.store.get_trace(trace_id(2)) == shop_trace(2)
