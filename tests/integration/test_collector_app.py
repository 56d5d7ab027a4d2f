"""The collector wired by `observer.collector.app.run`, in process: what it does at
shutdown, and its readiness against a real (or absent) Elasticsearch."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult
from prometheus_client import CollectorRegistry

from observer.collector import app
from observer.collector.store.sqlite import SqliteTraceStore
from observer.config import CollectorConfig, parse
from tests.integration.span_support import sdk_spans
from tests.services.elasticsearch import Node
from tests.services.process import free_port


@dataclass
class Running:
    telemetry: str
    otlp_grpc: str
    registry: CollectorRegistry
    stop: asyncio.Event
    task: asyncio.Task[None]


StartCollector = Callable[[str], Awaitable[Running]]
"""Runs `app.run` with loopback ports and the given extra YAML; returns once it answers."""


@pytest.fixture
async def start_collector() -> AsyncIterator[StartCollector]:
    started: list[Running] = []

    async def start(extra: str) -> Running:
        ports = [free_port() for _ in range(4)]
        config = parse(
            CollectorConfig,
            f"telemetry: {{listen: '127.0.0.1:{ports[0]}'}}\n"
            f"receivers: {{otlp_grpc: {{listen: '127.0.0.1:{ports[1]}'}}, "
            f"otlp_http: {{listen: '127.0.0.1:{ports[2]}'}}}}\n"
            f"query: {{listen: '127.0.0.1:{ports[3]}'}}\n" + extra,
            env={},
        )
        registry = CollectorRegistry()
        stop = asyncio.Event()
        task = asyncio.create_task(app.run(config, stop, registry))
        running = Running(
            f"http://127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[1]}", registry, stop, task
        )
        started.append(running)
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                assert not task.done(), task.exception()
                try:
                    async with http.get(f"{running.telemetry}/healthz") as answer:
                        if answer.status == 200:
                            return running
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError("the collector did not start")

    yield start
    for running in started:
        running.stop.set()
        await asyncio.wait_for(running.task, 30)


async def readyz(running: Running) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{running.telemetry}/readyz") as answer,
    ):
        return answer.status, await answer.text()


async def test_spans_taken_are_stored_at_shutdown_before_their_trace_went_quiet(
    start_collector: StartCollector, tmp_path: Path
) -> None:
    """SIGTERM-like stop: a trace still being assembled (idle timeout far away) is written to the store."""
    path = tmp_path / "traces.sqlite"
    running = await start_collector(
        f"storage: {{embedded: {{path: {path}}}}}\nassembly: {{idle_timeout: 1h}}\n"
        "sampling: {probabilistic_share: 1.0}\n"
    )
    spans = sdk_spans(4)
    exporter = OTLPSpanExporter(endpoint=running.otlp_grpc, insecure=True)
    assert await asyncio.to_thread(exporter.export, spans) is SpanExportResult.SUCCESS
    exporter.shutdown()
    async with asyncio.timeout(10):  # the worker takes the batch from its queue
        while running.registry.get_sample_value("observer_traces_live") != 1:
            await asyncio.sleep(0.02)

    running.stop.set()
    await asyncio.wait_for(running.task, 30)

    store = await SqliteTraceStore.open(path)
    try:
        context = spans[0].context
        assert context is not None
        stored = await store.get_trace(f"{context.trace_id:032x}")
    finally:
        await store.close()
    assert stored is not None
    assert sorted(span.span_id for span in stored.spans) == sorted(
        f"{span.context.span_id:016x}" for span in spans if span.context is not None
    )


@pytest.mark.elasticsearch
async def test_ready_when_elasticsearch_answers(start_collector: StartCollector, es: Node) -> None:
    """With Elasticsearch storage reachable, /readyz answers 200."""
    running = await start_collector(f"storage: {{elasticsearch: {{hosts: ['{es.url}']}}}}\n")
    assert await readyz(running) == (200, "ok\n")


async def test_not_ready_while_elasticsearch_does_not_answer(
    start_collector: StartCollector,
) -> None:
    """With Elasticsearch storage unreachable, /readyz answers 503 and names the store."""
    running = await start_collector(
        f"storage: {{elasticsearch: {{hosts: ['http://127.0.0.1:{free_port()}']}}}}\n"
    )
    assert await readyz(running) == (
        503,
        "trace store reachable: Elasticsearch does not answer\n",
    )
