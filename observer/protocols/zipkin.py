"""Zipkin v2 spans (JSON and protobuf, `POST /api/v2/spans`) converted into OTLP ResourceSpans.

The mapping is the OpenTelemetry Collector contrib's Zipkin receiver's
(`pkg/translator/zipkin/zipkinv2/to_translator.go`), with today's semantic convention
names:

| Zipkin                         | OTLP                                                    |
| ------------------------------ | ------------------------------------------------------- |
| localEndpoint.serviceName      | resource `service.name` (spans grouped by it)            |
| localEndpoint ipv4/ipv6, port  | `network.local.address`, `network.local.port`            |
| remoteEndpoint.serviceName     | `peer.service`                                           |
| remoteEndpoint ipv4/ipv6, port | `network.peer.address`, `network.peer.port`              |
| kind CLIENT/SERVER/PRODUCER/CONSUMER | the same kind; absent: UNSPECIFIED, or INTERNAL when the tag `span.kind` says so |
| timestamp, duration (µs)       | start and end (ns)                                       |
| tags                           | string attributes                                        |
| tag `error`                    | status ERROR, its value (unless "true") the message      |
| tags `otel.status_code`, `otel.status_description` | the status they name                 |
| tag `otel.scope.name`/`otel.library.name` (and version) | the instrumentation scope       |
| tag `w3c.tracestate`           | trace_state                                              |
| annotations                    | events (name = value)                                    |
| parentId equal to id           | no parent (some tracers write that on root spans)        |

What OTLP has no field for travels as attributes (see `observer.protocols`): `shared`
becomes `observer.zipkin.shared: true` on the SERVER half of a shared span id, and the
trace id's bit length `observer.zipkin.trace_id_bits` (64 or 128), a 64-bit B3 id being
left-padded with zeros to 16 bytes, so the pairing survives and ids print as logs print
them. `debug` is not kept.

A payload that cannot be read as a list of spans is refused whole (the Zipkin server
answers 400). A span whose ids are malformed is dropped alone and counted: Zipkin's API
has no partial-success answer, so the rest of the batch is accepted (202).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from google.protobuf.message import DecodeError as ProtobufDecodeError
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from observer.protocols import ZIPKIN_SHARED, ZIPKIN_TRACE_ID_BITS
from observer.protocols.otlp import Checked, PayloadError
from observer.protocols.zipkin_pb2 import ListOfSpans

_KINDS = {
    "CLIENT": Span.SPAN_KIND_CLIENT,
    "SERVER": Span.SPAN_KIND_SERVER,
    "PRODUCER": Span.SPAN_KIND_PRODUCER,
    "CONSUMER": Span.SPAN_KIND_CONSUMER,
}
# zipkin.proto3.Span.Kind numbers to names.
_PROTO_KINDS = {1: "CLIENT", 2: "SERVER", 3: "PRODUCER", 4: "CONSUMER"}
_STATUS_CODES = {
    "OK": Status.STATUS_CODE_OK,
    "STATUS_CODE_OK": Status.STATUS_CODE_OK,
    "ERROR": Status.STATUS_CODE_ERROR,
    "STATUS_CODE_ERROR": Status.STATUS_CODE_ERROR,
    "UNSET": Status.STATUS_CODE_UNSET,
    "STATUS_CODE_UNSET": Status.STATUS_CODE_UNSET,
}
_SCOPE_NAME_TAGS = ("otel.scope.name", "otel.library.name")
_SCOPE_VERSION_TAGS = ("otel.scope.version", "otel.library.version")


class _SpanError(ValueError):
    """One span that cannot be converted; the others of its batch still are."""


# --- the two encodings, read into one neutral shape --------------------------------------


def decode_json(body: bytes) -> Checked[list[ResourceSpans]]:
    """Zipkin v2 JSON (`application/json`): a list of span objects."""
    try:
        tree = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise PayloadError(f"not JSON: {error}") from None
    if not isinstance(tree, list):
        raise PayloadError("Zipkin v2 JSON: expected a list of spans")
    return _convert(tree, _json_span)


def decode_protobuf(body: bytes) -> Checked[list[ResourceSpans]]:
    """Zipkin v2 protobuf (`application/x-protobuf`): a `zipkin.proto3.ListOfSpans`."""
    try:
        message = ListOfSpans.FromString(body)
    except ProtobufDecodeError as error:
        raise PayloadError(f"not a protobuf zipkin.proto3.ListOfSpans: {error}") from None
    return _convert(message.spans, _proto_span)


def _json_span(item: Any) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise _SpanError("a span must be a JSON object")
    trace_hex = item.get("traceId")
    if not isinstance(trace_hex, str) or len(trace_hex) not in (16, 32):
        raise _SpanError("traceId must be 16 or 32 hex characters")
    span = dict(item)
    span["traceId"] = _from_hex(trace_hex, "traceId")
    span["id"] = _span_id(item.get("id"), "id")
    parent = item.get("parentId")
    span["parentId"] = _span_id(parent, "parentId") if parent else b""
    for key in ("localEndpoint", "remoteEndpoint"):
        endpoint = item.get(key)
        span[key] = endpoint if isinstance(endpoint, dict) else None
    return span


def _proto_span(message: Any) -> dict[str, Any]:
    if len(message.trace_id) not in (8, 16):
        raise _SpanError("trace_id must be 8 or 16 bytes")
    if len(message.id) != 8:
        raise _SpanError("id must be 8 bytes")
    if len(message.parent_id) not in (0, 8):
        raise _SpanError("parent_id must be empty or 8 bytes")
    span: dict[str, Any] = {
        "traceId": message.trace_id,
        "id": message.id,
        "parentId": message.parent_id,
        "kind": _PROTO_KINDS.get(message.kind),
        "name": message.name,
        "timestamp": message.timestamp,
        "duration": message.duration,
        "tags": dict(message.tags),
        "shared": message.shared,
        "annotations": [{"timestamp": a.timestamp, "value": a.value} for a in message.annotations],
        "localEndpoint": None,
        "remoteEndpoint": None,
    }
    for key, field in (("localEndpoint", "local_endpoint"), ("remoteEndpoint", "remote_endpoint")):
        if message.HasField(field):
            endpoint = getattr(message, field)
            span[key] = {
                "serviceName": endpoint.service_name,
                "ipv4": str(ipaddress.IPv4Address(endpoint.ipv4))
                if len(endpoint.ipv4) == 4
                else "",
                "ipv6": str(ipaddress.IPv6Address(endpoint.ipv6))
                if len(endpoint.ipv6) == 16
                else "",
                "port": endpoint.port,
            }
    return span


def _from_hex(value: str, field: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise _SpanError(f"{field} is not hex: {value!r}") from None


def _span_id(value: Any, field: str) -> bytes:
    if not isinstance(value, str) or len(value) != 16:
        raise _SpanError(f"{field} must be 16 hex characters")
    return _from_hex(value, field)


# --- conversion --------------------------------------------------------------------------


def _convert(
    items: Iterable[Any], read: Callable[[Any], dict[str, Any]]
) -> Checked[list[ResourceSpans]]:
    """Spans grouped into one ResourceSpans per local service and one ScopeSpans per scope."""
    resources: dict[str, ResourceSpans] = {}
    scopes: dict[tuple[str, str, str], ScopeSpans] = {}
    spans = 0
    rejected = 0
    reason = ""
    for item in items:
        try:
            zipkin_span = read(item)
            if not any(zipkin_span["traceId"]) or not any(zipkin_span["id"]):
                raise _SpanError("trace and span ids must not be all zeros")
        except _SpanError as error:
            rejected += 1
            reason = reason or str(error)
            continue
        tags = {str(key): str(value) for key, value in (zipkin_span.get("tags") or {}).items()}
        local = zipkin_span["localEndpoint"] or {}
        service = str(local.get("serviceName") or "")
        scope_name = _pop_first(tags, _SCOPE_NAME_TAGS)
        scope_version = _pop_first(tags, _SCOPE_VERSION_TAGS)
        scope = scopes.get((service, scope_name, scope_version))
        if scope is None:
            resource = resources.get(service)
            if resource is None:
                resource = resources[service] = ResourceSpans()
                if service:
                    resource.resource.attributes.append(_string("service.name", service))
            scope = scopes[(service, scope_name, scope_version)] = resource.scope_spans.add()
            scope.scope.name = scope_name
            scope.scope.version = scope_version
        _fill_span(scope.spans.add(), zipkin_span, tags, local)
        spans += 1
    return Checked(list(resources.values()), spans, rejected, reason)


def _fill_span(
    span: Span, zipkin: dict[str, Any], tags: dict[str, str], local: dict[str, Any]
) -> None:
    trace_id: bytes = zipkin["traceId"]
    span.trace_id = trace_id.rjust(16, b"\0")
    span.span_id = zipkin["id"]
    parent = zipkin["parentId"]
    if parent and parent != zipkin["id"]:
        span.parent_span_id = parent
    span.name = str(zipkin.get("name") or "")
    kind = _KINDS.get(str(zipkin.get("kind") or "").upper())
    tag_kind = tags.pop("span.kind", "")
    if kind is None:
        kind = Span.SPAN_KIND_INTERNAL if tag_kind == "internal" else Span.SPAN_KIND_UNSPECIFIED
    span.kind = kind
    timestamp_us = _non_negative_int(zipkin.get("timestamp"))
    duration_us = _non_negative_int(zipkin.get("duration"))
    span.start_time_unix_nano = timestamp_us * 1000
    span.end_time_unix_nano = (timestamp_us + duration_us) * 1000
    trace_state = tags.pop("w3c.tracestate", "")
    if trace_state:
        span.trace_state = trace_state
    _fill_status(span, tags)

    attributes = [_string(key, value) for key, value in tags.items()]
    _endpoint_attributes(attributes, local, "network.local")
    remote = zipkin["remoteEndpoint"] or {}
    if remote.get("serviceName"):
        attributes.append(_string("peer.service", str(remote["serviceName"])))
    _endpoint_attributes(attributes, remote, "network.peer")
    attributes.append(_int(ZIPKIN_TRACE_ID_BITS, len(trace_id) * 8))
    if zipkin.get("shared") is True:
        attributes.append(KeyValue(key=ZIPKIN_SHARED, value=AnyValue(bool_value=True)))
    span.attributes.extend(attributes)

    for annotation in zipkin.get("annotations") or ():
        if isinstance(annotation, dict):
            event = span.events.add()
            event.time_unix_nano = _non_negative_int(annotation.get("timestamp")) * 1000
            event.name = str(annotation.get("value") or "")


def _fill_status(span: Span, tags: dict[str, str]) -> None:
    code = tags.pop("otel.status_code", None)
    description = tags.pop("otel.status_description", "")
    if code is not None and code.upper() in _STATUS_CODES:
        span.status.code = _STATUS_CODES[code.upper()]
        if span.status.code == Status.STATUS_CODE_ERROR:
            span.status.message = description
    # Zipkin's convention: an `error` tag marks a failed span; its value is the message
    # (instrumentations that have none write "true", Envoy among them).
    error = tags.pop("error", None)
    if error is not None:
        span.status.code = Status.STATUS_CODE_ERROR
        if error and error.lower() != "true" and not span.status.message:
            span.status.message = error


def _endpoint_attributes(attributes: list[KeyValue], endpoint: dict[str, Any], prefix: str) -> None:
    address = endpoint.get("ipv4") or endpoint.get("ipv6")
    if address:
        attributes.append(_string(f"{prefix}.address", str(address)))
    port = endpoint.get("port")
    if isinstance(port, int) and port > 0:
        attributes.append(_int(f"{prefix}.port", port))


def _pop_first(tags: dict[str, str], keys: tuple[str, ...]) -> str:
    found = ""
    for key in keys:
        value = tags.pop(key, "")
        found = found or value
    return found


def _non_negative_int(value: Any) -> int:
    return value if isinstance(value, int) and value > 0 else 0


def _string(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def _int(key: str, value: int) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(int_value=value))
