"""Whole traces from three real services: frontend → checkout → payments over HTTP on
loopback, each its own Python process with the OpenTelemetry SDK, aiohttp server and client
instrumentation and the OTLP/gRPC exporter, sending to the collector's trace pipeline through
the shared OTLP/gRPC receiver, stored in the embedded store. Payments fails every third
payment; checkout answers its caller all the same (the order is recorded as unpaid), so the
failure belongs to the checkout → payments edge alone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from observer.collector.model import Completeness, Span, SpanKind, StatusCode, Trace
from observer.collector.otlp_grpc import NativeOtlpGrpcReceiver
from observer.collector.pipeline import TracePipeline
from observer.collector.store import Dependency, TraceQuery
from observer.collector.store.sqlite import SqliteTraceStore
from observer.config import CollectorConfig, parse
from observer.receivers import IntakeCounts
from tests.services.shop import SERVICES, start_shop

ORDERS = 9
FAIL_EVERY = 3  # payments fails orders 0, 3, 6
FAILED_ORDERS = len(range(0, ORDERS, FAIL_EVERY))


@dataclass
class Outcome:
    store: SqliteTraceStore
    registry: CollectorRegistry
    traces: list[Trace]


@pytest.fixture(scope="module")
async def outcome(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Outcome]:
    directory = tmp_path_factory.mktemp("collector-traces")
    registry = CollectorRegistry()
    store = await SqliteTraceStore.open(directory / "traces.sqlite", registry=registry)
    config = parse(
        CollectorConfig,
        "assembly: {idle_timeout: 500ms}\nsampling: {probabilistic_share: 1.0}",
        env={},
    )
    pipeline = TracePipeline(config, store.write, registry=registry)

    # The collector's OTLP/gRPC receiver, served by the trace core.
    receiver = NativeOtlpGrpcReceiver("127.0.0.1:0", pipeline, IntakeCounts())
    await receiver.start()
    await pipeline.start()
    shop = None
    try:
        collector = f"127.0.0.1:{receiver.port}"
        shop = await start_shop(directory, dict.fromkeys(SERVICES, collector), FAIL_EVERY)
        async with aiohttp.ClientSession() as user:
            for order in range(ORDERS):
                assert await shop.order(user, order) == 200
    finally:
        if shop is not None:
            await shop.stop()
        # The services flushed their spans as they stopped; let the receiver's last calls
        # land, then stop the pipeline, which emits every live trace.
        deadline = time.monotonic() + 10
        while pipeline.core.counts()["spans_in"] < ORDERS * 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await pipeline.stop()
        await receiver.stop()
    found = await store.find_traces(TraceQuery(service="frontend", limit=100))
    yield Outcome(store, registry, found)
    await store.close()


def spans_by_role(trace: Trace) -> dict[tuple[str, SpanKind], Span]:
    return {(span.service, span.kind): span for span in trace.spans}


def test_every_request_is_one_stored_trace_of_five_spans(outcome: Outcome) -> None:
    """Each order through the three services is stored as one trace with all five spans."""
    assert len(outcome.traces) == ORDERS
    assert all(len(trace.spans) == 5 for trace in outcome.traces)


def test_each_trace_is_the_call_tree_frontend_checkout_payments(outcome: Outcome) -> None:
    """Server → client → server → client → server, each span the child of the one before."""
    for trace in outcome.traces:
        roles = spans_by_role(trace)
        chain = [
            roles[("frontend", SpanKind.SERVER)],
            roles[("frontend", SpanKind.CLIENT)],
            roles[("checkout", SpanKind.SERVER)],
            roles[("checkout", SpanKind.CLIENT)],
            roles[("payments", SpanKind.SERVER)],
        ]
        assert chain[0].parent_span_id == ""
        assert [span.parent_span_id for span in chain[1:]] == [span.span_id for span in chain[:-1]]


def test_each_trace_is_judged_complete(outcome: Outcome) -> None:
    """Every parent present and every client with its server: the verdict is complete."""
    assert [trace.verdict.completeness for trace in outcome.traces] == [
        Completeness.COMPLETE
    ] * ORDERS


def test_failed_payments_are_marked_on_payments_and_checkouts_call_only(outcome: Outcome) -> None:
    """A failed payment marks the payments server span and checkout's client span, nothing else."""
    failed = [
        trace
        for trace in outcome.traces
        if spans_by_role(trace)[("payments", SpanKind.SERVER)].status is StatusCode.ERROR
    ]
    assert len(failed) == FAILED_ORDERS
    for trace in failed:
        errors = {role for role, span in spans_by_role(trace).items() if span.is_error}
        assert errors == {("payments", SpanKind.SERVER), ("checkout", SpanKind.CLIENT)}


def test_each_stored_trace_carries_its_two_edges(outcome: Outcome) -> None:
    """Every trace knows frontend → checkout and checkout → payments, the error on the second."""
    for trace in outcome.traces:
        failed = spans_by_role(trace)[("payments", SpanKind.SERVER)].is_error
        assert sorted((e.caller, e.callee, e.calls, e.errors) for e in trace.edges) == [
            ("checkout", "payments", 1, int(failed)),
            ("frontend", "checkout", 1, 0),
        ]


async def test_the_store_can_answer_by_id(outcome: Outcome) -> None:
    """A trace found by service is returned whole by its id."""
    first = outcome.traces[0]
    again = await outcome.store.get_trace(first.trace_id)
    assert again is not None
    assert sorted(span.span_id for span in again.spans) == sorted(
        span.span_id for span in first.spans
    )


async def test_dependencies_count_calls_and_errors_per_edge(outcome: Outcome) -> None:
    """The stored dependencies: every order on both edges, the failures on checkout → payments."""
    dependencies = await outcome.store.dependencies(time.time_ns() + 60 * 10**9, 3600 * 10**9)
    assert sorted(dependencies, key=lambda d: d.parent) == [
        Dependency("checkout", "payments", ORDERS, FAILED_ORDERS),
        Dependency("frontend", "checkout", ORDERS, 0),
    ]


def test_the_service_graph_metrics_count_the_same_calls(outcome: Outcome) -> None:
    """Tempo-named metrics agree with the stored edges."""
    get = outcome.registry.get_sample_value
    payments = {"client": "checkout", "server": "payments", "connection_type": ""}
    checkout = {"client": "frontend", "server": "checkout", "connection_type": ""}
    assert get("traces_service_graph_request_total", payments) == ORDERS
    assert get("traces_service_graph_request_failed_total", payments) == FAILED_ORDERS
    assert get("traces_service_graph_request_total", checkout) == ORDERS
    assert get("traces_service_graph_request_failed_total", checkout) == 0
