"""Zipkin v2 (JSON and protobuf) converted into OTLP ResourceSpans."""

from __future__ import annotations

import ipaddress
from typing import Any

import orjson
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span, Status

from observer.agent.decode import parse_json_body
from observer.protocols import ZIPKIN_SHARED, ZIPKIN_TRACE_ID_BITS, zipkin
from observer.protocols.otlp import PayloadError, hex_id
from observer.protocols.zipkin_pb2 import ListOfSpans

TRACE_128 = "5af7183fb1d4cf5f4b2c8e0d9a7e6f10"
TRACE_64 = "4b2c8e0d9a7e6f10"


def envoy_pair(trace_id: str = TRACE_128) -> list[dict[str, Any]]:
    """What two Envoy sidecars report for one call: the caller's egress CLIENT span and the
    callee's ingress SERVER span, sharing the span id (B3 without a new id per hop)."""
    return [
        {
            "traceId": trace_id,
            "parentId": "a1b2c3d4e5f60718",
            "id": "0f1e2d3c4b5a6978",
            "kind": "CLIENT",
            "name": "checkout.shop.svc.cluster.local:8080/*",
            "timestamp": 1_700_000_000_000_100,
            "duration": 2_500,
            "localEndpoint": {"serviceName": "frontend.shop", "ipv4": "10.244.1.17"},
            "remoteEndpoint": {"serviceName": "checkout.shop", "ipv4": "10.244.2.9", "port": 8080},
            "tags": {
                "component": "proxy",
                "http.method": "POST",
                "http.status_code": "503",
                "upstream_cluster": "outbound|8080||checkout.shop.svc.cluster.local",
                "error": "true",
            },
            "annotations": [{"timestamp": 1_700_000_000_000_200, "value": "retry"}],
        },
        {
            "traceId": trace_id,
            "parentId": "a1b2c3d4e5f60718",
            "id": "0f1e2d3c4b5a6978",
            "kind": "SERVER",
            "shared": True,
            "name": "checkout.shop.svc.cluster.local:8080/*",
            "timestamp": 1_700_000_000_000_400,
            "duration": 2_000,
            "localEndpoint": {"serviceName": "checkout.shop", "ipv4": "10.244.2.9"},
            "remoteEndpoint": {"ipv4": "10.244.1.17", "port": 45678},
            "tags": {"component": "proxy", "http.method": "POST"},
        },
    ]


def attributes(span: Span) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in span.attributes:
        field = item.value.WhichOneof("value")
        out[item.key] = getattr(item.value, field) if field else None
    return out


def resource_service(resource: ResourceSpans) -> str:
    return next(
        a.value.string_value for a in resource.resource.attributes if a.key == "service.name"
    )


def spans_by_service(resource_spans: list[ResourceSpans]) -> dict[str, list[Span]]:
    return {
        resource_service(resource): [span for scope in resource.scope_spans for span in scope.spans]
        for resource in resource_spans
    }


def to_proto(spans: list[dict[str, Any]]) -> bytes:
    """The same spans as a Zipkin reporter encodes them in protobuf."""
    message = ListOfSpans()
    kinds = {"CLIENT": 1, "SERVER": 2, "PRODUCER": 3, "CONSUMER": 4}
    for item in spans:
        span = message.spans.add()
        span.trace_id = bytes.fromhex(item["traceId"])
        span.id = bytes.fromhex(item["id"])
        if "parentId" in item:
            span.parent_id = bytes.fromhex(item["parentId"])
        span.kind = kinds.get(item.get("kind", ""), 0)
        span.name = item.get("name", "")
        span.timestamp = item.get("timestamp", 0)
        span.duration = item.get("duration", 0)
        span.shared = item.get("shared", False)
        span.tags.update(item.get("tags", {}))
        for annotation in item.get("annotations", []):
            span.annotations.add(timestamp=annotation["timestamp"], value=annotation["value"])
        for key, field in (
            ("localEndpoint", span.local_endpoint),
            ("remoteEndpoint", span.remote_endpoint),
        ):
            endpoint = item.get(key)
            if endpoint is None:
                continue
            field.service_name = endpoint.get("serviceName", "")
            if "ipv4" in endpoint:
                field.ipv4 = ipaddress.IPv4Address(endpoint["ipv4"]).packed
            field.port = endpoint.get("port", 0)
    return message.SerializeToString()


DECODERS = {
    "json": lambda spans: zipkin.decode_json(orjson.dumps(spans)),
    "protobuf": lambda spans: zipkin.decode_protobuf(to_proto(spans)),
}


@pytest.fixture(params=sorted(DECODERS))
def decode(request: pytest.FixtureRequest) -> Any:
    return DECODERS[request.param]


def test_envoy_pair_keeps_the_shared_span_id_on_both_halves(decode: Any) -> None:
    """An Envoy client/server pair keeps one span id, one parent and one 128-bit trace id,
    with only the SERVER half marked shared, so the collector can pair them."""
    checked = decode(envoy_pair())
    by_service = spans_by_service(checked.batch)
    [client] = by_service["frontend.shop"]
    [server] = by_service["checkout.shop"]
    for span in (client, server):
        assert span.trace_id == bytes.fromhex(TRACE_128)
        assert span.span_id == bytes.fromhex("0f1e2d3c4b5a6978")
        assert span.parent_span_id == bytes.fromhex("a1b2c3d4e5f60718")
        assert attributes(span)[ZIPKIN_TRACE_ID_BITS] == 128
    assert (client.kind, server.kind) == (Span.SPAN_KIND_CLIENT, Span.SPAN_KIND_SERVER)
    assert ZIPKIN_SHARED not in attributes(client)
    assert attributes(server)[ZIPKIN_SHARED] is True
    assert checked.spans == 2
    assert checked.rejected == 0


def test_client_span_fields_map_as_the_contrib_receiver_maps_them(decode: Any) -> None:
    """Times become nanoseconds, tags attributes, the remote endpoint peer attributes, the
    `error` tag an ERROR status and annotations events."""
    checked = decode(envoy_pair())
    [client] = spans_by_service(checked.batch)["frontend.shop"]
    assert client.name == "checkout.shop.svc.cluster.local:8080/*"
    assert client.start_time_unix_nano == 1_700_000_000_000_100_000
    assert client.end_time_unix_nano == 1_700_000_000_002_600_000
    assert attributes(client) == {
        "component": "proxy",
        "http.method": "POST",
        "http.status_code": "503",
        "upstream_cluster": "outbound|8080||checkout.shop.svc.cluster.local",
        "network.local.address": "10.244.1.17",
        "peer.service": "checkout.shop",
        "network.peer.address": "10.244.2.9",
        "network.peer.port": 8080,
        ZIPKIN_TRACE_ID_BITS: 128,
    }
    assert client.status.code == Status.STATUS_CODE_ERROR
    assert client.status.message == ""
    assert [(event.name, event.time_unix_nano) for event in client.events] == [
        ("retry", 1_700_000_000_000_200_000)
    ]


def test_64_bit_trace_id_is_left_padded_and_marked_64(decode: Any) -> None:
    """A 64-bit B3 trace id becomes 16 bytes with eight leading zeros, marked 64 bits."""
    checked = decode(envoy_pair(TRACE_64)[:1])
    [[span]] = spans_by_service(checked.batch).values()
    assert span.trace_id == bytes(8) + bytes.fromhex(TRACE_64)
    assert attributes(span)[ZIPKIN_TRACE_ID_BITS] == 64


def test_128_bit_id_with_zero_high_half_is_told_apart_from_a_64_bit_one() -> None:
    """A 32-character trace id whose high half is zero keeps the mark 128."""
    checked = zipkin.decode_json(orjson.dumps(envoy_pair("0" * 16 + TRACE_64)[:1]))
    [[span]] = spans_by_service(checked.batch).values()
    assert attributes(span)[ZIPKIN_TRACE_ID_BITS] == 128


def test_logs_and_zipkin_spans_print_a_64_bit_trace_id_the_same_way() -> None:
    """The hex form of a converted 64-bit trace id is what a log line's `trace.id` holds."""
    checked = zipkin.decode_json(orjson.dumps(envoy_pair(TRACE_64)[:1]))
    [[span]] = spans_by_service(checked.batch).values()
    document: dict[str, Any] = {"log": {}}
    parse_json_body(document, orjson.dumps({"msg": "paid", "traceId": TRACE_64.upper()}).decode())
    assert hex_id(span.trace_id) == document["trace"]["id"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"traceId": "abc"}, "traceId must be 16 or 32 hex characters"),
        ({"traceId": "z" * 32}, "traceId is not hex"),
        ({"id": "0102"}, "id must be 16 hex characters"),
        ({"traceId": "0" * 32}, "must not be all zeros"),
        ({"parentId": "01"}, "parentId must be 16 hex characters"),
    ],
)
def test_span_with_a_malformed_id_is_dropped_alone_with_the_reason(
    change: dict[str, Any], reason: str
) -> None:
    """One span with a bad id is counted as rejected with why; its batch-mate is kept."""
    bad, good = envoy_pair()
    checked = zipkin.decode_json(orjson.dumps([{**bad, **change}, good]))
    assert (checked.spans, checked.rejected) == (1, 1)
    assert reason in checked.reason


@pytest.mark.parametrize(
    ("body", "decoder"),
    [
        (b'{"traceId": "x"}', zipkin.decode_json),
        (b"[{", zipkin.decode_json),
        (b"\xff\xff\xff", zipkin.decode_protobuf),
    ],
)
def test_unreadable_payload_is_refused_whole(body: bytes, decoder: Any) -> None:
    """A body that is not a list of spans raises PayloadError (the receiver's 400)."""
    with pytest.raises(PayloadError):
        decoder(body)


def test_kind_absent_is_unspecified_unless_the_span_kind_tag_says_internal() -> None:
    """No kind gives UNSPECIFIED; the tag `span.kind: internal` gives INTERNAL and is removed."""
    plain, tagged = envoy_pair()
    del plain["kind"], tagged["kind"]
    tagged["tags"] = {"span.kind": "internal"}
    checked = zipkin.decode_json(orjson.dumps([plain, tagged]))
    by_service = spans_by_service(checked.batch)
    [untagged_span] = by_service["frontend.shop"]
    [tagged_span] = by_service["checkout.shop"]
    assert untagged_span.kind == Span.SPAN_KIND_UNSPECIFIED
    assert tagged_span.kind == Span.SPAN_KIND_INTERNAL
    assert "span.kind" not in attributes(tagged_span)


def test_error_tag_with_a_message_becomes_the_status_message() -> None:
    """`error: "connection reset"` gives status ERROR with that message, and no `error` attribute."""
    span = envoy_pair()[0]
    span["tags"] = {"error": "connection reset"}
    checked = zipkin.decode_json(orjson.dumps([span]))
    [[converted]] = spans_by_service(checked.batch).values()
    assert converted.status.code == Status.STATUS_CODE_ERROR
    assert converted.status.message == "connection reset"
    assert "error" not in attributes(converted)


def test_root_span_whose_parent_is_itself_gets_no_parent() -> None:
    """A parentId equal to the span's id (written by some tracers on roots) is dropped."""
    span = envoy_pair()[0]
    span["parentId"] = span["id"]
    checked = zipkin.decode_json(orjson.dumps([span]))
    [[converted]] = spans_by_service(checked.batch).values()
    assert converted.parent_span_id == b""


def test_spans_of_one_service_share_one_resource() -> None:
    """Spans are grouped by local service: one ResourceSpans per service.name."""
    client, server = envoy_pair()
    second_client = {**client, "id": "1111111111111111"}
    checked = zipkin.decode_json(orjson.dumps([client, server, second_client]))
    assert sorted(resource_service(r) for r in checked.batch) == [
        "checkout.shop",
        "frontend.shop",
    ]
    assert len(spans_by_service(checked.batch)["frontend.shop"]) == 2
