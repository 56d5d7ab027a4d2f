"""The collector, wired: receivers → trace pipeline → trace store → query API.

```
 agents ─ OTLP/gRPC :4317 ┐  decode     consume            TracePipeline (pipeline.py)
 others ─ OTLP/HTTP :4318 ┴─ (core) ─► accept(batch) ─►  TraceCore (native/):
                               FULL → RESOURCE_EXHAUSTED    assemble → reconstruct → graph
                               / 429 (the sender retries)   → sample → encode
                                                                                 │ TraceStore.write
                                                                                 ▼
   Jaeger UI, Grafana ◄── query API :16686 (query.py) ◄──────────── SQLite | Elasticsearch
   Prometheus ◄────────── /metrics /healthz /readyz :9464            (pruned every retention/10)
```

Ownership: a receiver's batch is the pipeline's once `accept` took it; the traces the
pipeline writes are the store's to read during `write`.

Readiness: the embedded store is a file opened at start (the collector does not start
without it); an Elasticsearch store must answer a ping, so that Kubernetes takes a replica
that cannot store out of the Service while Elasticsearch is away.

Shutdown (SIGTERM): the receivers stop taking requests (calls in progress finish), the
pipeline assembles and writes everything it took for up to `shutdown_timeout`, then the
store is closed (an Elasticsearch write still retrying is cut short and its spans counted
as dropped), and the query API and telemetry stop last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sqlite3
from typing import Any

from prometheus_client import CollectorRegistry

from observer.collector.otlp_grpc import NativeOtlpGrpcReceiver
from observer.collector.pipeline import DECODERS, SpanBatch, TracePipeline
from observer.collector.query import QueryServer
from observer.collector.store import TraceStore, keep_retention, open_store
from observer.config import CollectorConfig, CollectorReceivers
from observer.receivers import Admission, IntakeCounts, IntakeMetrics, SpanConsumer
from observer.receivers.http import HttpSpanReceiver
from observer.receivers.otlp_grpc import OtlpGrpcReceiver
from observer.telemetry import ReadinessCheck, TelemetryServer, build_info

log = logging.getLogger(__name__)

READINESS_TIMEOUT = 2.0
"""How long a readiness probe waits for Elasticsearch: well inside the kubelet's default
probe timeout, so a slow cluster reads as not ready rather than a probe failure."""


class CollectorError(Exception):
    """The collector cannot start (a port taken, the store unusable) or cannot go on (the
    trace pipeline failed); already logged, the message says why."""


Receiver = NativeOtlpGrpcReceiver | OtlpGrpcReceiver[SpanBatch] | HttpSpanReceiver[SpanBatch]


def build_receivers(
    settings: CollectorReceivers,
    pipeline: TracePipeline,
    consume: SpanConsumer[SpanBatch],
    counts: IntakeCounts,
) -> list[Receiver]:
    """The receivers `settings` ask for: OTLP/gRPC served natively (the shared receiver
    when it serves TLS), OTLP/HTTP by the shared receiver with the core's decoders."""
    receivers: list[Receiver] = []
    limit = settings.max_concurrent_requests
    grpc = settings.otlp_grpc
    if grpc.enabled and grpc.tls is None:
        receivers.append(
            NativeOtlpGrpcReceiver(grpc.listen, pipeline, counts, grpc.max_request_bytes, limit)
        )
    elif grpc.enabled:
        receivers.append(
            OtlpGrpcReceiver(
                grpc.listen,
                consume,
                counts,
                grpc.max_request_bytes,
                limit,
                tls=grpc.tls,
                decoders=DECODERS,
            )
        )
    if settings.otlp_http.enabled:
        receivers.append(
            HttpSpanReceiver(
                settings.otlp_http.listen,
                consume,
                counts,
                otlp_routes=True,
                zipkin_routes=False,
                max_request_bytes=settings.otlp_http.max_request_bytes,
                tls=settings.otlp_http.tls,
                max_concurrent_requests=limit,
                decoders=DECODERS,
            )
        )
    return receivers


async def run(
    config: CollectorConfig,
    stop: asyncio.Event | None = None,
    registry: CollectorRegistry | None = None,
) -> None:
    """Run until `stop` is set (SIGTERM and SIGINT set it when no `stop` is given).

    `registry` receives the collector's metrics (a new one by default). Raises
    `CollectorError` when the collector cannot start or its trace pipeline fails.
    """
    registry = registry if registry is not None else CollectorRegistry()
    build_info(registry, "collector")
    try:
        store = await open_store(config.storage, registry)
    except (OSError, sqlite3.Error) as error:
        path = str(config.storage.embedded.path)
        log.error(
            "The embedded trace store cannot be opened.", extra={"path": path, "error": str(error)}
        )
        raise CollectorError(f"the embedded trace store {path} cannot be opened: {error}") from None
    pipeline = TracePipeline(
        config, store.write, span_documents=store.span_documents, registry=registry
    )
    intake = IntakeCounts()
    registry.register(IntakeMetrics(intake))
    stopping = False

    async def consume(batch: SpanBatch, spans: int, peer: str | None) -> Admission:
        if stopping:
            return Admission.UNAVAILABLE
        return Admission.ACCEPTED if pipeline.accept(batch, spans) else Admission.FULL

    receivers = build_receivers(config.receivers, pipeline, consume, intake)
    query = QueryServer(store, config.query.listen, registry)
    telemetry = TelemetryServer(registry, config.telemetry.listen)
    if config.storage.elasticsearch is not None:
        telemetry.readiness_checks["trace store reachable"] = _elasticsearch_reachable(store)

    loop = asyncio.get_running_loop()
    handled_signals: tuple[signal.Signals, ...] = ()
    if stop is None:
        stop = asyncio.Event()
        handled_signals = (signal.SIGTERM, signal.SIGINT)
        for signal_number in handled_signals:
            loop.add_signal_handler(signal_number, stop.set)
    # The pipeline exposes no failure of its own; its one worker task is watched here.
    worker = await pipeline.start()
    retention = asyncio.create_task(
        keep_retention(store, config.storage.retention), name="trace retention"
    )
    stopping_task = asyncio.create_task(stop.wait())
    failure: BaseException | None = None
    try:
        try:
            await query.start()
            for receiver in receivers:
                await receiver.start()
            await telemetry.start()
        except (OSError, RuntimeError) as error:  # grpc says RuntimeError for a taken port
            log.error("The collector cannot listen.", extra={"error": str(error)})
            raise CollectorError(f"cannot listen: {error}") from None
        log.info(
            "The collector is running.",
            extra={
                "receivers": [_address(receiver) for receiver in receivers],
                "query": f"{query.host}:{query.port}",
                "store": store.name,
            },
        )
        running: set[asyncio.Future[Any]] = {stopping_task, worker}
        await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
        if worker.done():
            failure = worker.exception() if not worker.cancelled() else None
            log.error(
                "The trace pipeline stopped; the collector stops so that it is restarted.",
                exc_info=failure,
            )
            raise CollectorError("the trace pipeline stopped") from failure
    finally:
        for signal_number in handled_signals:
            loop.remove_signal_handler(signal_number)
        stopping_task.cancel()
        stopping = True
        for receiver in receivers:  # calls in progress finish and are accepted
            await receiver.stop()
        store_closed = await _drain(pipeline, store, config.shutdown_timeout)
        retention.cancel()
        await asyncio.wait({retention})
        await query.stop()
        if not store_closed:
            await store.close()
        await telemetry.stop()
    log.info(
        "The collector stopped.",
        extra={
            "spans_received": sum(intake.spans_accepted.values()),
            "traces_stored": pipeline.counts.traces_stored,
            "traces_not_stored": pipeline.counts.traces_not_stored,
        },
    )


async def _drain(pipeline: TracePipeline, store: TraceStore, drain_for: float) -> bool:
    """Assemble and store what the pipeline took, for up to `drain_for`; then close the store
    so a write still retrying ends (its spans counted as dropped). True if it closed it."""
    stopping = asyncio.create_task(pipeline.stop(), name="trace pipeline drain")
    done, _ = await asyncio.wait({stopping}, timeout=drain_for)
    closed = False
    if not done:
        log.warning(
            "Stopping before every trace taken was stored; the store is closed and what "
            "it had not written is counted as dropped.",
            extra={"drain_for_s": drain_for, "queued_spans": pipeline.queued_spans},
        )
        await store.close()
        closed = True
    # After a failure of the worker, stop() raises it again: it was logged already.
    with contextlib.suppress(Exception):
        await stopping
    return closed


def _elasticsearch_reachable(store: TraceStore) -> ReadinessCheck:
    # Only called with an Elasticsearch store (the module was imported by open_store).
    from observer.collector.store.elasticsearch import ElasticsearchTraceStore

    assert isinstance(store, ElasticsearchTraceStore)
    client = store.client.options(request_timeout=READINESS_TIMEOUT, max_retries=0)

    async def check() -> str | None:
        if await client.ping():
            return None
        return "Elasticsearch does not answer"

    return check


def _address(receiver: Receiver) -> str:
    if isinstance(receiver, NativeOtlpGrpcReceiver | OtlpGrpcReceiver):
        return f"otlp_grpc {receiver.listen.rpartition(':')[0]}:{receiver.port}"
    return f"otlp_http {receiver.host}:{receiver.port}"
