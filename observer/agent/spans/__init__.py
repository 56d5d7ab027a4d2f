"""The agent's span path: receivers → pod identity → routing by trace id → collector replicas.

```
 OTLP/gRPC :4317 ┐
 OTLP/HTTP :4318 ├─► consume(batch, peer) ─► PodIdentity.enrich ─► CollectorExporter.submit
 Zipkin    :9411 ┘     (FULL when the         (resource level)     (route by trace id; queue,
                        queue is at its bound)                       batch, retry per replica)
                                                                         ▲
                       EndpointResolver (headless Service DNS, or a static list) ─┘
```

Ownership: a receiver hands a decoded batch to `consume` and forgets it; `consume`
enriches it in place and the exporter encodes it into per-replica bytes at once, so no
message outlives the request that brought it.

Shutdown (`stop`): the receivers stop taking requests, the exporter delivers what it
holds for up to the timeout, then closes; what is left is counted as dropped.
"""

from __future__ import annotations

import asyncio
import logging

from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans
from prometheus_client import CollectorRegistry

from observer.agent.spans.enrich import EnrichMetrics, PodIdentity
from observer.agent.spans.exporter import CollectorExporter, ExportMetrics
from observer.agent.spans.resolver import EndpointResolver, Lookup, system_lookup
from observer.config import CollectorSinkConfig, SpansConfig
from observer.kube.metadata import PodMetadataCache
from observer.receivers import Admission, IntakeCounts, IntakeMetrics
from observer.receivers.http import HttpSpanReceiver
from observer.receivers.otlp_grpc import OtlpGrpcReceiver

log = logging.getLogger(__name__)


class SpanPipeline:
    def __init__(
        self,
        sources: SpansConfig,
        sink: CollectorSinkConfig,
        metadata: PodMetadataCache | None,
        registry: CollectorRegistry | None = None,
        lookup: Lookup = system_lookup,
    ) -> None:
        self.sources = sources
        self.sink = sink
        self.identity = PodIdentity(metadata)
        self.exporter = CollectorExporter(sink)
        self.intake = IntakeCounts()
        self.resolver = EndpointResolver(
            sink.endpoint,
            sink.endpoints,
            sink.resolve_interval,
            self.exporter.set_endpoints,
            lookup,
        )
        self.receivers: list[
            OtlpGrpcReceiver[list[ResourceSpans]] | HttpSpanReceiver[list[ResourceSpans]]
        ] = []
        limit = sources.max_concurrent_requests
        if sources.otlp_grpc.enabled:
            self.receivers.append(
                OtlpGrpcReceiver(
                    sources.otlp_grpc.listen,
                    self.consume,
                    self.intake,
                    sources.otlp_grpc.max_request_bytes,
                    limit,
                    tls=sources.otlp_grpc.tls,
                )
            )
        if sources.otlp_http.enabled:
            self.receivers.append(
                HttpSpanReceiver(
                    sources.otlp_http.listen,
                    self.consume,
                    self.intake,
                    otlp_routes=True,
                    zipkin_routes=False,
                    max_request_bytes=sources.otlp_http.max_request_bytes,
                    tls=sources.otlp_http.tls,
                    max_concurrent_requests=limit,
                )
            )
        if sources.zipkin.enabled:
            self.receivers.append(
                HttpSpanReceiver(
                    sources.zipkin.listen,
                    self.consume,
                    self.intake,
                    otlp_routes=False,
                    zipkin_routes=True,
                    max_request_bytes=sources.zipkin.max_request_bytes,
                    tls=sources.zipkin.tls,
                    max_concurrent_requests=limit,
                )
            )
        self._resolving: asyncio.Task[None] | None = None
        self._stopping = False
        if registry is not None:
            registry.register(IntakeMetrics(self.intake))
            registry.register(EnrichMetrics(self.identity))
            registry.register(ExportMetrics(self.exporter))

    async def consume(
        self, resource_spans: list[ResourceSpans], spans: int, peer: str | None
    ) -> Admission:
        """The receivers' hand-off: enrich, route and queue, or say why not now."""
        if self._stopping or not self.exporter.ring.endpoints:
            return Admission.UNAVAILABLE
        if self.exporter.full:
            return Admission.FULL
        self.identity.enrich(resource_spans, peer)
        self.exporter.submit(resource_spans)
        return Admission.ACCEPTED

    async def start(self) -> None:
        """Resolve the replicas (waiting at most one resolve interval for a first answer),
        then open the receivers."""
        self._resolving = asyncio.create_task(self.resolver.run(), name="resolve collectors")
        try:
            async with asyncio.timeout(self.sink.resolve_interval):
                await self.resolver.resolved.wait()
        except TimeoutError:
            log.warning(
                "No collector replica is known yet; spans are refused (retry later) until one is.",
                extra={"endpoint": self.sink.endpoint},
            )
        for receiver in self.receivers:
            await receiver.start()

    def ready(self) -> str | None:
        """None when spans can be taken, else why not (for /readyz)."""
        if not self.exporter.ring.endpoints:
            return f"no collector replica known for {self.sink.endpoint}"
        return None

    async def stop(self, drain_seconds: float) -> None:
        self._stopping = True
        for receiver in self.receivers:
            await receiver.stop()
        if self._resolving is not None:
            self._resolving.cancel()
            await asyncio.wait({self._resolving})
        await self.exporter.drain(drain_seconds)
        log.info(
            "The span path stopped.",
            extra={
                "spans_received": sum(self.intake.spans_accepted.values()),
                "spans_exported": self.exporter.counts.exported,
                "spans_dropped": sum(self.exporter.counts.dropped.values()),
            },
        )
