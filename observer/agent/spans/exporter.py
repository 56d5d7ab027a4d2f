"""Spans to the collector replicas over OTLP/gRPC, each trace to the one its id hashes to.

Ownership: `submit` takes a batch of ResourceSpans (enriched, owned by the pipeline) and
turns it at once into encoded request pieces, one per replica; the batch's messages are
not kept. Pieces are bytes: a serialized `ExportTraceServiceRequest` holding the
resources (and only the spans) that replica owns. Requests to a replica are the pieces
joined (protobuf merges concatenated messages; see `otlp.frame_resource_spans`), so no
span is copied again after routing, and a retry resends the same bytes.

Routing (`route.py`) never unpacks what is only passed on: per span it reads the trace id
(the ring lookup is a CRC-32 and an index) and cuts the span's bytes out of the request
they arrived in.

Per replica: a queue of pieces, batched into requests of at most `batch.max_spans` spans
or `batch.max_bytes` bytes, sent when full or `batch.flush_interval` after the oldest
piece arrived, by `max_in_flight` senders. The bytes held (queued and in flight, all
replicas) are bounded by `queue.max_bytes`: past it `full` is true and the receivers
answer "retry later".

Failures, classified where they happen (OTLP spec, "OTLP/gRPC Response"): UNAVAILABLE,
CANCELLED, DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, DATA_LOSS, and RESOURCE_EXHAUSTED
when the server sent RetryInfo, are retried with exponential, jittered backoff (a
server's RetryInfo delay honoured) for up to `retry.max_elapsed`; any other code is
permanent. Every span not delivered is counted in `spans_dropped{reason}` and logged
(at most every 10 s per reason): `refused_by_collector` (permanent error),
`rejected_by_collector` (partial success), `retries_exhausted`, `shutdown`.

When a replica leaves the ring, its queued pieces and its batches waiting for a retry are
routed again over the replicas that remain, so its traces move to their new owners.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from observer.agent.spans.ring import HashRing
from observer.agent.spans.route import Pieces, route
from observer.config import CollectorSinkConfig
from observer.protocols.otlp import EncodedBatch
from observer.telemetry import metric_name
from observer.tls import grpc_channel_credentials

log = logging.getLogger(__name__)

EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
DROP_LOG_INTERVAL = 10.0
_RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.DATA_LOSS,
    }
)


@dataclass(slots=True)
class ExportCounts:
    exported: int = 0
    retries: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    endpoint_changes: int = 0


@dataclass(eq=False)
class _Replica:
    endpoint: str
    channel: grpc.aio.Channel
    export: grpc.aio.UnaryUnaryMultiCallable[bytes, ExportTraceServiceResponse]
    queue: deque[tuple[bytes, int, float]] = field(default_factory=deque)
    """Pieces: (bytes, spans, monotonic time queued)."""
    queued_spans: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    senders: list[asyncio.Task[None]] = field(default_factory=list)
    removed: bool = False


class CollectorExporter:
    def __init__(
        self,
        settings: CollectorSinkConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.ring = HashRing(())
        self.replicas: dict[str, _Replica] = {}
        self.held_bytes = 0
        """Bytes queued or in flight, all replicas: the bound `queue.max_bytes` applies."""
        self.counts = ExportCounts()
        self._drops_unlogged: Counter[str] = Counter()
        self._logged_at: dict[str, float] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._credentials: grpc.ChannelCredentials | None = None
        self._channel_options: list[tuple[str, Any]] = [("grpc.max_send_message_length", -1)]
        if settings.tls.enabled:
            # Read now: a missing or wrong file stops the start, not the first export.
            self._credentials = grpc_channel_credentials(settings.tls, "sinks.collector.tls")
            server_name = settings.tls.server_name
            if server_name is None and not settings.endpoints:
                server_name = settings.endpoint.rpartition(":")[0]
            if server_name is not None:
                # Replicas resolved from `endpoint` are dialled by IP; the certificate
                # names the Service.
                self._channel_options.append(("grpc.ssl_target_name_override", server_name))

    # --- what the pipeline asks ----------------------------------------------------------

    @property
    def full(self) -> bool:
        return self.held_bytes >= self.settings.queue.max_bytes

    def submit(self, resource_spans: Sequence[ResourceSpans]) -> bool:
        """Route a batch to the replicas' queues; False when no replica is known."""
        if not self.ring.endpoints:
            return False
        self._enqueue(route(resource_spans, self.ring))
        return True

    def set_endpoints(self, endpoints: Sequence[str]) -> None:
        """Replace the replica set (from DNS or the static list); moves removed replicas'
        traces to their new owners."""
        ring = HashRing(endpoints)
        if ring.endpoints == self.ring.endpoints:
            return
        log.info(
            "The collector replicas changed.",
            extra={"before": list(self.ring.endpoints), "after": list(ring.endpoints)},
        )
        self.counts.endpoint_changes += 1
        self.ring = ring
        for endpoint in ring.endpoints:
            if endpoint not in self.replicas:
                self.replicas[endpoint] = self._open(endpoint)
        for endpoint in [e for e in self.replicas if e not in ring.endpoints]:
            replica = self.replicas.pop(endpoint)
            replica.removed = True
            replica.wake.set()
            waiting = list(replica.queue)
            replica.queue.clear()
            for data, spans, _ in waiting:
                self._release(len(data), 0)
                self._reroute(data, spans)
            asyncio.get_running_loop().create_task(self._close_when_done(replica))

    async def drain(self, seconds: float) -> None:
        """Wait up to `seconds` for every held span to be delivered (or dropped), then
        close the channels; what is left is dropped and counted as `shutdown`."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._idle.wait()
        self._closing = True
        left = 0
        for replica in list(self.replicas.values()):
            for task in replica.senders:
                task.cancel()
            await asyncio.gather(*replica.senders, return_exceptions=True)
            left += replica.queued_spans
            await replica.channel.close()
        self.replicas.clear()
        if left:
            self._drop("shutdown", left, "the shutdown timeout passed before delivery")

    # --- queues and senders --------------------------------------------------------------

    def _open(self, endpoint: str) -> _Replica:
        settings = self.settings
        compression = (
            grpc.Compression.Gzip
            if settings.compression == "gzip"
            else grpc.Compression.NoCompression
        )
        channel = (
            grpc.aio.insecure_channel(
                endpoint, options=self._channel_options, compression=compression
            )
            if self._credentials is None
            else grpc.aio.secure_channel(
                endpoint, self._credentials, options=self._channel_options, compression=compression
            )
        )
        export: grpc.aio.UnaryUnaryMultiCallable[bytes, ExportTraceServiceResponse] = (
            channel.unary_unary(
                EXPORT_METHOD,
                request_serializer=None,
                response_deserializer=ExportTraceServiceResponse.FromString,
            )
        )
        replica = _Replica(endpoint, channel, export)
        for number in range(settings.max_in_flight):
            replica.senders.append(
                asyncio.get_running_loop().create_task(
                    self._send_loop(replica), name=f"export to {endpoint} #{number}"
                )
            )
        return replica

    def _enqueue(self, pieces: Pieces) -> None:
        now = self.clock()
        for index, (parts, spans) in pieces.items():
            replica = self.replicas[self.ring.endpoints[index]]
            data = parts[0] if len(parts) == 1 else b"".join(parts)
            replica.queue.append((data, spans, now))
            replica.queued_spans += spans
            self.held_bytes += len(data)
            self._idle.clear()
            replica.wake.set()

    def _release(self, size: int, spans: int) -> None:
        self.held_bytes -= size
        if self.held_bytes <= 0:
            self.held_bytes = 0
            self._idle.set()

    def _reroute(self, data: bytes, spans: int) -> None:
        if self._closing or not self.ring.endpoints:
            self._drop("shutdown" if self._closing else "no_collector", spans, "no replica left")
            return
        request = ExportTraceServiceRequest.FromString(data)
        self._enqueue(route(EncodedBatch(request.resource_spans, data), self.ring))

    async def _close_when_done(self, replica: _Replica) -> None:
        await asyncio.gather(*replica.senders, return_exceptions=True)
        await replica.channel.close()

    async def _send_loop(self, replica: _Replica) -> None:
        batch = self.settings.batch
        while not replica.removed:
            if not replica.queue:
                replica.wake.clear()
                await replica.wake.wait()
                continue
            oldest = replica.queue[0][2]
            wait = oldest + batch.flush_interval - self.clock()
            if replica.queued_spans < batch.max_spans and wait > 0:
                replica.wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await replica.wake.wait()
                continue
            parts: list[bytes] = []
            spans = size = 0
            while replica.queue and spans < batch.max_spans and size < batch.max_bytes:
                data, count, _ = replica.queue.popleft()
                parts.append(data)
                spans += count
                size += len(data)
            replica.queued_spans -= spans
            if replica.queue:
                replica.wake.set()  # another sender may take the rest
            await self._deliver(replica, b"".join(parts), spans)

    async def _deliver(self, replica: _Replica, data: bytes, spans: int) -> None:
        retry = self.settings.retry
        started = self.clock()
        backoff = retry.initial_backoff
        try:
            while True:
                if replica.removed:
                    self._reroute(data, spans)
                    return
                try:
                    answer = await replica.export(data, timeout=self.settings.timeout)
                except grpc.aio.AioRpcError as error:
                    delay = _retry_delay(error)
                    if delay is None:
                        self._drop(
                            "refused_by_collector", spans, f"{error.code().name}: {error.details()}"
                        )
                        return
                    delay = max(delay, random.uniform(0, backoff))  # noqa: S311 - jitter
                    if self.clock() - started + delay > retry.max_elapsed:
                        self._drop(
                            "retries_exhausted", spans, f"{error.code().name}: {error.details()}"
                        )
                        return
                    self.counts.retries += 1
                    self._retrying(replica, f"{error.code().name}: {error.details()}")
                    backoff = min(backoff * 2, retry.max_backoff)
                    await asyncio.sleep(delay)
                    continue
                rejected = answer.partial_success.rejected_spans
                self.counts.exported += spans - rejected
                if rejected:
                    self._drop(
                        "rejected_by_collector", rejected, answer.partial_success.error_message
                    )
                return
        except asyncio.CancelledError:
            self._drop("shutdown", spans, "the shutdown timeout passed before delivery")
            raise
        finally:
            self._release(len(data), spans)

    def _retrying(self, replica: _Replica, detail: str) -> None:
        """Say soon why a replica does not take spans (an unreachable address, a refused
        certificate): retries may last `retry.max_elapsed` before anything is dropped."""
        if self._time_to_log(f"retrying {replica.endpoint}"):
            log.warning(
                "Export to a collector replica failed; retrying.",
                extra={"replica": replica.endpoint, "detail": detail},
            )

    def _drop(self, reason: str, spans: int, detail: str) -> None:
        """Count spans not delivered, and log it at most every DROP_LOG_INTERVAL per reason."""
        self.counts.dropped[reason] += spans
        self._drops_unlogged[reason] += spans
        if self._time_to_log(reason):
            log.warning(
                "Spans were dropped on their way to the collectors.",
                extra={
                    "reason": reason,
                    "detail": detail,
                    "spans_since_last_log": self._drops_unlogged.pop(reason),
                },
            )

    def _time_to_log(self, key: str) -> bool:
        """True at most once per DROP_LOG_INTERVAL for each key."""
        now = self.clock()
        last = self._logged_at.get(key)
        if last is not None and now - last < DROP_LOG_INTERVAL:
            return False
        self._logged_at[key] = now
        return True


def _retry_delay(error: grpc.aio.AioRpcError) -> float | None:
    """Seconds to wait before retrying, at least; None when the error is permanent."""
    code = error.code()
    hinted = _retry_info_delay(error)
    if code in _RETRYABLE:
        return hinted or 0.0
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and hinted is not None:
        return hinted
    return None


def _retry_info_delay(error: grpc.aio.AioRpcError) -> float | None:
    from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]

    for key, value in error.trailing_metadata() or ():
        if key != "grpc-status-details-bin" or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                detail.Unpack(info)
                return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
    return None


class ExportMetrics(Collector):
    def __init__(self, exporter: CollectorExporter) -> None:
        self.exporter = exporter

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        exporter = self.exporter
        counts = exporter.counts
        yield CounterMetricFamily(
            metric_name("spans_exported"),
            "Spans the collector replicas acknowledged.",
            value=counts.exported,
        )
        dropped = CounterMetricFamily(
            metric_name("spans_dropped"),
            "Spans accepted from senders but not delivered to a collector, by reason.",
            labels=["reason"],
        )
        for reason, value in sorted(counts.dropped.items()):
            dropped.add_metric([reason], value)
        yield dropped
        yield CounterMetricFamily(
            metric_name("collector_export_retries"),
            "Export requests sent again after a retryable failure.",
            value=counts.retries,
        )
        yield CounterMetricFamily(
            metric_name("collector_endpoint_changes"),
            "Changes of the collector replica set (DNS answers or the static list).",
            value=counts.endpoint_changes,
        )
        yield GaugeMetricFamily(
            metric_name("collector_endpoints"),
            "Collector replicas spans are routed to.",
            value=len(exporter.ring.endpoints),
        )
        yield GaugeMetricFamily(
            metric_name("span_queue_bytes"),
            "Encoded spans held for the collectors (queued and in flight).",
            value=exporter.held_bytes,
        )
