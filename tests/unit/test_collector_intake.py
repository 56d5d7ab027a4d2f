"""Intake: OTLP ResourceSpans unpacked into collector spans in one pass."""

from __future__ import annotations

import base64

import orjson
import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.trace.v1.trace_pb2 import Span as OtlpSpan

from observer.collector.intake import UNKNOWN_SERVICE, unpack_resource_spans
from observer.collector.model import SpanKind, StatusCode
from tests.unit.collector_spans import otlp_span, resource_spans

TRACE_ID = bytes.fromhex("4BF92F3577B34DA6A3CE929D0E0E4736")
SPAN_ID = bytes.fromhex("00F067AA0BA902B7")
PARENT_ID = bytes.fromhex("53995C3F42CD8AD8")


def test_ids_become_lowercase_hex_and_resource_attributes_are_kept_beside_the_span() -> None:
    """Ids come out as lowercase hex; service and resource come from the resource."""
    batch = resource_spans(
        "checkout",
        [otlp_span(TRACE_ID, SPAN_ID, PARENT_ID, attributes={"http.route": "/pay"})],
        k8s_namespace_name="shop",
    )
    (span,) = unpack_resource_spans([batch]).spans
    assert (span.trace_id, span.span_id, span.parent_span_id) == (
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "00f067aa0ba902b7",
        "53995c3f42cd8ad8",
    )
    assert span.service == "checkout"
    assert span.resource == {"service.name": "checkout", "k8s.namespace.name": "shop"}
    assert span.attributes == {"http.route": "/pay"}


def test_spans_of_one_resource_share_one_resource_dict() -> None:
    """The resource is converted once per ResourceSpans, not once per span."""
    batch = resource_spans("a", [otlp_span(TRACE_ID, SPAN_ID), otlp_span(TRACE_ID, PARENT_ID)])
    first, second = unpack_resource_spans([batch]).spans
    assert first.resource is second.resource


@pytest.mark.parametrize(
    ("otlp_kind", "kind"),
    [
        (OtlpSpan.SPAN_KIND_UNSPECIFIED, SpanKind.UNSPECIFIED),
        (OtlpSpan.SPAN_KIND_INTERNAL, SpanKind.INTERNAL),
        (OtlpSpan.SPAN_KIND_SERVER, SpanKind.SERVER),
        (OtlpSpan.SPAN_KIND_CLIENT, SpanKind.CLIENT),
        (OtlpSpan.SPAN_KIND_PRODUCER, SpanKind.PRODUCER),
        (OtlpSpan.SPAN_KIND_CONSUMER, SpanKind.CONSUMER),
        (9, SpanKind.UNSPECIFIED),
    ],
)
def test_span_kinds_map_by_their_otlp_numbers(otlp_kind: int, kind: SpanKind) -> None:
    """Each OTLP kind maps to its name; an unknown number is unspecified."""
    batch = resource_spans("a", [otlp_span(TRACE_ID, SPAN_ID, kind=otlp_kind)])
    assert unpack_resource_spans([batch]).spans[0].kind is kind


def test_error_status_and_its_message_are_kept() -> None:
    """An error status arrives as StatusCode.ERROR with its message."""
    raw = otlp_span(TRACE_ID, SPAN_ID, error=True)
    raw.status.message = "card declined"
    (span,) = unpack_resource_spans([resource_spans("a", [raw])]).spans
    assert (span.status, span.status_message) == (StatusCode.ERROR, "card declined")


def test_a_resource_without_service_name_gets_the_sdk_default() -> None:
    """No service.name gives `unknown_service`, as the OpenTelemetry SDKs default it."""
    (span,) = unpack_resource_spans([resource_spans(None, [otlp_span(TRACE_ID, SPAN_ID)])]).spans
    assert span.service == UNKNOWN_SERVICE


def test_an_all_zero_parent_id_is_a_root() -> None:
    """A parent id of eight zero bytes means no parent."""
    batch = resource_spans("a", [otlp_span(TRACE_ID, SPAN_ID, bytes(8))])
    assert unpack_resource_spans([batch]).spans[0].parent_span_id == ""


@pytest.mark.parametrize(
    ("trace_id", "span_id", "parent", "reason"),
    [
        (bytes(16), SPAN_ID, b"", "invalid_trace_id"),
        (TRACE_ID[:8], SPAN_ID, b"", "invalid_trace_id"),
        (TRACE_ID, bytes(8), b"", "invalid_span_id"),
        (TRACE_ID, SPAN_ID[:4], b"", "invalid_span_id"),
        (TRACE_ID, SPAN_ID, b"\x01\x02\x03", "invalid_parent_span_id"),
    ],
)
def test_a_span_with_an_invalid_id_is_refused_alone_and_counted(
    trace_id: bytes, span_id: bytes, parent: bytes, reason: str
) -> None:
    """An invalid id drops that span with a counted reason; the valid span beside it flows."""
    batch = resource_spans(
        "a", [otlp_span(trace_id, span_id, parent), otlp_span(TRACE_ID, PARENT_ID)]
    )
    result = unpack_resource_spans([batch])
    assert [span.span_id for span in result.spans] == [PARENT_ID.hex()]
    assert result.rejected == {reason: 1}


def test_attribute_values_of_every_otlp_type_become_plain_values() -> None:
    """Scalars stay typed, arrays become lists, maps JSON text, bytes base64."""
    raw = otlp_span(TRACE_ID, SPAN_ID, attributes={"s": "x", "i": 7, "f": 0.5, "b": True})
    raw.attributes.append(
        KeyValue(
            key="list",
            value=AnyValue(
                array_value=ArrayValue(values=[AnyValue(string_value="a"), AnyValue(int_value=2)])
            ),
        )
    )
    raw.attributes.append(
        KeyValue(
            key="map",
            value=AnyValue(
                kvlist_value=KeyValueList(
                    values=[KeyValue(key="k", value=AnyValue(string_value="v"))]
                )
            ),
        )
    )
    raw.attributes.append(KeyValue(key="raw", value=AnyValue(bytes_value=b"\x00\xff")))
    raw.attributes.append(KeyValue(key="empty", value=AnyValue()))
    (span,) = unpack_resource_spans([resource_spans("a", [raw])]).spans
    assert span.attributes == {
        "s": "x",
        "i": 7,
        "f": 0.5,
        "b": True,
        "list": ["a", 2],
        "map": orjson.dumps({"k": "v"}).decode(),
        "raw": base64.b64encode(b"\x00\xff").decode(),
    }


def test_the_instrumentation_scope_travels_as_attributes() -> None:
    """The scope's name is kept as `otel.scope.name`, as Jaeger's OTLP translator keeps it."""
    batch = resource_spans("a", [otlp_span(TRACE_ID, SPAN_ID)], scope="aiohttp.server")
    assert unpack_resource_spans([batch]).spans[0].attributes["otel.scope.name"] == "aiohttp.server"


def test_events_and_links_are_converted() -> None:
    """Events keep time, name and attributes; links keep their ids as hex."""
    raw = otlp_span(TRACE_ID, SPAN_ID)
    event = raw.events.add()
    event.time_unix_nano = 123
    event.name = "exception"
    event.attributes.append(KeyValue(key="exception.type", value=AnyValue(string_value="E")))
    link = raw.links.add()
    link.trace_id = TRACE_ID
    link.span_id = PARENT_ID
    (span,) = unpack_resource_spans([resource_spans("a", [raw])]).spans
    assert [(e.time_ns, e.name, e.attributes) for e in span.events] == [
        (123, "exception", {"exception.type": "E"})
    ]
    assert [(link.trace_id, link.span_id) for link in span.links] == [
        (TRACE_ID.hex(), PARENT_ID.hex())
    ]
