"""Shared parts of the span tests: real OpenTelemetry SDK spans, and a recording consumer."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from observer.receivers import Admission


@dataclass
class Recorder:
    """A SpanConsumer that keeps what it is given and answers `admission`. Batches of
    OTLP messages are copied; others (the collector's decoded spans) kept as they are."""

    admission: Admission = Admission.ACCEPTED
    batches: list[tuple[Any, int, str | None]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, batch: Any, spans: int, peer: str | None) -> Admission:
        if self.admission is Admission.ACCEPTED:
            if isinstance(batch, list):
                copies = []
                for resource in batch:
                    copy = ResourceSpans()
                    copy.CopyFrom(resource)
                    copies.append(copy)
                batch = copies
            self.batches.append((batch, spans, peer))
            self.arrived.set()
        return self.admission

    def spans(self) -> list[tuple[ResourceSpans, Span]]:
        """The spans of the batches of OTLP messages."""
        return [
            (resource, span)
            for batch, _, _ in self.batches
            if isinstance(batch, list)
            for resource in batch
            for scope in resource.scope_spans
            for span in scope.spans
        ]

    def span_count(self) -> int:
        """Spans handed over, as the receiver counted them."""
        return sum(spans for _, spans, _ in self.batches)

    async def wait_for(self, count: int, within: float = 15.0) -> None:
        async with asyncio.timeout(within):
            while len(self.spans()) < count:
                self.arrived.clear()
                await self.arrived.wait()


def sdk_spans(count: int, service: str = "shop-web") -> Sequence[ReadableSpan]:
    """Spans made by the real OpenTelemetry SDK: a root with `count - 1` children."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("observer.tests", "1.0")
    with tracer.start_as_current_span("GET /cart", attributes={"http.request.method": "GET"}):
        for number in range(count - 1):
            with tracer.start_as_current_span(
                "SELECT cart", attributes={"db.system": "postgresql", "row": number}
            ) as child:
                child.add_event("rows", {"count": number})
    provider.shutdown()
    return memory.get_finished_spans()


def attributes(items: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        kind = item.value.WhichOneof("value")
        out[item.key] = getattr(item.value, kind) if kind else None
    return out


def assert_same_span(sent: ReadableSpan, received: Span) -> None:
    """What the SDK ended is what arrived: ids, name, times, attributes, events."""
    context = sent.context
    assert context is not None
    assert received.trace_id == context.trace_id.to_bytes(16, "big")
    assert received.span_id == context.span_id.to_bytes(8, "big")
    parent = sent.parent.span_id.to_bytes(8, "big") if sent.parent else b""
    assert received.parent_span_id == parent
    assert received.name == sent.name
    assert received.start_time_unix_nano == sent.start_time
    assert received.end_time_unix_nano == sent.end_time
    assert attributes(received.attributes) == dict(sent.attributes or {})
    assert [(e.name, attributes(e.attributes)) for e in received.events] == [
        (e.name, dict(e.attributes or {})) for e in sent.events
    ]
