"""Intake: OTLP `ResourceSpans` unpacked into the collector's `Span`s, in one pass.

This is the only place the collector reads protobuf. Ids become lowercase hex strings
(the form logs carry in `trace.id` and Jaeger's API speaks); attribute values become plain
Python values; the resource's attributes are converted once per `ResourceSpans` and the
one dict is shared by all its spans (nobody mutates a resource after intake).

Bad spans are refused one by one and counted by reason; the rest of the batch flows on.
What OTLP calls invalid (opentelemetry-proto `trace/v1/trace.proto`):

- a trace id that is not 16 bytes, or is all zeros;
- a span id that is not 8 bytes, or is all zeros;
- a parent span id that is neither empty (a root) nor 8 bytes. An all-zero parent id is
  read as "no parent", as the OpenTelemetry SDKs write it for roots.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import orjson
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans
from opentelemetry.proto.trace.v1.trace_pb2 import Span as OtlpSpan

from observer.collector.model import (
    Attributes,
    AttributeValue,
    Span,
    SpanEvent,
    SpanKind,
    SpanLink,
    StatusCode,
)

# OTLP's enum numbers, in order (trace.proto `Span.SpanKind`, `Status.StatusCode`).
_KINDS = (
    SpanKind.UNSPECIFIED,
    SpanKind.INTERNAL,
    SpanKind.SERVER,
    SpanKind.CLIENT,
    SpanKind.PRODUCER,
    SpanKind.CONSUMER,
)
_STATUSES = (StatusCode.UNSET, StatusCode.OK, StatusCode.ERROR)

_ZERO_TRACE_ID = bytes(16)
_ZERO_SPAN_ID = bytes(8)

# The OpenTelemetry SDKs' default when a resource has no `service.name`.
UNKNOWN_SERVICE = "unknown_service"
# Where the instrumentation scope goes, by the name Jaeger's OTLP translator uses.
SCOPE_NAME = "otel.scope.name"
SCOPE_VERSION = "otel.scope.version"


@dataclass(slots=True)
class Intake:
    """The spans of a batch, and how many were refused for which reason."""

    spans: list[Span] = field(default_factory=list)
    rejected: Counter[str] = field(default_factory=Counter)


def unpack_resource_spans(batch: Iterable[ResourceSpans]) -> Intake:
    """Convert a batch of OTLP `ResourceSpans` into `Span`s, refusing invalid ones."""
    result = Intake()
    spans = result.spans
    rejected = result.rejected
    # Spans of one trace share one id string: less memory while they wait for assembly.
    trace_ids: dict[bytes, str] = {}
    for resource_spans in batch:
        resource = attributes(resource_spans.resource.attributes)
        service = resource.get("service.name")
        if not isinstance(service, str) or not service:
            service = UNKNOWN_SERVICE
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope
            for raw in scope_spans.spans:
                raw_trace_id = raw.trace_id
                trace_id = trace_ids.get(raw_trace_id)
                if trace_id is None:
                    if len(raw_trace_id) != 16 or raw_trace_id == _ZERO_TRACE_ID:
                        rejected["invalid_trace_id"] += 1
                        continue
                    trace_id = trace_ids[raw_trace_id] = raw_trace_id.hex()
                raw_span_id = raw.span_id
                if len(raw_span_id) != 8 or raw_span_id == _ZERO_SPAN_ID:
                    rejected["invalid_span_id"] += 1
                    continue
                raw_parent = raw.parent_span_id
                if not raw_parent or raw_parent == _ZERO_SPAN_ID:
                    parent = ""
                elif len(raw_parent) == 8:
                    parent = raw_parent.hex()
                else:
                    rejected["invalid_parent_span_id"] += 1
                    continue
                span_attributes = attributes(raw.attributes)
                if scope.name:
                    span_attributes[SCOPE_NAME] = scope.name
                    if scope.version:
                        span_attributes[SCOPE_VERSION] = scope.version
                kind = raw.kind
                status = raw.status
                spans.append(
                    Span(
                        trace_id=trace_id,
                        span_id=raw_span_id.hex(),
                        parent_span_id=parent,
                        name=raw.name,
                        kind=_KINDS[kind] if 0 <= kind < 6 else SpanKind.UNSPECIFIED,
                        start_ns=raw.start_time_unix_nano,
                        end_ns=raw.end_time_unix_nano,
                        service=service,
                        status=_STATUSES[status.code] if 0 <= status.code < 3 else StatusCode.UNSET,
                        status_message=status.message,
                        attributes=span_attributes,
                        resource=resource,
                        events=[
                            SpanEvent(
                                event.time_unix_nano, event.name, attributes(event.attributes)
                            )
                            for event in raw.events
                        ]
                        if raw.events
                        else [],
                        links=[_link(link) for link in raw.links] if raw.links else [],
                    )
                )
    return result


def _link(link: OtlpSpan.Link) -> SpanLink:
    return SpanLink(link.trace_id.hex(), link.span_id.hex(), attributes(link.attributes))


def attributes(key_values: Sequence[KeyValue]) -> Attributes:
    """OTLP key-values as a dict; values with nothing set (OTLP's empty value) are left out."""
    result: Attributes = {}
    for key_value in key_values:
        any_value = key_value.value
        # Most values are strings: read those without the general path's call.
        if any_value.WhichOneof("value") == "string_value":
            result[key_value.key] = any_value.string_value
            continue
        value = _value(any_value)
        if value is not None:
            result[key_value.key] = value
    return result


def _value(value: AnyValue) -> AttributeValue | None:
    which = value.WhichOneof("value")
    if which == "string_value":
        return value.string_value
    if which == "int_value":
        return value.int_value
    if which == "bool_value":
        return value.bool_value
    if which == "double_value":
        return value.double_value
    if which == "array_value":
        items: list[str | bool | int | float] = []
        for item in value.array_value.values:
            converted = _value(item)
            if isinstance(converted, list):
                # Arrays of arrays have no place in Jaeger's or Elasticsearch's model of a
                # tag; they keep their content as JSON text.
                items.append(orjson.dumps(converted).decode())
            elif converted is not None:
                items.append(converted)
        return items
    if which == "kvlist_value":
        # A map becomes its JSON text, as the OpenTelemetry Collector's Jaeger translator
        # writes it (pkg/translator/jaeger): one tag, searchable by its text.
        return orjson.dumps(_plain_map(value)).decode()
    if which == "bytes_value":
        # OTLP/JSON writes bytes as base64 (the proto3 JSON mapping); so do we.
        return base64.b64encode(value.bytes_value).decode()
    return None


def _plain(value: AnyValue) -> object:
    if value.WhichOneof("value") == "kvlist_value":
        return _plain_map(value)
    if value.WhichOneof("value") == "array_value":
        return [_plain(item) for item in value.array_value.values]
    return _value(value)


def _plain_map(value: AnyValue) -> dict[str, object]:
    return {item.key: _plain(item.value) for item in value.kvlist_value.values}
