"""The trace core as Python drives it (native/src/python.rs): requests in, encoded traces
out, and what it counts. The stages' own cases are Rust tests under native/src."""

from __future__ import annotations

import socket

import orjson
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as OtlpSpan

from observer.collector._core import (
    IntakeQueue,
    TraceCore,
    operations_of,
    pack_record,
    unpack_record,
)
from observer.collector.pipeline import decode_request, request_bytes, trace_core
from observer.config import CollectorConfig, parse
from observer.protocols.otlp import PayloadError, decode_checked_protobuf
from tests.unit.collector_spans import MS, T0, otlp_span, resource_spans

IDLE = 5.0


def core(span_documents: bool = False, max_live_traces: int = 100) -> TraceCore:
    config = parse(
        CollectorConfig,
        f"""
        assembly: {{idle_timeout: {IDLE}s, max_live_traces: {max_live_traces}}}
        sampling: {{probabilistic_share: 1.0, latency_threshold: null}}
        """,
        env={},
    )
    return trace_core(config, span_documents)


def trace_id(number: int) -> bytes:
    return number.to_bytes(16, "big")


def call(number: int, *, start_ns: int = T0) -> bytes:
    """Trace `number`: web's client span calling app's server span."""
    client = otlp_span(
        trace_id(number),
        b"\x01" * 8,
        kind=OtlpSpan.SPAN_KIND_CLIENT,
        start_ns=start_ns,
        end_ns=start_ns + 50 * MS,
    )
    server = otlp_span(
        trace_id(number),
        b"\x02" * 8,
        b"\x01" * 8,
        kind=OtlpSpan.SPAN_KIND_SERVER,
        start_ns=start_ns + 5 * MS,
        end_ns=start_ns + 45 * MS,
        error=True,
    )
    return request_bytes([resource_spans("web", [client]), resource_spans("app", [server])])


def test_quiet_traces_come_out_up_to_the_limit_per_call() -> None:
    """expire() emits at most `limit` quiet traces and says how many were due."""
    subject = core()
    for number in (1, 2, 3):
        assert subject.add(call(number), 0.0) == ([], [])
    assert subject.expire(IDLE - 0.1, 10) == (0, [])

    due, first = subject.expire(IDLE, 2)
    assert due == 2
    assert [trace.trace_id for trace in first] == [trace_id(1).hex(), trace_id(2).hex()]
    due, rest = subject.expire(IDLE, 2)
    assert due == 1
    assert [trace.trace_id for trace in rest] == [trace_id(3).hex()]
    assert subject.live_traces == 0


def test_an_emitted_trace_carries_its_findings() -> None:
    """Bounds, span count, verdict and edges come with the encoded spans."""
    subject = core()
    subject.add(call(1), 0.0)
    (trace,) = subject.drain(0.0)
    assert (trace.start_ns, trace.end_ns) == (T0, T0 + 50 * MS)
    assert trace.span_count == 2
    assert not trace.late
    assert orjson.loads(trace.verdict) == {"completeness": "complete", "reasons": {}}
    assert trace.edges == [("web", "app", 1, 1, False)]
    assert [(s, first, last) for s, first, last, _ in trace.services] == [
        ("web", T0, T0),
        ("app", T0 + 5 * MS, T0 + 5 * MS),
    ]
    assert sorted(trace.operations) == [("app", "op", "server"), ("web", "op", "client")]


def test_the_operations_of_traces_are_listed_once_with_the_latest_start() -> None:
    subject = core()
    subject.add(call(1, start_ns=T0 + 1_000 * MS), 0.0)
    subject.add(call(2), 0.0)
    subject.add(request_bytes([resource_spans("web", [otlp_span(trace_id(3), b"\x03" * 8)])]), 0.0)
    traces = subject.drain(0.0)
    assert operations_of(traces) == [
        ("app", "op", "server", T0 + 1_000 * MS),
        ("web", "op", "client", T0 + 1_000 * MS),
        ("web", "op", "internal", T0),
    ]
    assert operations_of([]) == []


def test_a_trace_is_one_record_or_a_document_per_span() -> None:
    """The embedded store takes a trace as one packed record holding the trace id and each
    resource once; Elasticsearch a document per span with its id (trace id, span id, kind)
    and its searchable tags. Both carry the same spans."""
    whole, per_span = core(span_documents=False), core(span_documents=True)
    # web again, in a later request: an equal resource, written once.
    from_web_again = request_bytes(
        [resource_spans("web", [otlp_span(trace_id(1), b"\x03" * 8, b"\x01" * 8)])]
    )
    for subject in (whole, per_span):
        subject.add(call(1), 0.0)
        subject.add(from_web_again, 0.0)
    ((one,), (documents,)) = whole.drain(0.0), per_span.drain(0.0)

    assert one.span_documents == []
    record = orjson.loads(unpack_record(one.record))
    assert record["resources"] == [{"service.name": "web"}, {"service.name": "app"}]
    spans = record["spans"]
    assert sorted((s["span_id"], s["kind"], s["service"], s["resource"]) for s in spans) == [
        ("01" * 8, "client", "web", 0),
        ("02" * 8, "server", "app", 1),
        ("03" * 8, "internal", "web", 0),
    ]
    by_id = {document[0]: orjson.loads(document[1]) for document in documents.span_documents}
    assert by_id == {
        trace_id(1).hex() + span["span_id"] + span["kind"][0]: {
            "trace_id": trace_id(1).hex(),
            **span,
            "resource": record["resources"][span["resource"]],
        }
        for span in spans
    }
    server_tags = orjson.loads(documents.span_documents[1][2])
    assert server_tags["error"] == "true"
    assert server_tags["span.kind"] == "server"


def test_a_packed_record_unpacks_to_its_json_and_garbage_is_refused() -> None:
    record = orjson.dumps({"resources": [{}], "spans": [{"span_id": "01" * 8, "resource": 0}]})
    assert unpack_record(pack_record(record)) == record
    packed = pack_record(record)
    for garbage in (b"\xff\xff\xff\x7f" + packed[4:], packed[:-3], b"not lz4 at all"):
        with pytest.raises(ValueError, match="not a packed trace record"):
            unpack_record(garbage)


def test_spans_after_emission_come_out_again_as_a_late_trace() -> None:
    """Within the late window a span for an emitted trace re-emits it whole, marked late."""
    subject = core()
    subject.add(call(1), 0.0)
    subject.expire(IDLE, 10)
    late = otlp_span(trace_id(1), b"\x03" * 8, b"\x02" * 8, start_ns=T0 + 10 * MS)
    subject.add(request_bytes([resource_spans("app", [late])]), IDLE + 1)
    _, (trace,) = subject.expire(2 * IDLE + 1, 10)
    assert trace.late
    assert (trace.span_count, trace.already_emitted) == (3, 2)
    assert subject.counts()["late_spans"] == 1


def test_invalid_ids_and_duplicates_are_counted_and_the_rest_kept() -> None:
    """A span without a valid id is rejected by reason; a span sent twice is kept once."""
    subject = core()
    bad = otlp_span(trace_id(2), b"\x01" * 3)
    rejected, _ = subject.add(request_bytes([resource_spans("web", [bad])]), 0.0)
    assert rejected == [("invalid_span_id", 1)]
    subject.add(call(1), 0.0)
    subject.add(call(1), 0.0)
    (trace,) = subject.drain(0.0)
    assert trace.span_count == 2
    counts = subject.counts()
    assert (counts["spans_in"], counts["duplicate_spans"]) == (4, 2)


def test_bytes_that_are_not_a_request_raise_and_the_core_goes_on() -> None:
    """A request that does not decode is a ValueError for the caller to count; nothing is held."""
    subject = core()
    with pytest.raises(ValueError, match="decode"):
        subject.add(b"\x0a\xff\xff\xff", 0.0)
    assert subject.live_spans == 0
    subject.add(call(1), 0.0)
    assert subject.live_spans == 2


BAD_IDS = [
    ("short trace id", bytes(8), b"\x01" * 8, b""),
    ("zero trace id", bytes(16), b"\x01" * 8, b""),
    ("long span id", trace_id(1), b"\x01" * 9, b""),
    ("zero span id", trace_id(1), bytes(8), b""),
    ("short parent id", trace_id(1), b"\x01" * 8, b"\x02" * 4),
]


@pytest.mark.parametrize(
    ("case", "bad_trace_id", "span_id", "parent_id"), BAD_IDS, ids=[row[0] for row in BAD_IDS]
)
def test_the_core_decodes_and_checks_ids_as_the_receivers_python_decoder_does(
    case: str, bad_trace_id: bytes, span_id: bytes, parent_id: bytes
) -> None:
    """The collector's receivers decode OTLP protobuf with the core: the sender must get
    the same partial_success (count and message) as from the agent's receivers."""
    fine = otlp_span(trace_id(2), b"\x03" * 8, name="fine")
    bad = otlp_span(bad_trace_id, span_id, parent_id)
    body = request_bytes([resource_spans("web", [bad, fine]), resource_spans("app", [bad])])
    by_core = decode_request(body)
    by_python = decode_checked_protobuf(body)
    assert (by_core.spans, by_core.rejected, by_core.reason) == (
        by_python.spans,
        by_python.rejected,
        by_python.reason,
    )
    assert (by_core.spans, by_core.rejected) == (1, 2)
    subject = core()
    woken, wake = socket.socketpair()
    with woken, wake:
        queue = IntakeQueue(100, wake.fileno())
        assert queue.push(by_core.batch) == "accepted"
        with pytest.raises(ValueError, match="already"):
            queue.push(by_core.batch)
        assert subject.add_queued(queue, 0.0, 10) == (1, [])
    assert subject.live_spans == 1


def test_bytes_that_are_not_a_request_are_a_payload_error_for_the_receiver() -> None:
    with pytest.raises(PayloadError, match="not a protobuf ExportTraceServiceRequest"):
        decode_request(b"\x0a\xff\xff\xff")


def test_past_max_live_traces_the_oldest_is_emitted_early_and_reported() -> None:
    """The bound forces the oldest trace out at once (returned by add) and is reported once."""
    subject = core(max_live_traces=2)
    subject.add(call(1), 0.0)
    subject.add(call(2), 1.0)
    assert subject.take_bounds_report() is None
    _, forced = subject.add(call(3), 2.0)
    assert [trace.trace_id for trace in forced] == [trace_id(1).hex()]
    report = subject.take_bounds_report()
    assert report is not None
    assert report["emitted_early_for_traces"] == 1
    assert subject.take_bounds_report() is None
    assert dict(subject.counts()["emitted"])["max_live_traces"] == 1
