"""Traces to store and query: the shop of the issue (frontend → checkout → payments,
payments failing), and the trace core that encodes them for a store.

A fixture builds a `Trace` the way it should come back from a store: spans after
reconstruction (a skewed child already moved and marked), the verdict and the edges.
`TraceEmitter` sends its spans as their senders did (skew adjustments undone) through a
real trace core, which reconstructs, judges and encodes them; so a store test checks the
core's encoding and the store's decoding together.
"""

from __future__ import annotations

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Status
from opentelemetry.proto.trace.v1.trace_pb2 import Span as OtlpSpan

from observer.collector._core import EncodedTrace
from observer.collector.model import (
    Attributes,
    AttributeValue,
    Edge,
    Span,
    SpanEvent,
    SpanKind,
    SpanLink,
    StatusCode,
    Trace,
    Verdict,
)
from observer.collector.pipeline import trace_core
from observer.collector.store import NS_PER_S
from observer.config import CollectorConfig, parse

BASE_NS = 1_790_000_000 * NS_PER_S
"""A fixed instant (2026-09-21T13:33:20Z); every span starts at an offset from it."""
MS = 1_000_000


def trace_id(number: int) -> str:
    return f"{number:032x}"


def span_id(number: int) -> str:
    return f"{number:016x}"


def make_span(
    trace: int,
    span: int,
    parent: int | None = None,
    service: str = "frontend",
    name: str = "GET /",
    kind: SpanKind = SpanKind.SERVER,
    start_ms: float = 0,
    duration_ms: float = 10,
    status: StatusCode = StatusCode.UNSET,
    attributes: Attributes | None = None,
    resource: Attributes | None = None,
    **fields: object,
) -> Span:
    start = BASE_NS + int(start_ms * MS)
    return Span(
        trace_id=trace_id(trace),
        span_id=span_id(span),
        parent_span_id=span_id(parent) if parent is not None else "",
        name=name,
        kind=kind,
        start_ns=start,
        end_ns=start + int(duration_ms * MS),
        service=service,
        status=status,
        attributes=attributes or {},
        resource=resource or {"service.name": service},
        **fields,
    )


def shop_trace(number: int, start_ms: float = 0, payments_fail: bool = True) -> Trace:
    """frontend → checkout → payments over HTTP, checkout also querying its database."""
    base = number * 100
    status = StatusCode.ERROR if payments_fail else StatusCode.OK
    spans = [
        make_span(number, base + 1, None, "frontend", "GET /checkout", SpanKind.SERVER,
                  start_ms, 120, attributes={"http.route": "/checkout", "http.status_code": 200},
                  resource={"service.name": "frontend", "k8s.namespace.name": "shop"}),
        make_span(number, base + 2, base + 1, "frontend", "POST", SpanKind.CLIENT,
                  start_ms + 5, 100, attributes={"server.address": "checkout"}),
        make_span(number, base + 3, base + 2, "checkout", "POST /orders", SpanKind.SERVER,
                  start_ms + 10, 90, attributes={"http.route": "/orders"}),
        make_span(number, base + 4, base + 3, "checkout", "SELECT orders", SpanKind.CLIENT,
                  start_ms + 12, 3, attributes={"db.system": "postgresql"}),
        make_span(number, base + 5, base + 3, "checkout", "POST", SpanKind.CLIENT,
                  start_ms + 20, 60, status=status),
        make_span(number, base + 6, base + 5, "payments", "POST /pay", SpanKind.SERVER,
                  start_ms + 25, 50, status=status,
                  status_message="card declined" if payments_fail else "",
                  attributes={"http.route": "/pay",
                              "http.status_code": 502 if payments_fail else 200},
                  events=[SpanEvent(BASE_NS + int((start_ms + 30) * MS), "exception",
                                    {"exception.type": "CardDeclined"})]
                  if payments_fail else []),
    ]  # fmt: skip
    errors = 1 if payments_fail else 0
    edges = [
        Edge("frontend", "checkout", calls=1),
        Edge("checkout", "postgresql", calls=1, virtual=True),
        Edge("checkout", "payments", calls=1, errors=errors),
    ]
    return Trace(trace_id(number), spans, edges=edges)


def rich_trace(number: int) -> Trace:
    """One trace using every field a span can carry, partial (an orphan), with a skew-adjusted child."""
    root = make_span(
        number,
        1,
        None,
        "gateway",
        "GET /items",
        attributes={
            "http.status_code": 200,
            "ratio": 0.25,
            "cached": False,
            "tags": ["a", "b"],
            "sizes": [1, 2],
        },
        resource={"service.name": "gateway", "host.name": "node-a"},
        events=[SpanEvent(BASE_NS + 2 * MS, "retry", {"attempt": 2})],
        links=[SpanLink(trace_id(number + 1), span_id(7), {"reason": "batch"})],
    )
    # Sent starting 1.5 ms before its parent by a clock that runs behind, and longer than
    # its parent (work it left running): reconstruction moves it to the parent's start.
    child = make_span(
        number,
        2,
        1,
        "items",
        "load",
        SpanKind.INTERNAL,
        start_ms=0,
        duration_ms=12,
        status=StatusCode.ERROR,
        status_message="boom",
        skew_adjustment_ns=1_500_000,
    )
    # Its parent (span 9) never arrived; it calls a peer that sends no spans.
    orphan = make_span(
        number, 3, 9, "items", "GET", SpanKind.CLIENT, start_ms=5,
        attributes={"peer.service": "inventory"},
    )  # fmt: skip
    verdict = Verdict()
    verdict.add("orphan", span_id(3))
    verdict.add("missing_parent", span_id(9))
    return Trace(
        trace_id(number),
        [root, child, orphan],
        verdict=verdict,
        edges=[Edge("items", "inventory", calls=1, virtual=True)],
    )


# --- through the trace core ---------------------------------------------------------------

_KINDS = {
    SpanKind.UNSPECIFIED: OtlpSpan.SPAN_KIND_UNSPECIFIED,
    SpanKind.INTERNAL: OtlpSpan.SPAN_KIND_INTERNAL,
    SpanKind.SERVER: OtlpSpan.SPAN_KIND_SERVER,
    SpanKind.CLIENT: OtlpSpan.SPAN_KIND_CLIENT,
    SpanKind.PRODUCER: OtlpSpan.SPAN_KIND_PRODUCER,
    SpanKind.CONSUMER: OtlpSpan.SPAN_KIND_CONSUMER,
}
_STATUSES = {
    StatusCode.UNSET: Status.STATUS_CODE_UNSET,
    StatusCode.OK: Status.STATUS_CODE_OK,
    StatusCode.ERROR: Status.STATUS_CODE_ERROR,
}


def _any_value(value: AttributeValue) -> AnyValue:
    if isinstance(value, list):
        return AnyValue(array_value=ArrayValue(values=[_any_value(item) for item in value]))
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    return AnyValue(string_value=value)


def _key_values(attributes: Attributes) -> list[KeyValue]:
    return [KeyValue(key=key, value=_any_value(value)) for key, value in attributes.items()]


def _as_sent(span: Span) -> OtlpSpan:
    """The span as its sender sent it: before reconstruction moved it."""
    skew = span.skew_adjustment_ns
    sent = OtlpSpan(
        trace_id=bytes.fromhex(span.trace_id),
        span_id=bytes.fromhex(span.span_id),
        parent_span_id=bytes.fromhex(span.parent_span_id),
        name=span.name,
        kind=_KINDS[span.kind],
        start_time_unix_nano=span.start_ns - skew,
        end_time_unix_nano=span.end_ns - skew,
        attributes=_key_values(span.attributes),
        status=Status(code=_STATUSES[span.status], message=span.status_message),
    )
    for event in span.events:
        sent.events.add(
            time_unix_nano=event.time_ns - skew,
            name=event.name,
            attributes=_key_values(event.attributes),
        )
    for link in span.links:
        sent.links.add(
            trace_id=bytes.fromhex(link.trace_id),
            span_id=bytes.fromhex(link.span_id),
            attributes=_key_values(link.attributes),
        )
    return sent


def export_request(*traces: Trace) -> bytes:
    """The traces' spans as one ExportTraceServiceRequest, a ResourceSpans per resource."""
    by_resource: dict[tuple[tuple[str, str], ...], tuple[Attributes, list[OtlpSpan]]] = {}
    for trace in traces:
        for span in trace.spans:
            key = tuple((k, repr(v)) for k, v in span.resource.items())
            by_resource.setdefault(key, (span.resource, []))[1].append(_as_sent(span))
    request = ExportTraceServiceRequest()
    for resource, spans in by_resource.values():
        resource_spans = ResourceSpans()
        resource_spans.resource.attributes.extend(_key_values(resource))
        resource_spans.scope_spans.add().spans.extend(spans)
        request.resource_spans.append(resource_spans)
    return request.SerializeToString()


def _keep_everything() -> CollectorConfig:
    return parse(
        CollectorConfig,
        "sampling: {probabilistic_share: 1.0, latency_threshold: null}",
        env={},
    )


class TraceEmitter:
    """A trace core that keeps every trace: spans in, the encoded traces out once they go
    quiet. It retains what it emitted, so spans sent again for an emitted trace come out
    as a late re-emission, as in the collector."""

    def __init__(self, span_documents: bool) -> None:
        config = _keep_everything()
        self.core = trace_core(config, span_documents)
        self._quiet = config.assembly.idle_timeout + 1
        self._now = 0.0

    def emit(self, *traces: Trace) -> list[EncodedTrace]:
        rejected, forced = self.core.add(export_request(*traces), self._now)
        assert rejected == []
        assert forced == []
        self._now += self._quiet
        due, emitted = self.core.expire(self._now, 1_000_000)
        assert due == len(emitted) == len({trace.trace_id for trace in traces})
        return emitted


def encoded(span_documents: bool, *traces: Trace) -> list[EncodedTrace]:
    """The traces as a fresh collector would emit them (each write a new trace core, the way
    spans delivered again after a restart arrive)."""
    return TraceEmitter(span_documents).emit(*traces)
