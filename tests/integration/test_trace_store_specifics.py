"""What each trace store does beyond the shared contract (test_trace_stores.py):
Elasticsearch's ids, mappings, per-item refusals, rollover and unreachable cluster;
SQLite's exact retention and persistence; and the helpers that wire a store."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from observer.collector.model import Trace
from observer.collector.store import TraceQuery, keep_retention, open_store
from observer.collector.store.elasticsearch import ElasticsearchTraceStore
from observer.collector.store.elasticsearch_indices import (
    SPANS_DATA_STREAM,
    SUMMARY_INDEX_PREFIX,
    index_templates,
)
from observer.collector.store.sqlite import SqliteTraceStore
from observer.config import CollectorStorage, ElasticsearchConfig
from tests.integration.stored_traces import (
    BASE_NS,
    MS,
    TraceEmitter,
    encoded,
    make_span,
    rich_trace,
    shop_trace,
    span_id,
    trace_id,
)
from tests.services.elasticsearch import Node
from tests.services.process import free_port

DAY = 86400 * 1_000_000_000


# --- Elasticsearch ------------------------------------------------------------------------


def elasticsearch_store(
    es: Node, registry: CollectorRegistry | None = None
) -> ElasticsearchTraceStore:
    return ElasticsearchTraceStore(ElasticsearchConfig(hosts=[es.url]), registry)


@pytest.mark.elasticsearch
async def test_spans_go_to_the_data_stream_with_ids_of_trace_span_and_kind(es: Node) -> None:
    """Each span is one document of traces-observer.spans-default, its _id trace id + span id + kind."""
    store = elasticsearch_store(es)
    await store.write(encoded(store.span_documents, shop_trace(1)))
    await store.close()

    es.request("POST", f"/{SPANS_DATA_STREAM}/_refresh")
    hits = es.request("POST", f"/{SPANS_DATA_STREAM}/_search", {"size": 100})["hits"]["hits"]
    assert sorted(hit["_id"] for hit in hits) == sorted(
        f"{trace_id(1)}{span_id(100 + n)}{'s' if n in (1, 3, 6) else 'c'}" for n in range(1, 7)
    )
    assert all(hit["_index"].startswith(f".ds-{SPANS_DATA_STREAM}-") for hit in hits)


@pytest.mark.elasticsearch
async def test_a_span_the_mapping_refuses_is_dropped_and_counted_and_the_rest_stored(
    es: Node,
) -> None:
    """With an operator's template mapping duration_ns as integer, the long span is refused and counted alone."""
    for name, body in index_templates().items():
        if "spans" in name:
            properties = body["template"]["mappings"]["properties"]
            properties["duration_ns"] = {"type": "integer"}
        es.request("PUT", f"/_index_template/{name}", body)
    registry = CollectorRegistry()
    store = elasticsearch_store(es, registry)
    trace = shop_trace(1)
    trace.spans[0].end_ns = trace.spans[0].start_ns + 3_000_000_000  # 3 s: past 2^31 ns

    await store.write(encoded(store.span_documents, trace))
    await store.client.indices.refresh(index=SPANS_DATA_STREAM)
    stored = await store.get_trace(trace_id(1))
    await store.close()

    assert stored is not None
    assert [span.span_id for span in stored.spans] == [span.span_id for span in trace.spans[1:]]
    refused = [
        sample
        for metric in registry.collect()
        if metric.name == "observer_trace_store_dropped"
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.value
    ]
    assert [(s.labels["record"], s.labels["reason"], s.value) for s in refused] == [
        ("span", "document_parsing_exception", 1.0)
    ]


@pytest.mark.elasticsearch
async def test_prune_rolls_the_write_index_over_then_deletes_it_once_all_expired(
    es: Node,
) -> None:
    """A write index with an expired span is rolled over, and deleted when its newest span expires."""
    store = elasticsearch_store(es)
    await store.write(
        encoded(store.span_documents, shop_trace(1, start_ms=-10 * DAY / MS), shop_trace(2))
    )
    await store.client.indices.refresh(index=SPANS_DATA_STREAM)

    await store.prune(BASE_NS - 5 * DAY)
    backing_after_first = es.request("GET", f"/_data_stream/{SPANS_DATA_STREAM}")
    await store.prune(BASE_NS + DAY)
    backing_after_second = es.request("GET", f"/_data_stream/{SPANS_DATA_STREAM}")
    await store.close()

    first = [i["index_name"] for i in backing_after_first["data_streams"][0]["indices"]]
    second = [i["index_name"] for i in backing_after_second["data_streams"][0]["indices"]]
    assert len(first) == 2
    assert second == first[1:]


@pytest.mark.elasticsearch
async def test_a_late_span_moving_a_trace_to_the_day_before_leaves_one_summary(
    es: Node,
) -> None:
    """When a late span starts a day earlier, the trace's summary moves to that day and its edges count once."""
    store = elasticsearch_store(es)
    emitter = TraceEmitter(store.span_documents)
    await store.write(emitter.emit(shop_trace(1)))
    cron = make_span(1, 99, None, "cron", "nightly", start_ms=-DAY / MS)
    await store.write(emitter.emit(Trace(trace_id(1), [cron])))
    await store.client.indices.refresh(index=f"{SUMMARY_INDEX_PREFIX}*")

    found = await store.dependencies(BASE_NS + DAY, 3 * DAY)
    summaries = await store.client.search(index=f"{SUMMARY_INDEX_PREFIX}*", size=10)
    await store.close()

    assert [(d.parent, d.child, d.calls) for d in found] == [
        ("checkout", "payments", 1),
        ("checkout", "postgresql", 1),
        ("frontend", "checkout", 1),
    ]
    assert [hit["_index"] for hit in summaries["hits"]["hits"]] == [
        f"{SUMMARY_INDEX_PREFIX}2026.09.20"
    ]


@pytest.mark.elasticsearch
async def test_write_retries_while_elasticsearch_is_unreachable_and_counts_drops_at_close(
    es: Node,
) -> None:
    """Against a port nobody listens on, write retries until close, then counts its spans dropped."""
    registry = CollectorRegistry()
    store = ElasticsearchTraceStore(
        ElasticsearchConfig(hosts=[f"http://127.0.0.1:{free_port()}"], request_timeout=1),
        registry,
        initial_backoff=0.01,
        max_backoff=0.05,
    )
    writing = asyncio.create_task(store.write(encoded(store.span_documents, shop_trace(1))))
    while not registry.get_sample_value(
        "observer_trace_store_write_retries_total", {"store": "elasticsearch"}
    ):
        await asyncio.sleep(0.01)
    assert not writing.done()
    await store.close()
    await writing

    assert (
        registry.get_sample_value(
            "observer_trace_store_dropped_total",
            {"store": "elasticsearch", "record": "span", "reason": "store_closed"},
        )
        == 6
    )


# --- SQLite -------------------------------------------------------------------------------


async def test_embedded_prune_is_exact_per_trace(tmp_path: Path) -> None:
    """The embedded store deletes exactly the traces started before the cutoff, at once."""
    store = await SqliteTraceStore.open(tmp_path / "traces.sqlite")
    await store.write(
        encoded(store.span_documents, shop_trace(1, start_ms=-10 * DAY / MS), shop_trace(2))
    )

    await store.prune(BASE_NS - 5 * DAY)

    found = await store.find_traces(TraceQuery("frontend"))
    assert [trace.trace_id for trace in found] == [trace_id(2)]
    assert await store.services() == ["checkout", "frontend", "payments"]
    await store.close()


async def test_embedded_traces_survive_reopening_the_file(tmp_path: Path) -> None:
    """Traces written before the store was closed are there after it is opened again."""
    store = await SqliteTraceStore.open(tmp_path / "traces.sqlite")
    await store.write(encoded(store.span_documents, rich_trace(1)))
    await store.close()

    reopened = await SqliteTraceStore.open(tmp_path / "traces.sqlite")
    assert await reopened.get_trace(trace_id(1)) == rich_trace(1)
    await reopened.close()


async def test_retention_prunes_what_started_before_now_minus_the_retention(
    tmp_path: Path,
) -> None:
    """keep_retention prunes, by the clock it is given, the traces older than the retention."""
    store = await SqliteTraceStore.open(tmp_path / "traces.sqlite")
    await store.write(
        encoded(store.span_documents, shop_trace(1, start_ms=-10 * DAY / MS), shop_trace(2))
    )
    now_s = BASE_NS / 1e9

    pruning = asyncio.create_task(
        keep_retention(store, retention_s=5 * 86400, interval_s=3600, clock=lambda: now_s)
    )
    while await store.get_trace(trace_id(1)) is not None:
        await asyncio.sleep(0.01)
    pruning.cancel()

    assert await store.get_trace(trace_id(2)) == shop_trace(2)
    await store.close()


@pytest.mark.parametrize(
    ("storage", "expected"),
    [
        ({}, SqliteTraceStore),
        ({"elasticsearch": {"hosts": ["http://127.0.0.1:9"]}}, ElasticsearchTraceStore),
    ],
)
async def test_the_configuration_picks_the_store(
    tmp_path: Path, storage: dict[str, object], expected: type
) -> None:
    """Elasticsearch when storage.elasticsearch is set, else the embedded store at its path."""
    config = CollectorStorage.model_validate(
        {"embedded": {"path": str(tmp_path / "db" / "traces.sqlite")}, **storage}
    )
    store = await open_store(config)
    assert isinstance(store, expected)
    await store.close()
    assert (tmp_path / "db" / "traces.sqlite").exists() == (expected is SqliteTraceStore)
