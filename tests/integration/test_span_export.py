"""The exporter to collector replicas against real gRPC servers that answer as told."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans

from observer.agent.spans.exporter import CollectorExporter
from observer.agent.spans.resolver import EndpointResolver
from observer.config import CollectorSinkConfig
from observer.receivers import Admission, IntakeCounts
from observer.receivers.otlp_grpc import OtlpGrpcReceiver
from tests.integration.polling import until
from tests.integration.span_support import Recorder
from tests.services.process import free_port

Answer = Callable[[ExportTraceServiceRequest, Any], Awaitable[ExportTraceServiceResponse]]


class ScriptedCollector:
    """A real gRPC TraceService whose answers the test decides."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.calls = 0
        self.server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            "opentelemetry.proto.collector.trace.v1.TraceService",
            {
                "Export": grpc.unary_unary_rpc_method_handler(
                    self._export,
                    request_deserializer=ExportTraceServiceRequest.FromString,
                    response_serializer=ExportTraceServiceResponse.SerializeToString,
                )
            },
        )
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    async def _export(
        self, request: ExportTraceServiceRequest, context: Any
    ) -> ExportTraceServiceResponse:
        self.calls += 1
        return await self.answer(request, context)


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[Answer], Awaitable[ScriptedCollector]]]:
    started: list[ScriptedCollector] = []

    async def start(answer: Answer) -> ScriptedCollector:
        collector = ScriptedCollector(answer)
        await collector.server.start()
        started.append(collector)
        return collector

    yield start
    for collector in started:
        await collector.server.stop(0)


def settings(**overrides: Any) -> CollectorSinkConfig:
    base: dict[str, Any] = {
        "compression": "none",
        "batch": {"flush_interval": "10ms"},
        "retry": {"initial_backoff": "10ms", "max_backoff": "50ms", "max_elapsed": "5s"},
        "timeout": "2s",
    }
    base.update(overrides)
    return CollectorSinkConfig.model_validate(base)


def batch(spans: int) -> list[ResourceSpans]:
    resource = ResourceSpans()
    scope = resource.scope_spans.add()
    for _ in range(spans):
        scope.spans.add(trace_id=os.urandom(16), span_id=os.urandom(8), name="op")
    return [resource]


async def test_retryable_refusal_is_retried_until_accepted() -> None:
    """A replica answering RESOURCE_EXHAUSTED with RetryInfo gets the batch again later, and
    it is delivered once with nothing dropped."""
    recorder = Recorder(admission=Admission.FULL)
    receiver = OtlpGrpcReceiver("127.0.0.1:0", recorder, IntakeCounts())
    await receiver.start()
    exporter = CollectorExporter(settings())
    try:
        exporter.set_endpoints([f"127.0.0.1:{receiver.port}"])
        exporter.submit(batch(10))
        await until(lambda: exporter.counts.retries >= 1)
        recorder.admission = Admission.ACCEPTED
        await recorder.wait_for(10)
        await until(lambda: exporter.counts.exported == 10)
        assert not exporter.counts.dropped
        assert len(recorder.spans()) == 10
    finally:
        await exporter.drain(1)
        await receiver.stop()


async def test_permanent_error_drops_the_batch_once_and_counts_it(scripted: Any) -> None:
    """INVALID_ARGUMENT is not retried: the spans are counted as refused_by_collector."""

    async def refuse(
        request: ExportTraceServiceRequest, context: Any
    ) -> ExportTraceServiceResponse:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no")

    collector = await scripted(refuse)
    exporter = CollectorExporter(settings())
    try:
        exporter.set_endpoints([f"127.0.0.1:{collector.port}"])
        exporter.submit(batch(7))
        await until(lambda: exporter.counts.dropped["refused_by_collector"] == 7)
        assert collector.calls == 1
        assert exporter.counts.retries == 0
        assert exporter.held_bytes == 0
    finally:
        await exporter.drain(1)


async def test_partial_success_counts_the_rejected_spans(scripted: Any) -> None:
    """A partial_success answer counts its rejected spans as dropped and the rest as exported."""

    async def partial(
        request: ExportTraceServiceRequest, context: Any
    ) -> ExportTraceServiceResponse:
        answer = ExportTraceServiceResponse()
        answer.partial_success.rejected_spans = 3
        answer.partial_success.error_message = "too old"
        return answer

    collector = await scripted(partial)
    exporter = CollectorExporter(settings())
    try:
        exporter.set_endpoints([f"127.0.0.1:{collector.port}"])
        exporter.submit(batch(10))
        await until(lambda: exporter.counts.exported == 7)
        assert exporter.counts.dropped["rejected_by_collector"] == 3
    finally:
        await exporter.drain(1)


async def test_queue_bound_makes_the_exporter_full() -> None:
    """Past queue.max_bytes of undelivered spans (the replica is down) the exporter says full."""
    exporter = CollectorExporter(settings(queue={"max_bytes": "4KiB"}))
    try:
        exporter.set_endpoints([f"127.0.0.1:{free_port()}"])
        while not exporter.full:
            exporter.submit(batch(20))
        assert exporter.held_bytes >= 4096
    finally:
        await exporter.drain(0.1)
    assert exporter.counts.dropped["shutdown"] > 0


async def test_removed_replica_hands_its_waiting_spans_to_the_new_owner() -> None:
    """Spans waiting for a replica that is down go to the remaining one when it leaves the
    ring, with nothing dropped."""
    recorder = Recorder()
    live = OtlpGrpcReceiver("127.0.0.1:0", recorder, IntakeCounts())
    await live.start()
    dead = f"127.0.0.1:{free_port()}"
    exporter = CollectorExporter(settings())
    try:
        exporter.set_endpoints([dead, f"127.0.0.1:{live.port}"])
        exporter.submit(batch(200))
        await until(lambda: exporter.counts.retries >= 1)
        exporter.set_endpoints([f"127.0.0.1:{live.port}"])
        await recorder.wait_for(200)
        await until(lambda: exporter.counts.exported == 200)
        assert not exporter.counts.dropped
    finally:
        await exporter.drain(1)
        await live.stop()


async def test_shutdown_counts_what_could_not_be_delivered() -> None:
    """Spans still held when the drain time runs out are counted as dropped for shutdown."""
    exporter = CollectorExporter(settings())
    exporter.set_endpoints([f"127.0.0.1:{free_port()}"])
    exporter.submit(batch(30))
    await exporter.drain(0.2)
    assert exporter.counts.dropped["shutdown"] == 30
    assert exporter.counts.exported == 0


async def test_dns_answers_become_the_replica_set_and_a_failure_keeps_the_last() -> None:
    """Each resolution's addresses (sorted, with the port) replace the set; a failed or
    empty answer leaves the last good set in place."""
    answers: list[Any] = [
        ["10.0.0.2", "10.0.0.1"],
        OSError("SERVFAIL"),
        [],
        ["10.0.0.1", "fd00::3"],
    ]
    seen: list[list[str]] = []

    async def lookup(host: str, port: int) -> list[str]:
        assert (host, port) == ("collectors.observability.svc", 4317)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return list(answer)

    resolver = EndpointResolver("collectors.observability.svc:4317", [], 5, seen.append, lookup)
    for _ in range(4):
        await resolver.resolve_once("collectors.observability.svc", 4317)
    assert seen == [["10.0.0.1:4317", "10.0.0.2:4317"], ["10.0.0.1:4317", "[fd00::3]:4317"]]
    assert resolver.failures == 2
