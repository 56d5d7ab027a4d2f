"""Routing spans cut from the bytes they arrived in (`otlp.EncodedBatch`)."""

from __future__ import annotations

import random

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from observer.agent.spans.ring import HashRing
from observer.agent.spans.route import Pieces, route, route_encoded, route_messages
from observer.protocols.otlp import EncodedBatch, WireError, check_ids

REPLICAS = ["10.0.0.1:4317", "10.0.0.2:4317", "10.0.0.3:4317"]


def request(seed: int = 3) -> bytes:
    """Two resources; the first has a scope of many traces and a scope of one trace."""
    generator = random.Random(seed)
    message = ExportTraceServiceRequest()
    for service in ("web", "db"):
        resource = message.resource_spans.add(schema_url="https://opentelemetry.io/schemas/1.24")
        resource.resource.attributes.add(key="service.name").value.string_value = service
        mixed = resource.scope_spans.add(schema_url="https://example.test/scope")
        mixed.scope.name = f"{service}-lib"
        for _ in range(40):
            mixed.spans.add(
                trace_id=generator.randbytes(16), span_id=generator.randbytes(8), name="GET"
            )
        if service == "web":
            whole = resource.scope_spans.add()
            whole.scope.name = "one-trace"
            trace_id = generator.randbytes(16)
            for _ in range(3):
                whole.spans.add(trace_id=trace_id, span_id=generator.randbytes(8), name="q")
    return message.SerializeToString()


def decoded(pieces: Pieces) -> dict[int, tuple[ExportTraceServiceRequest, int]]:
    return {
        owner: (ExportTraceServiceRequest.FromString(b"".join(parts)), spans)
        for owner, (parts, spans) in pieces.items()
    }


def test_cut_from_bytes_equals_the_message_way() -> None:
    """Pieces cut from the request bytes decode to what copying the messages gives,
    including a resource changed after decoding (pod identity)."""
    ring = HashRing(REPLICAS)
    body = request()
    batch = check_ids(ExportTraceServiceRequest.FromString(body).resource_spans, body).batch
    assert isinstance(batch, EncodedBatch)
    pod = KeyValue(key="k8s.pod.name", value=AnyValue(string_value="web-1"))
    batch[0].resource.attributes.append(pod)
    from_bytes = decoded(route_encoded(batch, ring))
    from_messages = decoded(route_messages(batch, ring))
    assert from_bytes == from_messages
    assert sum(spans for _, spans in from_bytes.values()) == 83


def test_batch_whose_spans_changed_is_routed_from_its_messages() -> None:
    """A span removed after decoding breaks the match with the bytes; the messages are used."""
    ring = HashRing(REPLICAS)
    body = request()
    batch = EncodedBatch(ExportTraceServiceRequest.FromString(body).resource_spans, body)
    del batch[1].scope_spans[0].spans[0]
    with pytest.raises(WireError):
        route_encoded(batch, ring)
    routed = decoded(route(batch, ring))
    assert sum(spans for _, spans in routed.values()) == 82
    for owner, (message, spans) in routed.items():
        found = [s for r in message.resource_spans for sc in r.scope_spans for s in sc.spans]
        assert len(found) == spans
        assert all(ring.index(span.trace_id) == owner for span in found)


def test_rejected_spans_leave_a_plain_batch() -> None:
    """check_ids keeps the bytes only when it removed nothing."""
    message = ExportTraceServiceRequest.FromString(request())
    message.resource_spans[0].scope_spans[0].spans[0].trace_id = bytes(16)
    body = message.SerializeToString()
    checked = check_ids(ExportTraceServiceRequest.FromString(body).resource_spans, body)
    assert checked.rejected == 1
    assert not isinstance(checked.batch, EncodedBatch)
