"""Traces to store and query: the shop of the issue (frontend → checkout → payments,
payments failing), built span by span the way reconstruction hands them over."""

from __future__ import annotations

from observer.collector.model import (
    Attributes,
    Edge,
    Span,
    SpanEvent,
    SpanKind,
    SpanLink,
    StatusCode,
    Trace,
    Verdict,
)
from observer.collector.store import NS_PER_S

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
        Edge("checkout", "payments", calls=1, errors=errors),
        Edge("checkout", "postgresql", calls=1, virtual=True),
    ]
    return Trace(trace_id(number), spans, edges=edges)


def rich_trace(number: int) -> Trace:
    """One trace using every field a span can carry, partial, with a skew-adjusted child."""
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
    child = make_span(
        number,
        2,
        1,
        "items",
        "load",
        SpanKind.INTERNAL,
        start_ms=1,
        duration_ms=3,
        status=StatusCode.ERROR,
        status_message="boom",
        skew_adjustment_ns=1_500_000,
    )
    orphan = make_span(number, 3, 9, "items", "orphaned", SpanKind.CLIENT, start_ms=5)
    verdict = Verdict()
    verdict.add("missing_parent", span_id(3))
    return Trace(
        trace_id(number),
        [root, child, orphan],
        verdict=verdict,
        edges=[Edge("gateway", "items", calls=1, errors=1)],
    )
