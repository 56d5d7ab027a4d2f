"""OTLP/gRPC: `opentelemetry.proto.collector.trace.v1.TraceService/Export` on grpc.aio.

The method is registered with no deserializer, so the handler gets the request's bytes
and decodes them itself: an undecodable request is then INVALID_ARGUMENT with a message,
where a failing deserializer would give INTERNAL. gRPC enforces the size limit
(`max_request_bytes`, checked after decompression) and answers RESOURCE_EXHAUSTED itself.
Requests past `max_concurrent_requests` are answered UNAVAILABLE by the handler, not by
gRPC's own limiter, so that they are counted and carry RetryInfo like every refusal.

Overload answers carry `google.rpc.RetryInfo` in `grpc-status-details-bin`, which makes
RESOURCE_EXHAUSTED retryable for OTLP clients (OTLP spec, "OTLP/gRPC Throttling").
"""

from __future__ import annotations

import logging
from typing import Any, Generic, overload
from urllib.parse import unquote

import grpc
from google.protobuf.any_pb2 import Any as AnyMessage
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans

from observer.config import ServerTlsConfig
from observer.protocols import otlp
from observer.receivers import (
    MESSAGES,
    RETRY_AFTER_SECONDS,
    Admission,
    Batch,
    Decoders,
    IntakeCounts,
    Refusal,
    SpanConsumer,
)
from observer.tls import grpc_server_credentials

log = logging.getLogger(__name__)

RECEIVER = "otlp_grpc"
SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


class OtlpGrpcReceiver(Generic[Batch]):
    @overload
    def __init__(
        self: OtlpGrpcReceiver[list[ResourceSpans]],
        listen: str,
        consume: SpanConsumer[list[ResourceSpans]],
        counts: IntakeCounts,
        max_request_bytes: int = ...,
        max_concurrent_requests: int = ...,
        tls: ServerTlsConfig | None = ...,
    ) -> None: ...

    @overload
    def __init__(
        self,
        listen: str,
        consume: SpanConsumer[Batch],
        counts: IntakeCounts,
        max_request_bytes: int = ...,
        max_concurrent_requests: int = ...,
        tls: ServerTlsConfig | None = ...,
        *,
        decoders: Decoders[Batch],
    ) -> None: ...

    def __init__(
        self,
        listen: str,
        consume: SpanConsumer[Any],
        counts: IntakeCounts,
        max_request_bytes: int = 20 << 20,
        max_concurrent_requests: int = 64,
        tls: ServerTlsConfig | None = None,
        *,
        decoders: Decoders[Any] = MESSAGES,
    ) -> None:
        self.listen = listen
        self.consume = consume
        self.decode = decoders.otlp_protobuf
        self.counts = counts
        self.max_request_bytes = max_request_bytes
        self.max_concurrent_requests = max_concurrent_requests
        self.tls = tls
        self.port = 0
        self._active = 0
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self.max_request_bytes),
                # Two agents must never share a port by accident (tests, misconfiguration).
                ("grpc.so_reuseport", 0),
            ],
        )
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Export": grpc.unary_unary_rpc_method_handler(
                    self._export, request_deserializer=None, response_serializer=None
                )
            },
        )
        server.add_generic_rpc_handlers((handler,))
        if self.tls is None:
            self.port = server.add_insecure_port(self.listen)
        else:
            credentials = grpc_server_credentials(self.tls, f"{RECEIVER}.tls")
            self.port = server.add_secure_port(self.listen, credentials)
        if self.port == 0:
            raise OSError(f"OTLP/gRPC receiver: cannot listen on {self.listen}")
        await server.start()
        self._server = server
        host = self.listen.rpartition(":")[0]
        log.info(
            "Receiving OTLP/gRPC spans.",
            extra={"listen": f"{host}:{self.port}", "tls": self.tls is not None},
        )

    async def stop(self, grace: float = 1.0) -> None:
        """Stop accepting calls; calls in progress get `grace` seconds to finish."""
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    async def _export(self, body: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        peer = peer_ip(context.peer())
        if self._active >= self.max_concurrent_requests:
            message = "too many requests at once; retry later"
            self.counts.refused(RECEIVER, Refusal.TOO_MANY_REQUESTS, None, message, peer)
            return _refuse(context, grpc.StatusCode.UNAVAILABLE, message, retry=True)
        self._active += 1
        try:
            return await self._accept(body, context, peer)
        finally:
            self._active -= 1

    async def _accept(
        self, body: bytes, context: grpc.aio.ServicerContext[bytes, bytes], peer: str | None
    ) -> bytes:
        try:
            checked = self.decode(body)
        except otlp.PayloadError as error:
            self.counts.refused(RECEIVER, Refusal.BAD_PAYLOAD, None, str(error), peer)
            return _refuse(context, grpc.StatusCode.INVALID_ARGUMENT, str(error), retry=False)
        if checked.rejected:
            self.counts.refused(
                RECEIVER, Refusal.INVALID_ID, checked.rejected, checked.reason, peer
            )
        if checked.spans:
            admission = await self.consume(checked.batch, checked.spans, peer)
            if admission is not Admission.ACCEPTED:
                reason = Refusal(admission.value)
                self.counts.refused(RECEIVER, reason, checked.spans, "", peer)
                code = (
                    grpc.StatusCode.RESOURCE_EXHAUSTED
                    if admission is Admission.FULL
                    else grpc.StatusCode.UNAVAILABLE
                )
                message = (
                    "the span queue is full; retry later"
                    if admission is Admission.FULL
                    else "no collector to send spans to now; retry later"
                )
                return _refuse(context, code, message, retry=True)
            self.counts.accepted(RECEIVER, checked.spans)
        return otlp.response(checked.rejected, checked.reason).SerializeToString()


def _refuse(
    context: grpc.aio.ServicerContext[bytes, bytes],
    code: grpc.StatusCode,
    message: str,
    retry: bool,
) -> bytes:
    """Answer with an error status by returning, not by `context.abort()`: abort raises
    through the handler, and its frames (the request's bytes and decoded batch) were kept
    in reference cycles until a full collection, which the agent's GC tuning makes rare;
    under steady refusals RSS grew past 1 GB (bench/spans.py --slow-replicas; 170 MB since)."""
    context.set_code(code)
    context.set_details(message)
    if retry:
        context.set_trailing_metadata(_retry_info(code, message))
    return b""


def _retry_info(code: grpc.StatusCode, message: str) -> tuple[tuple[str, bytes], ...]:
    detail = AnyMessage()
    detail.Pack(error_details_pb2.RetryInfo(retry_delay=Duration(seconds=RETRY_AFTER_SECONDS)))
    status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    return (("grpc-status-details-bin", status.SerializeToString()),)


def peer_ip(peer: str) -> str | None:
    """The IP address in gRPC's peer string: `ipv4:10.0.0.1:5000`, `ipv6:[::1]:5000`
    (percent-encoded by some versions); None for other transports (unix sockets)."""
    scheme, _, address = unquote(peer).partition(":")
    if scheme not in ("ipv4", "ipv6"):
        return None
    host = address.rpartition(":")[0]
    return host.strip("[]") or None
