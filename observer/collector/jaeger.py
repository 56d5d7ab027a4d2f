"""A `Trace` in Jaeger's UI JSON model (jaegertracing/jaeger model/json), as served by the
query API to Jaeger's UI and Grafana's Jaeger data source.

The OpenTelemetry → Jaeger mapping (opentelemetry-collector-contrib pkg/translator/jaeger):
resource attributes become the process's tags (``service.name`` its serviceName), the
parent a CHILD_OF reference and links FOLLOWS_FROM ones, events logs with an ``event``
field, times microseconds, list values JSON text; span kind and status become the
``span.kind``, ``otel.status_code``, ``otel.status_description`` and ``error`` tags.

What observer adds, as tags (searchable where they belong to the span) and warnings
(which Jaeger's UI and Grafana show on the span):

- on the root span(s): ``observer.trace.completeness`` (complete | partial) and, when
  partial, ``observer.trace.partial_reasons``; the trace's own `warnings` list them;
- on each span a partial verdict names: ``observer.partial_reason`` and a warning;
- on a span moved to fit in its parent: ``observer.clock_skew.adjustment_us`` and a warning.

Two spans sharing one span id (the halves of a Zipkin shared span, if reconstruction kept
the id) are told apart as Jaeger's own span-id deduper does: the server half gets the
next free id, and the other children of that id become its children.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson

from observer.collector.model import AttributeValue, Completeness, Span, SpanKind, Trace
from observer.collector.store import NS_PER_US, synthesized_tags

COMPLETENESS_TAG = "observer.trace.completeness"
PARTIAL_REASONS_TAG = "observer.trace.partial_reasons"
SPAN_PARTIAL_REASON_TAG = "observer.partial_reason"


def tag(key: str, value: AttributeValue) -> dict[str, Any]:
    """A typed Jaeger KeyValue; lists become JSON text, as the Jaeger mapping says."""
    if isinstance(value, bool):
        return {"key": key, "type": "bool", "value": value}
    if isinstance(value, int):
        return {"key": key, "type": "int64", "value": value}
    if isinstance(value, float):
        return {"key": key, "type": "float64", "value": value}
    if isinstance(value, str):
        return {"key": key, "type": "string", "value": value}
    return {"key": key, "type": "string", "value": orjson.dumps(value).decode()}


def trace_to_jaeger(trace: Trace) -> dict[str, Any]:
    ids = _deduplicated_ids(trace.spans)
    processes: dict[bytes, str] = {}
    process_bodies: dict[str, dict[str, Any]] = {}
    span_reasons: dict[str, list[str]] = {}
    for reason, span_ids in trace.verdict.reasons.items():
        for span_id in span_ids:
            span_reasons.setdefault(span_id, []).append(reason)
    partial = trace.verdict.completeness is Completeness.PARTIAL
    roots = _roots(trace.spans)
    spans = []
    for index, span in enumerate(trace.spans):
        process = _process(span)
        key = orjson.dumps(process, option=orjson.OPT_SORT_KEYS)
        process_id = processes.get(key)
        if process_id is None:
            process_id = processes[key] = f"p{len(processes) + 1}"
            process_bodies[process_id] = process
        span_id, parent_id = ids[index]
        tags = [tag(k, v) for k, v in span.attributes.items()]
        tags += [tag(k, v) for k, v in synthesized_tags(span)]
        warnings = []
        if index in roots:
            tags.append(tag(COMPLETENESS_TAG, trace.verdict.completeness.value))
            if partial:
                tags.append(tag(PARTIAL_REASONS_TAG, ",".join(sorted(trace.verdict.reasons))))
        reasons = span_reasons.get(span.span_id)
        if reasons:
            tags.append(tag(SPAN_PARTIAL_REASON_TAG, ",".join(reasons)))
            warnings.append(f"observer: this span makes the trace partial: {', '.join(reasons)}")
        if span.skew_adjustment_ns:
            warnings.append(
                "observer: clock skew adjusted by "
                f"{span.skew_adjustment_ns / 1_000_000:+.3f} ms to fit inside the parent span"
            )
        references = []
        if parent_id:
            references.append(
                {"refType": "CHILD_OF", "traceID": trace.trace_id, "spanID": parent_id}
            )
        references += [
            {"refType": "FOLLOWS_FROM", "traceID": link.trace_id, "spanID": link.span_id}
            for link in span.links
        ]
        spans.append(
            {
                "traceID": trace.trace_id,
                "spanID": span_id,
                "flags": 1,
                "operationName": span.name,
                "references": references,
                "startTime": span.start_ns // NS_PER_US,
                "duration": span.duration_ns // NS_PER_US,
                "tags": tags,
                "logs": [
                    _log(event.time_ns, event.name, event.attributes) for event in span.events
                ],
                "processID": process_id,
                "warnings": warnings or None,
            }
        )
    trace_warnings = [
        f"observer: partial trace: {reason} ({len(span_ids)} span{'s' if len(span_ids) > 1 else ''})"
        for reason, span_ids in sorted(trace.verdict.reasons.items())
    ]
    return {
        "traceID": trace.trace_id,
        "spans": spans,
        "processes": process_bodies,
        "warnings": trace_warnings or None,
    }


def _process(span: Span) -> dict[str, Any]:
    return {
        "serviceName": span.service,
        "tags": [tag(k, v) for k, v in span.resource.items() if k != "service.name"],
    }


def _log(time_ns: int, name: str, attributes: dict[str, AttributeValue]) -> dict[str, Any]:
    # An attribute named `event` wins over the event's name (the Jaeger mapping).
    fields = [] if "event" in attributes else [tag("event", name)]
    fields += [tag(k, v) for k, v in attributes.items()]
    return {"timestamp": time_ns // NS_PER_US, "fields": fields}


def _roots(spans: list[Span]) -> set[int]:
    """Spans without a parent; if every span has one (the root is missing), the earliest."""
    roots = {index for index, span in enumerate(spans) if not span.parent_span_id}
    if not roots and spans:
        roots = {min(range(len(spans)), key=lambda index: spans[index].start_ns)}
    return roots


def _deduplicated_ids(spans: list[Span]) -> list[tuple[str, str]]:
    """(span id, parent id) per span, with shared ids split the way Jaeger's deduper does."""
    counts = Counter(span.span_id for span in spans)
    taken = set(counts)
    new_ids: dict[int, str] = {}  # index of a server half → its new id
    renamed: dict[str, str] = {}  # shared id → the server half's new id
    for index, span in enumerate(spans):
        shared = span.span_id
        if counts[shared] > 1 and span.kind is SpanKind.SERVER and shared not in renamed:
            renamed[shared] = new_ids[index] = _next_free_id(shared, taken)
            taken.add(renamed[shared])
    ids = []
    for index, span in enumerate(spans):
        if index in new_ids:
            ids.append((new_ids[index], span.span_id))  # the server half: child of the client
        else:
            parent = span.parent_span_id
            ids.append((span.span_id, renamed.get(parent, parent)))
    return ids


def _next_free_id(span_id: str, taken: set[str]) -> str:
    number = int(span_id, 16) if span_id else 0
    while True:
        number = (number + 1) % (1 << 64)
        candidate = f"{number:016x}"
        if candidate not in taken:
            return candidate
