"""OTLP/HTTP (`POST /v1/traces`) and Zipkin v2 (`POST /api/v2/spans`) on aiohttp.

One server per listen address serves the routes it is given (the agent runs OTLP/HTTP on
4318 and Zipkin on 9411; one server can carry both).

Bodies are read by the handler, not by aiohttp: the server is built with
`auto_decompress=False`, the compressed body is read up to `max_request_bytes`, and gzip
or deflate is inflated in steps that stop one byte past the same limit. A small gzip bomb
thus costs at most the limit in memory and is answered 413 (the OTLP spec: "The server
MUST limit the size of the request body when parsing it, including after decompression").

At most `max_concurrent_requests` requests are read at once; more are answered 503 with
Retry-After before their bodies are read, so that memory stays bounded under overload.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, overload

from aiohttp import web
from google.protobuf.message import Message
from google.rpc import status_pb2  # type: ignore[import-untyped]
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans

from observer.config import ServerTlsConfig
from observer.protocols import otlp
from observer.protocols.otlp import Checked, Decode, PayloadError
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
from observer.tls import server_context

log = logging.getLogger(__name__)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
OTLP_PATH = "/v1/traces"
ZIPKIN_PATH = "/api/v2/spans"
_INFLATE_STEP = 256 << 10
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class _RefusedError(Exception):
    """A request answered with an error; carries its status, reason and message."""

    def __init__(self, status: int, reason: Refusal, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class _Route(Generic[Batch]):
    receiver: str
    decoders: dict[str, Decode[Batch]]
    success_status: int
    encode_success: Callable[[Checked[object], str], bytes]
    encode_error: Callable[[str, str], tuple[bytes, str]]


def _otlp_success(checked: Checked[object], content_type: str) -> bytes:
    answer = otlp.response(checked.rejected, checked.reason)
    return otlp.response_json(answer) if content_type == JSON else answer.SerializeToString()


def _otlp_error(message: str, content_type: str) -> tuple[bytes, str]:
    """The spec's failure body: a google.rpc.Status, in the request's encoding."""
    status: Message = status_pb2.Status(message=message)
    if content_type == JSON:
        from google.protobuf import json_format

        return json_format.MessageToJson(status, indent=None).encode(), JSON
    return status.SerializeToString(), PROTOBUF


def _zipkin_error(message: str, content_type: str) -> tuple[bytes, str]:
    return message.encode(), "text/plain"


def _otlp_route(decoders: Decoders[Batch]) -> _Route[Batch]:
    return _Route(
        "otlp_http",
        {PROTOBUF: decoders.otlp_protobuf, JSON: decoders.otlp_json},
        200,
        _otlp_success,
        _otlp_error,
    )


def _zipkin_route(decoders: Decoders[Batch]) -> _Route[Batch]:
    return _Route(
        "zipkin",
        # Zipkin reporters that send JSON sometimes leave the content type out; JSON is the
        # Zipkin server's default too.
        {
            JSON: decoders.zipkin_json,
            PROTOBUF: decoders.zipkin_protobuf,
            "": decoders.zipkin_json,
        },
        202,
        lambda checked, content_type: b"",
        _zipkin_error,
    )


class HttpSpanReceiver(Generic[Batch]):
    """An aiohttp server receiving spans on the given routes (OTLP/HTTP, Zipkin, or both)."""

    @overload
    def __init__(
        self: HttpSpanReceiver[list[ResourceSpans]],
        listen: str,
        consume: SpanConsumer[list[ResourceSpans]],
        counts: IntakeCounts,
        otlp_routes: bool,
        zipkin_routes: bool,
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
        otlp_routes: bool,
        zipkin_routes: bool,
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
        otlp_routes: bool,
        zipkin_routes: bool,
        max_request_bytes: int = 20 << 20,
        max_concurrent_requests: int = 64,
        tls: ServerTlsConfig | None = None,
        *,
        decoders: Decoders[Any] = MESSAGES,
    ) -> None:
        self.listen = listen
        self.consume = consume
        self.counts = counts
        self.max_request_bytes = max_request_bytes
        self.max_concurrent_requests = max_concurrent_requests
        self.tls = tls
        self.host, _, port = listen.rpartition(":")
        self.port = int(port)
        self.routes: dict[str, _Route[Any]] = {}
        if otlp_routes:
            self.routes[OTLP_PATH] = _otlp_route(decoders)
        if zipkin_routes:
            self.routes[ZIPKIN_PATH] = _zipkin_route(decoders)
        self._active = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        for path, route in self.routes.items():
            app.router.add_post(path, self._handler(route))
        # Bodies are read and inflated by the handler, within the limit (module docstring).
        self._runner = web.AppRunner(app, access_log=None, auto_decompress=False)
        await self._runner.setup()
        ssl_context = None
        if self.tls is not None:
            name = "otlp_http" if OTLP_PATH in self.routes else "zipkin"
            ssl_context = server_context(self.tls, f"{name}.tls")
        site = web.TCPSite(
            self._runner, self.host, self.port, reuse_port=False, ssl_context=ssl_context
        )
        await site.start()
        server = site._server
        if self.port == 0 and server is not None:
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        log.info(
            "Receiving spans over HTTP.",
            extra={
                "listen": f"{self.host}:{self.port}",
                "paths": sorted(self.routes),
                "tls": self.tls is not None,
            },
        )

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _handler(self, route: _Route[Any]) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            content_type = request.content_type if "Content-Type" in request.headers else ""
            peer = request.remote
            if self._active >= self.max_concurrent_requests:
                return self._refuse(
                    route,
                    content_type,
                    peer,
                    503,
                    Refusal.TOO_MANY_REQUESTS,
                    "too many requests at once; retry later",
                )
            self._active += 1
            try:
                return await self._receive(route, request, content_type, peer)
            except _RefusedError as refused:
                return self._refuse(
                    route, content_type, peer, refused.status, refused.reason, refused.message
                )
            finally:
                self._active -= 1

        return handle

    async def _receive(
        self, route: _Route[Any], request: web.Request, content_type: str, peer: str | None
    ) -> web.Response:
        decode = route.decoders.get(content_type)
        if decode is None:
            allowed = ", ".join(sorted(key for key in route.decoders if key))
            raise _RefusedError(
                415,
                Refusal.UNSUPPORTED_MEDIA_TYPE,
                f"Content-Type {content_type or '(none)'!r} is not supported; use {allowed}",
            )
        body = await self._read_body(request)
        try:
            checked = decode(body)
        except PayloadError as error:
            raise _RefusedError(400, Refusal.BAD_PAYLOAD, str(error)) from None
        if checked.rejected:
            self.counts.refused(
                route.receiver, Refusal.INVALID_ID, checked.rejected, checked.reason, peer
            )
        if checked.spans:
            admission = await self.consume(checked.batch, checked.spans, peer)
            if admission is Admission.FULL:
                self.counts.refused(route.receiver, Refusal.QUEUE_FULL, checked.spans, "", peer)
                return self._overloaded(
                    route, content_type, 429, "the span queue is full; retry later"
                )
            if admission is Admission.UNAVAILABLE:
                self.counts.refused(route.receiver, Refusal.UNAVAILABLE, checked.spans, "", peer)
                return self._overloaded(
                    route, content_type, 503, "no collector to send spans to now; retry later"
                )
            self.counts.accepted(route.receiver, checked.spans)
        body = route.encode_success(checked, content_type)
        return web.Response(
            status=route.success_status, body=body, content_type=content_type if body else None
        )

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self.max_request_bytes
        too_large = _RefusedError(
            413, Refusal.TOO_LARGE, f"the request body is over the limit of {limit} bytes"
        )
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("identity", "", *_WBITS):
            raise _RefusedError(
                415,
                Refusal.UNSUPPORTED_MEDIA_TYPE,
                f"Content-Encoding {encoding!r} is not supported; use gzip, deflate or none",
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_chunked(_INFLATE_STEP):
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        body = b"".join(chunks)
        if encoding not in _WBITS:
            return body
        inflater = zlib.decompressobj(_WBITS[encoding])
        out: list[bytes] = []
        size = 0
        pending = body
        try:
            while pending:
                piece = inflater.decompress(pending, _INFLATE_STEP)
                size += len(piece)
                if size > limit:
                    raise too_large
                out.append(piece)
                pending = inflater.unconsumed_tail
            piece = inflater.flush()
        except zlib.error as error:
            raise _RefusedError(
                400, Refusal.BAD_PAYLOAD, f"not valid {encoding}: {error}"
            ) from None
        if size + len(piece) > limit:
            raise too_large
        out.append(piece)
        return b"".join(out)

    def _refuse(
        self,
        route: _Route[Any],
        content_type: str,
        peer: str | None,
        status: int,
        reason: Refusal,
        message: str,
    ) -> web.Response:
        self.counts.refused(route.receiver, reason, None, message, peer)
        if status == 503:
            return self._overloaded(route, content_type, status, message)
        body, body_type = route.encode_error(message, content_type)
        return web.Response(status=status, body=body, content_type=body_type)

    def _overloaded(
        self, route: _Route[Any], content_type: str, status: int, message: str
    ) -> web.Response:
        body, body_type = route.encode_error(message, content_type)
        return web.Response(
            status=status,
            body=body,
            content_type=body_type,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
