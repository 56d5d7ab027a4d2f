"""The collector's OTLP/gRPC receiver: served by the trace core (native/src/grpc.rs).

Agents send every span through this door, and gRPC's Python server cost about 300 µs of
CPU per request before a span was read. The native server reads, decodes and checks a
request on its own thread and pushes the spans into the pipeline's queue; Python sees
nothing per request. It answers as the shared receiver (`observer.receivers.otlp_grpc`)
does: the table in `observer.receivers`, the same messages and RetryInfo.

Its counts reach the shared `IntakeCounts` (metrics, and refusals logged at most once per
interval) every `SYNC_INTERVAL` and when it stops. TLS is not served natively: with
`tls` set, the collector runs the shared receiver instead (app.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from observer.collector._core import OtlpGrpcServer
from observer.collector.pipeline import TracePipeline
from observer.receivers import IntakeCounts, Refusal

log = logging.getLogger(__name__)

RECEIVER = "otlp_grpc"
SYNC_INTERVAL = 0.25


class NativeOtlpGrpcReceiver:
    def __init__(
        self,
        listen: str,
        pipeline: TracePipeline,
        counts: IntakeCounts,
        max_request_bytes: int = 20 << 20,
        max_concurrent_requests: int = 64,
    ) -> None:
        self.listen = listen
        self.pipeline = pipeline
        self.counts = counts
        self.max_request_bytes = max_request_bytes
        self.max_concurrent_requests = max_concurrent_requests
        self.port = 0
        self._server: OtlpGrpcServer | None = None
        self._sync: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._server = OtlpGrpcServer(
            self.listen, self.max_request_bytes, self.max_concurrent_requests, self.pipeline.queue
        )
        self.port = self._server.port
        self._sync = asyncio.create_task(self._sync_counts(), name="otlp-grpc-counts")
        host = self.listen.rpartition(":")[0]
        log.info(
            "Receiving OTLP/gRPC spans.",
            extra={"listen": f"{host}:{self.port}", "tls": False, "native": True},
        )

    async def stop(self, grace: float = 1.0) -> None:
        """Stop accepting calls; calls in progress get `grace` seconds to finish."""
        if self._server is None:
            return
        server, self._server = self._server, None
        await asyncio.to_thread(server.stop, grace)
        if self._sync is not None:
            self._sync.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sync
        self._take_counts(server)

    async def _sync_counts(self) -> None:
        while self._server is not None:
            self._take_counts(self._server)
            await asyncio.sleep(SYNC_INTERVAL)

    def take_counts(self) -> None:
        """Bring the server's counts into `counts` now (they otherwise lag by at most
        `SYNC_INTERVAL`)."""
        if self._server is not None:
            self._take_counts(self._server)

    def _take_counts(self, server: OtlpGrpcServer) -> None:
        accepted = server.take_accepted()
        if accepted:
            self.counts.accepted(RECEIVER, accepted)
        for reason, spans, detail, peer in server.take_refusals():
            self.counts.refused(RECEIVER, Refusal(reason), spans, detail, peer)
