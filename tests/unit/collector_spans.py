"""Builders for the collector's unit tests: OTLP batches, spans, and a clock tests drive."""

from __future__ import annotations

from dataclasses import dataclass

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Status
from opentelemetry.proto.trace.v1.trace_pb2 import Span as OtlpSpan

from observer.collector.model import Attributes, Span, SpanKind, StatusCode

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
MS = 1_000_000
T0 = 1_700_000_000_000_000_000


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def span(
    span_id: str,
    parent: str = "",
    *,
    service: str = "svc",
    kind: SpanKind = SpanKind.INTERNAL,
    start_ms: float = 0,
    end_ms: float = 10,
    trace_id: str = TRACE,
    name: str = "op",
    error: bool = False,
    attributes: Attributes | None = None,
    resource: Attributes | None = None,
) -> Span:
    """A collector span; ids are short hex strings padded to 16 characters."""
    return Span(
        trace_id=trace_id,
        span_id=span_id.rjust(16, "0"),
        parent_span_id=parent.rjust(16, "0") if parent else "",
        name=name,
        kind=kind,
        start_ns=T0 + int(start_ms * MS),
        end_ns=T0 + int(end_ms * MS),
        service=service,
        status=StatusCode.ERROR if error else StatusCode.UNSET,
        attributes=dict(attributes or {}),
        resource={"service.name": service, **(resource or {})},
    )


def sid(short: str) -> str:
    return short.rjust(16, "0")


def key_value(key: str, value: object) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


def otlp_span(
    trace_id: bytes,
    span_id: bytes,
    parent: bytes = b"",
    *,
    name: str = "op",
    kind: int = OtlpSpan.SPAN_KIND_INTERNAL,
    start_ns: int = T0,
    end_ns: int = T0 + 10 * MS,
    error: bool = False,
    attributes: dict[str, object] | None = None,
) -> OtlpSpan:
    return OtlpSpan(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent,
        name=name,
        kind=kind,  # type: ignore[arg-type]
        start_time_unix_nano=start_ns,
        end_time_unix_nano=end_ns,
        status=Status(code=Status.STATUS_CODE_ERROR if error else Status.STATUS_CODE_UNSET),
        attributes=[key_value(k, v) for k, v in (attributes or {}).items()],
    )


def resource_spans(
    service: str | None, spans: list[OtlpSpan], scope: str = "", **resource: object
) -> ResourceSpans:
    batch = ResourceSpans()
    if service is not None:
        batch.resource.attributes.append(key_value("service.name", service))
    for key, value in resource.items():
        batch.resource.attributes.append(key_value(key.replace("_", "."), value))
    scope_spans = batch.scope_spans.add()
    scope_spans.scope.name = scope
    scope_spans.spans.extend(spans)
    return batch
