"""The collector's native OTLP/gRPC receiver on loopback: real OpenTelemetry SDK exporters
and raw gRPC calls, answered as the shared receiver answers (the same table as
test_span_receivers.py), the spans landing in the pipeline's queue."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import orjson
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.trace.export import SpanExportResult

from observer.collector._core import unpack_record
from observer.collector.app import build_receivers
from observer.collector.otlp_grpc import NativeOtlpGrpcReceiver
from observer.collector.pipeline import SpanBatch, TracePipeline
from observer.config import CollectorConfig, parse
from observer.receivers import Admission, IntakeCounts
from observer.receivers.http import HttpSpanReceiver
from observer.receivers.otlp_grpc import OtlpGrpcReceiver
from tests.integration.span_support import sdk_spans
from tests.integration.test_span_receivers import (
    EXPORT,
    GRPC_TABLE,
    LIMIT,
    grpc_call,
    valid_request,
)

QUEUED_SPANS = 10


async def written(traces: object) -> None:
    """The pipeline's store: these tests read the core and the queue instead."""


@pytest.fixture
async def pipeline() -> AsyncIterator[TracePipeline]:
    config = parse(
        CollectorConfig,
        f"assembly: {{max_queued_spans: {QUEUED_SPANS}}}\nsampling: {{probabilistic_share: 1.0}}",
        env={},
    )
    # No worker: what the receiver queues stays queued until a test assembles it.
    subject = TracePipeline(config, written)
    yield subject
    await subject.stop()


@pytest.fixture
def counts() -> IntakeCounts:
    return IntakeCounts()


@pytest.fixture
async def receiver(
    pipeline: TracePipeline, counts: IntakeCounts
) -> AsyncIterator[NativeOtlpGrpcReceiver]:
    subject = NativeOtlpGrpcReceiver("127.0.0.1:0", pipeline, counts, max_request_bytes=LIMIT)
    await subject.start()
    yield subject
    await subject.stop()


def retry_delay(error: grpc.aio.AioRpcError) -> int:
    details = dict(error.trailing_metadata() or ())["grpc-status-details-bin"]
    [detail] = status_pb2.Status.FromString(details).details
    retry = error_details_pb2.RetryInfo()
    assert detail.Unpack(retry)
    return retry.retry_delay.seconds


@pytest.mark.parametrize("compression", [None, "gzip"])
async def test_sdk_grpc_exporter_delivers_every_span(
    receiver: NativeOtlpGrpcReceiver,
    pipeline: TracePipeline,
    counts: IntakeCounts,
    compression: str | None,
) -> None:
    """The OpenTelemetry SDK's OTLP/gRPC exporter's spans, plain or gzip, are queued with
    their ids and names, and counted as accepted."""
    sent = sdk_spans(20)
    exporter = GrpcSpanExporter(
        endpoint=f"127.0.0.1:{receiver.port}",
        insecure=True,
        compression=grpc.Compression.Gzip if compression else None,
    )
    result = await asyncio.to_thread(exporter.export, sent)
    exporter.shutdown()
    assert result is SpanExportResult.SUCCESS
    await pipeline.process_queued()
    (trace,) = pipeline.core.drain(0.0)
    record = orjson.loads(unpack_record(trace.record))
    received = {span["span_id"]: span["name"] for span in record["spans"]}
    assert received == {
        f"{span.context.span_id:016x}": span.name for span in sent if span.context is not None
    }
    receiver.take_counts()
    assert counts.spans_accepted["otlp_grpc"] == 20


@pytest.mark.parametrize(
    ("case", "body", "compression", "code"), GRPC_TABLE, ids=[row[0] for row in GRPC_TABLE]
)
async def test_bad_input_gets_the_spec_answer_and_a_count(
    receiver: NativeOtlpGrpcReceiver,
    pipeline: TracePipeline,
    counts: IntakeCounts,
    case: str,
    body: bytes,
    compression: grpc.Compression | None,
    code: grpc.StatusCode | None,
) -> None:
    """Each bad call gets the shared receiver's status code with a message (OK with
    partial_success for bad ids), is counted, and the next good call is served."""
    if code is not None:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await grpc_call(receiver.port, body, compression)
        assert raised.value.code() == code
        assert raised.value.details()
        receiver.take_counts()
        reason = "bad_payload" if code == grpc.StatusCode.INVALID_ARGUMENT else "too_large"
        assert counts.requests_refused[("otlp_grpc", reason)] == 1
        assert pipeline.queued_spans == 0
    else:
        answer = ExportTraceServiceResponse.FromString(await grpc_call(receiver.port, body))
        receiver.take_counts()
        if case == "invalid trace id length":
            assert answer.partial_success.rejected_spans == 1
            assert "trace_id must be 16 bytes" in answer.partial_success.error_message
            assert counts.spans_refused[("otlp_grpc", "invalid_id")] == 1
            assert pipeline.queued_spans == 1
        else:
            assert not answer.HasField("partial_success")
            assert pipeline.queued_spans == 0
    queued = pipeline.queued_spans
    answer = await grpc_call(receiver.port, valid_request(2).SerializeToString())
    assert not ExportTraceServiceResponse.FromString(answer).HasField("partial_success")
    assert pipeline.queued_spans == queued + 2


async def test_a_full_queue_is_resource_exhausted_with_retry_info(
    receiver: NativeOtlpGrpcReceiver, pipeline: TracePipeline, counts: IntakeCounts
) -> None:
    """Past `max_queued_spans` the sender is told to slow down and retry; the spans are
    counted as refused, and taken again once the queue has room."""
    body = valid_request(QUEUED_SPANS - 2).SerializeToString()
    await grpc_call(receiver.port, body)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await grpc_call(receiver.port, body)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert retry_delay(raised.value) == 1
    receiver.take_counts()
    assert counts.spans_refused[("otlp_grpc", "queue_full")] == QUEUED_SPANS - 2
    await pipeline.process_queued()
    await grpc_call(receiver.port, body)
    assert pipeline.queued_spans == QUEUED_SPANS - 2


async def test_a_closing_pipeline_is_unavailable_with_retry_info(
    receiver: NativeOtlpGrpcReceiver, pipeline: TracePipeline, counts: IntakeCounts
) -> None:
    pipeline.queue.close()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await grpc_call(receiver.port, valid_request(3).SerializeToString())
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert retry_delay(raised.value) == 1
    receiver.take_counts()
    assert counts.spans_refused[("otlp_grpc", "unavailable")] == 3


async def test_calls_past_the_concurrency_limit_are_unavailable_and_counted(
    pipeline: TracePipeline, counts: IntakeCounts
) -> None:
    receiver = NativeOtlpGrpcReceiver("127.0.0.1:0", pipeline, counts, max_concurrent_requests=0)
    await receiver.start()
    try:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await grpc_call(receiver.port, valid_request(1).SerializeToString())
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert retry_delay(raised.value) == 1
    finally:
        await receiver.stop()
    assert counts.requests_refused[("otlp_grpc", "too_many_requests")] == 1


async def test_another_method_is_unimplemented(receiver: NativeOtlpGrpcReceiver) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{receiver.port}") as channel:
        other = channel.unary_unary(
            EXPORT.replace("Export", "Import"),
            request_serializer=None,
            response_deserializer=None,
        )
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await other(b"")
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_otlp_grpc_is_served_natively_unless_tls_is_asked_for(
    pipeline: TracePipeline, counts: IntakeCounts
) -> None:
    """TLS is served by the shared receiver (with the core's decoders) until the native
    server serves it."""

    async def consume(batch: SpanBatch, spans: int, peer: str | None) -> Admission:
        return Admission.ACCEPTED if pipeline.accept(batch, spans) else Admission.FULL

    plain = "otlp_grpc: {listen: '127.0.0.1:0'}"
    tls = "otlp_grpc: {listen: '127.0.0.1:0', tls: {cert_file: a.crt, key_file: a.key}}"
    for receivers, kind in ((plain, NativeOtlpGrpcReceiver), (tls, OtlpGrpcReceiver)):
        config = parse(CollectorConfig, f"receivers: {{{receivers}}}", env={})
        built = build_receivers(config.receivers, pipeline, consume, counts)
        assert [type(receiver) for receiver in built] == [kind, HttpSpanReceiver]
