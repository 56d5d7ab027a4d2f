"""Two agents route by trace id to three collector replicas (real gRPC on loopback)."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from observer.agent.spans import SpanPipeline
from observer.config import CollectorSinkConfig, SpansConfig
from observer.receivers import IntakeCounts
from observer.receivers.otlp_grpc import OtlpGrpcReceiver
from tests.integration.span_support import Recorder

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
TRACES = 10_000


@dataclass
class Collector:
    """A stand-in collector replica: the real OTLP/gRPC receiver, recording what it gets."""

    receiver: OtlpGrpcReceiver
    recorder: Recorder

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.receiver.port}"

    def trace_ids(self) -> set[bytes]:
        return {span.trace_id for _, span in self.recorder.spans()}


@pytest.fixture
async def collectors() -> AsyncIterator[list[Collector]]:
    started = []
    for _ in range(3):
        recorder = Recorder()
        receiver = OtlpGrpcReceiver("127.0.0.1:0", recorder, IntakeCounts())
        await receiver.start()
        started.append(Collector(receiver, recorder))
    yield started
    for collector in started:
        await collector.receiver.stop()


def agent(endpoints: list[str]) -> SpanPipeline:
    sources = SpansConfig.model_validate(
        {
            "enabled": True,
            "otlp_grpc": {"listen": "127.0.0.1:0"},
            "otlp_http": {"enabled": False},
            "zipkin": {"enabled": False},
        }
    )
    sink = CollectorSinkConfig.model_validate(
        {"endpoints": endpoints, "compression": "none", "batch": {"flush_interval": "20ms"}}
    )
    return SpanPipeline(sources, sink, metadata=None)


@pytest.fixture
async def agents(collectors: list[Collector]) -> AsyncIterator[list[SpanPipeline]]:
    pipelines = [agent([c.endpoint for c in collectors]) for _ in range(2)]
    for pipeline in pipelines:
        await pipeline.start()
    yield pipelines
    for pipeline in pipelines:
        await pipeline.stop(5)


def requests_for(trace_ids: list[bytes], agent_count: int, seed: int) -> list[list[bytes]]:
    """Per agent, requests of 500 spans; each trace has four spans, spread at random over
    the agents (as a call crosses nodes)."""
    generator = random.Random(seed)
    per_agent: list[ExportTraceServiceRequest] = [
        ExportTraceServiceRequest() for _ in range(agent_count)
    ]
    scopes = [request.resource_spans.add().scope_spans.add() for request in per_agent]
    out: list[list[bytes]] = [[] for _ in range(agent_count)]
    for trace_id in trace_ids:
        for number in range(4):
            index = generator.randrange(agent_count)
            scopes[index].spans.add(
                trace_id=trace_id, span_id=generator.randbytes(8), name=f"hop{number}"
            )
            if len(scopes[index].spans) == 500:
                out[index].append(per_agent[index].SerializeToString())
                per_agent[index] = ExportTraceServiceRequest()
                scopes[index] = per_agent[index].resource_spans.add().scope_spans.add()
    for index, request in enumerate(per_agent):
        if scopes[index].spans:
            out[index].append(request.SerializeToString())
    return out


async def send(pipeline: SpanPipeline, bodies: list[bytes]) -> None:
    receiver = pipeline.receivers[0]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{receiver.port}") as channel:
        export = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
        for body in bodies:
            await export(body)


async def until_delivered(collectors: list[Collector], spans: int) -> None:
    async with asyncio.timeout(60):
        while sum(len(c.recorder.spans()) for c in collectors) < spans:
            await asyncio.sleep(0.05)


def owners(collectors: list[Collector]) -> dict[bytes, set[int]]:
    found: dict[bytes, set[int]] = defaultdict(set)
    for index, collector in enumerate(collectors):
        for trace_id in collector.trace_ids():
            found[trace_id].add(index)
    return found


async def test_every_trace_meets_at_one_collector_and_a_removal_moves_a_third(
    collectors: list[Collector], agents: list[SpanPipeline]
) -> None:
    """10,000 traces whose spans are spread over two agents land each on exactly one of
    three collectors; after one collector is removed, only its traces (about a third) move."""
    generator = random.Random(1)
    trace_ids = [generator.randbytes(16) for _ in range(TRACES)]
    bodies = requests_for(trace_ids, len(agents), seed=2)
    await asyncio.gather(*(send(a, b) for a, b in zip(agents, bodies, strict=True)))
    await until_delivered(collectors, TRACES * 4)

    first = owners(collectors)
    assert len(first) == TRACES
    assert all(len(found) == 1 for found in first.values())
    per_collector = [len(c.trace_ids()) for c in collectors]
    assert min(per_collector) > TRACES * 0.25, per_collector

    removed = collectors[2]
    remaining = collectors[:2]
    for pipeline in agents:
        pipeline.exporter.set_endpoints([c.endpoint for c in remaining])
    for collector in collectors:
        collector.recorder.batches.clear()
    bodies = requests_for(trace_ids, len(agents), seed=3)
    await asyncio.gather(*(send(a, b) for a, b in zip(agents, bodies, strict=True)))
    await until_delivered(remaining, TRACES * 4)

    second = owners(collectors)
    assert removed.trace_ids() == set()
    assert all(len(found) == 1 for found in second.values())
    moved = [t for t in trace_ids if first[t] != second[t]]
    assert {next(iter(first[t])) for t in moved} == {2}
    assert 0.25 < len(moved) / TRACES < 0.42
    for pipeline in agents:
        assert sum(pipeline.exporter.counts.dropped.values()) == 0
