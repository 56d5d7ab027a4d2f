"""The span receivers on loopback, fed by real OpenTelemetry SDK exporters and raw requests."""

from __future__ import annotations

import asyncio
import gc
import gzip
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import orjson
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace.export import SpanExportResult

from observer.collector.pipeline import DECODERS
from observer.protocols import otlp
from observer.receivers import MESSAGES, Admission, Decoders, IntakeCounts
from observer.receivers.http import HttpSpanReceiver
from observer.receivers.otlp_grpc import OtlpGrpcReceiver
from tests.integration.span_support import Recorder, assert_same_span, sdk_spans
from tests.unit.test_zipkin import envoy_pair

LIMIT = 64 << 10
EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def counts() -> IntakeCounts:
    return IntakeCounts()


@pytest.fixture
def decoders(request: pytest.FixtureRequest) -> Decoders[Any]:
    """The agent's decoders (OTLP messages) unless a test asks for the collector's too
    (`BOTH_DECODERS`): the collector's receivers must answer as the agent's do."""
    return getattr(request, "param", MESSAGES)


BOTH_DECODERS = pytest.mark.parametrize(
    "decoders", [MESSAGES, DECODERS], indirect=True, ids=["messages", "collector"]
)


@pytest.fixture
async def http_receiver(
    recorder: Recorder, counts: IntakeCounts, decoders: Decoders[Any]
) -> AsyncIterator[HttpSpanReceiver[Any]]:
    receiver = HttpSpanReceiver(
        "127.0.0.1:0",
        recorder,
        counts,
        otlp_routes=True,
        zipkin_routes=True,
        max_request_bytes=LIMIT,
        decoders=decoders,
    )
    await receiver.start()
    yield receiver
    await receiver.stop()


@pytest.fixture
async def grpc_receiver(
    recorder: Recorder, counts: IntakeCounts, decoders: Decoders[Any]
) -> AsyncIterator[OtlpGrpcReceiver[Any]]:
    receiver = OtlpGrpcReceiver(
        "127.0.0.1:0", recorder, counts, max_request_bytes=LIMIT, decoders=decoders
    )
    await receiver.start()
    yield receiver
    await receiver.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


def valid_request(spans: int = 3) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    for number in range(spans):
        span = scope.spans.add(name=f"op{number}")
        span.trace_id = os.urandom(16)
        span.span_id = os.urandom(8)
    return request


def bomb() -> bytes:
    """Under 1 KiB compressed, 16 MiB inflated: far past the limit."""
    return gzip.compress(b"\0" * (16 << 20), compresslevel=9)


# --- real SDK clients ---------------------------------------------------------------------


async def test_sdk_grpc_exporter_delivers_every_span_unchanged(
    grpc_receiver: OtlpGrpcReceiver, recorder: Recorder, counts: IntakeCounts
) -> None:
    """The OpenTelemetry SDK's OTLP/gRPC exporter's spans arrive with their ids, names,
    times, attributes and events, and the sender's loopback address as the peer."""
    sent = sdk_spans(20)
    exporter = GrpcSpanExporter(endpoint=f"127.0.0.1:{grpc_receiver.port}", insecure=True)
    result = await asyncio.to_thread(exporter.export, sent)
    exporter.shutdown()
    assert result is SpanExportResult.SUCCESS
    received = {span.span_id: span for _, span in recorder.spans()}
    assert len(received) == 20
    for span in sent:
        assert span.context is not None
        assert_same_span(span, received[span.context.span_id.to_bytes(8, "big")])
    assert {peer for _, _, peer in recorder.batches} == {"127.0.0.1"}
    assert counts.spans_accepted["otlp_grpc"] == 20


async def test_sdk_http_exporter_delivers_every_span_unchanged(
    http_receiver: HttpSpanReceiver, recorder: Recorder, counts: IntakeCounts
) -> None:
    """The SDK's OTLP/HTTP (protobuf) exporter's spans arrive unchanged."""
    sent = sdk_spans(20)
    exporter = HttpSpanExporter(endpoint=f"http://127.0.0.1:{http_receiver.port}/v1/traces")
    result = await asyncio.to_thread(exporter.export, sent)
    exporter.shutdown()
    assert result is SpanExportResult.SUCCESS
    received = {span.span_id: span for _, span in recorder.spans()}
    for span in sent:
        assert span.context is not None
        assert_same_span(span, received[span.context.span_id.to_bytes(8, "big")])
    assert counts.spans_accepted["otlp_http"] == 20


async def test_otlp_json_request_is_accepted_with_hex_ids(
    http_receiver: HttpSpanReceiver, recorder: Recorder, http: aiohttp.ClientSession
) -> None:
    """OTLP/JSON with hex ids and integer enums decodes to the same bytes ids; the answer is JSON."""
    body = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "web"}}]
                },
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": "5B8EFFF798038103D269B633813FC60C",
                                "spanId": "EEE19B7EC3C1B174",
                                "name": "GET /",
                                "kind": 2,
                                "startTimeUnixNano": "1544712660000000000",
                                "unknownFutureField": 1,
                            }
                        ]
                    }
                ],
            }
        ]
    }
    async with http.post(
        f"http://127.0.0.1:{http_receiver.port}/v1/traces",
        data=orjson.dumps(body),
        headers={"Content-Type": "application/json"},
    ) as answer:
        assert answer.status == 200
        assert answer.content_type == "application/json"
        assert orjson.loads(await answer.read()) == {}
    [(_, span)] = recorder.spans()
    assert span.trace_id == bytes.fromhex("5B8EFFF798038103D269B633813FC60C")
    assert span.start_time_unix_nano == 1544712660000000000


async def test_envoy_zipkin_batch_is_accepted_with_its_pairing(
    http_receiver: HttpSpanReceiver, recorder: Recorder, http: aiohttp.ClientSession
) -> None:
    """An Envoy-shaped Zipkin v2 JSON batch gets 202 and both halves of the shared span arrive."""
    async with http.post(
        f"http://127.0.0.1:{http_receiver.port}/api/v2/spans",
        data=orjson.dumps(envoy_pair()),
        headers={"Content-Type": "application/json"},
    ) as answer:
        assert answer.status == 202
    ids = {(span.span_id.hex(), span.kind) for _, span in recorder.spans()}
    assert ids == {("0f1e2d3c4b5a6978", 3), ("0f1e2d3c4b5a6978", 2)}


# --- the bad-input table ------------------------------------------------------------------

TRUNCATED = valid_request().SerializeToString()[:-7]
SHORT_ID = ExportTraceServiceRequest()
_scope = SHORT_ID.resource_spans.add().scope_spans.add()
_scope.spans.add(trace_id=os.urandom(8), span_id=os.urandom(8), name="short trace id")
_scope.spans.add(trace_id=os.urandom(16), span_id=os.urandom(8), name="fine")

HTTP_TABLE: list[tuple[str, bytes, dict[str, str], int, str]] = [
    (
        "truncated protobuf",
        TRUNCATED,
        {"Content-Type": "application/x-protobuf"},
        400,
        "bad_payload",
    ),
    (
        "wrong content type",
        valid_request().SerializeToString(),
        {"Content-Type": "text/plain"},
        415,
        "unsupported_media_type",
    ),
    (
        "oversize body",
        b"\0" * (LIMIT + 1),
        {"Content-Type": "application/x-protobuf"},
        413,
        "too_large",
    ),
    (
        "gzip bomb",
        bomb(),
        {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"},
        413,
        "too_large",
    ),
    (
        "invalid trace id length",
        SHORT_ID.SerializeToString(),
        {"Content-Type": "application/x-protobuf"},
        200,
        "invalid_id",
    ),
    ("empty batch", b"", {"Content-Type": "application/x-protobuf"}, 200, ""),
]


@BOTH_DECODERS
@pytest.mark.parametrize(
    ("case", "body", "headers", "status", "reason"), HTTP_TABLE, ids=[row[0] for row in HTTP_TABLE]
)
async def test_otlp_http_bad_input_gets_the_spec_answer_and_a_count(
    http_receiver: HttpSpanReceiver,
    recorder: Recorder,
    counts: IntakeCounts,
    http: aiohttp.ClientSession,
    decoders: Decoders[Any],
    case: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    reason: str,
) -> None:
    """Each bad request gets its status (a google.rpc.Status body with a message for
    errors, partial_success for bad ids), is counted, and the next good request is served."""
    url = f"http://127.0.0.1:{http_receiver.port}/v1/traces"
    async with http.post(url, data=body, headers=headers) as answer:
        assert answer.status == status
        payload = await answer.read()
    if status >= 400:
        assert status_pb2.Status.FromString(payload).message
        assert counts.requests_refused[("otlp_http", reason)] == 1
    elif reason == "invalid_id":
        partial = ExportTraceServiceResponse.FromString(payload).partial_success
        assert partial.rejected_spans == 1
        assert "trace_id must be 16 bytes" in partial.error_message
        assert counts.spans_refused[("otlp_http", "invalid_id")] == 1
        assert recorder.span_count() == 1
        if decoders is MESSAGES:
            assert [span.name for _, span in recorder.spans()] == ["fine"]
    else:
        assert not ExportTraceServiceResponse.FromString(payload).HasField("partial_success")
        assert recorder.batches == []
    good = valid_request(2).SerializeToString()
    async with http.post(
        url, data=good, headers={"Content-Type": "application/x-protobuf"}
    ) as answer:
        assert answer.status == 200
    assert counts.spans_accepted["otlp_http"] == 2 + (1 if reason == "invalid_id" else 0)


@BOTH_DECODERS
async def test_gzip_body_within_the_limit_is_inflated(
    http_receiver: HttpSpanReceiver, recorder: Recorder, http: aiohttp.ClientSession
) -> None:
    """A gzip-encoded OTLP body under the limit is accepted like a plain one."""
    body = gzip.compress(valid_request(5).SerializeToString())
    async with http.post(
        f"http://127.0.0.1:{http_receiver.port}/v1/traces",
        data=body,
        headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"},
    ) as answer:
        assert answer.status == 200
    assert recorder.span_count() == 5


async def grpc_call(port: int, body: bytes, compression: grpc.Compression | None = None) -> Any:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        export = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
        return await export(body, compression=compression)


GRPC_TABLE: list[tuple[str, bytes, grpc.Compression | None, grpc.StatusCode | None]] = [
    ("truncated protobuf", TRUNCATED, None, grpc.StatusCode.INVALID_ARGUMENT),
    (
        "oversize body",
        b"\n" + b"\xff\xff\x03" + b"\0" * (LIMIT + 1),
        None,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ),
    ("gzip bomb", b"\0" * (16 << 20), grpc.Compression.Gzip, grpc.StatusCode.RESOURCE_EXHAUSTED),
    ("invalid trace id length", SHORT_ID.SerializeToString(), None, None),
    ("empty batch", b"", None, None),
]


@BOTH_DECODERS
@pytest.mark.parametrize(
    ("case", "body", "compression", "code"), GRPC_TABLE, ids=[row[0] for row in GRPC_TABLE]
)
async def test_otlp_grpc_bad_input_gets_the_spec_answer(
    grpc_receiver: OtlpGrpcReceiver,
    recorder: Recorder,
    counts: IntakeCounts,
    case: str,
    body: bytes,
    compression: grpc.Compression | None,
    code: grpc.StatusCode | None,
) -> None:
    """Each bad call gets its status code with a message (or OK with partial_success for
    bad ids), and the next good call is served."""
    if code is not None:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await grpc_call(grpc_receiver.port, body, compression)
        assert raised.value.code() == code
        assert raised.value.details()
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            assert counts.requests_refused[("otlp_grpc", "bad_payload")] == 1
    else:
        answer = ExportTraceServiceResponse.FromString(await grpc_call(grpc_receiver.port, body))
        if case == "invalid trace id length":
            assert answer.partial_success.rejected_spans == 1
            assert "trace_id must be 16 bytes" in answer.partial_success.error_message
            assert recorder.span_count() == 1
        else:
            assert not answer.HasField("partial_success")
    answer = await grpc_call(grpc_receiver.port, valid_request(2).SerializeToString())
    assert not ExportTraceServiceResponse.FromString(answer).HasField("partial_success")


@BOTH_DECODERS
@pytest.mark.parametrize(
    ("admission", "status", "code"),
    [
        (Admission.FULL, 429, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (Admission.UNAVAILABLE, 503, grpc.StatusCode.UNAVAILABLE),
    ],
)
async def test_refusing_consumer_gets_a_retryable_answer_with_a_delay(
    http_receiver: HttpSpanReceiver,
    grpc_receiver: OtlpGrpcReceiver,
    recorder: Recorder,
    counts: IntakeCounts,
    http: aiohttp.ClientSession,
    admission: Admission,
    status: int,
    code: grpc.StatusCode,
) -> None:
    """A full (or unavailable) consumer gives HTTP 429 (503) with Retry-After, and gRPC
    RESOURCE_EXHAUSTED (UNAVAILABLE) with RetryInfo; the refused spans are counted."""
    recorder.admission = admission
    body = valid_request(4).SerializeToString()
    async with http.post(
        f"http://127.0.0.1:{http_receiver.port}/v1/traces",
        data=body,
        headers={"Content-Type": "application/x-protobuf"},
    ) as answer:
        assert answer.status == status
        assert answer.headers["Retry-After"] == "1"
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await grpc_call(grpc_receiver.port, body)
    assert raised.value.code() == code
    details = dict(raised.value.trailing_metadata() or ())["grpc-status-details-bin"]
    [detail] = status_pb2.Status.FromString(details).details
    retry = error_details_pb2.RetryInfo()
    assert detail.Unpack(retry)
    assert retry.retry_delay.seconds == 1
    assert counts.spans_refused[("otlp_http", admission.value)] == 4
    assert counts.spans_refused[("otlp_grpc", admission.value)] == 4


async def test_requests_past_the_concurrency_limit_are_refused_before_reading(
    recorder: Recorder, counts: IntakeCounts, http: aiohttp.ClientSession
) -> None:
    """With one request held in the consumer and a limit of one, the next is answered 503."""
    release = asyncio.Event()

    async def slow(resource_spans: Any, spans: int, peer: str | None) -> Admission:
        await release.wait()
        return Admission.ACCEPTED

    receiver = HttpSpanReceiver(
        "127.0.0.1:0",
        slow,
        counts,
        otlp_routes=True,
        zipkin_routes=False,
        max_concurrent_requests=1,
    )
    await receiver.start()
    try:
        url = f"http://127.0.0.1:{receiver.port}/v1/traces"
        headers = {"Content-Type": "application/x-protobuf"}
        body = valid_request(1).SerializeToString()
        first = asyncio.create_task(http.post(url, data=body, headers=headers))
        async with asyncio.timeout(10):
            while receiver._active == 0:
                await asyncio.sleep(0.01)
        async with http.post(url, data=body, headers=headers) as answer:
            assert answer.status == 503
            assert answer.headers["Retry-After"] == "1"
        release.set()
        async with await first as answer:
            assert answer.status == 200
        assert counts.requests_refused[("otlp_http", "too_many_requests")] == 1
    finally:
        await receiver.stop()


async def test_grpc_calls_past_the_concurrency_limit_are_refused_and_counted(
    recorder: Recorder, counts: IntakeCounts
) -> None:
    """With one call held in the consumer and a limit of one, the next call is answered
    UNAVAILABLE with RetryInfo, and counted (gRPC's own limiter would do neither)."""
    release = asyncio.Event()

    async def slow(resource_spans: Any, spans: int, peer: str | None) -> Admission:
        await release.wait()
        return Admission.ACCEPTED

    receiver = OtlpGrpcReceiver("127.0.0.1:0", slow, counts, max_concurrent_requests=1)
    await receiver.start()
    try:
        body = valid_request(1).SerializeToString()
        first = asyncio.create_task(grpc_call(receiver.port, body))
        async with asyncio.timeout(10):
            while receiver._active == 0:
                await asyncio.sleep(0.01)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await grpc_call(receiver.port, body)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        details = dict(raised.value.trailing_metadata() or ())["grpc-status-details-bin"]
        [detail] = status_pb2.Status.FromString(details).details
        assert detail.Unpack(error_details_pb2.RetryInfo())
        release.set()
        assert not ExportTraceServiceResponse.FromString(await first).HasField("partial_success")
        assert counts.requests_refused[("otlp_grpc", "too_many_requests")] == 1
        assert counts.spans_accepted["otlp_grpc"] == 1
    finally:
        await receiver.stop()


async def test_refused_requests_are_freed_at_once_not_left_for_the_cycle_collector(
    counts: IntakeCounts,
) -> None:
    """A refused request's batch is freed by reference counting as soon as it is answered.
    (Answering by `context.abort()` left each handler's frames in a reference cycle; with
    the agent's rare full collections, RSS grew past 1 GB under steady refusals.)"""

    def batches_alive() -> int:
        return sum(isinstance(thing, otlp.EncodedBatch) for thing in gc.get_objects())

    async def full(resource_spans: Any, spans: int, peer: str | None) -> Admission:
        return Admission.FULL

    receiver = OtlpGrpcReceiver("127.0.0.1:0", full, counts)
    await receiver.start()
    gc.collect()
    gc.disable()
    try:
        before = batches_alive()
        body = valid_request(3).SerializeToString()
        for _ in range(20):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await grpc_call(receiver.port, body)
            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        await asyncio.sleep(0.1)  # the last call's handler finishes
        assert counts.spans_refused[("otlp_grpc", "queue_full")] == 60
        assert batches_alive() == before
    finally:
        gc.enable()
        await receiver.stop()
