"""Builders for the collector's unit tests: OTLP batches and a clock tests drive."""

from __future__ import annotations

from dataclasses import dataclass

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Status
from opentelemetry.proto.trace.v1.trace_pb2 import Span as OtlpSpan

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
