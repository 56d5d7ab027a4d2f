"""Trace storage: one small interface, two implementations, and what they share.

`TraceStore` is what the collector writes finished traces to and what the query API reads
from. Two implementations keep the same promises, checked by one contract suite
(tests/integration/test_trace_stores.py) that runs against both:

    sqlite.py         the embedded default: one SQLite file, no server (demo, small clusters)
    elasticsearch.py  a spans data stream and per-day trace summaries, for real clusters

The promises:

- **Idempotent spans.** A span is identified by trace id, span id and kind (the kind tells
  apart the client and server halves of a Zipkin shared span id). Writing a span again
  stores nothing new, so at-least-once delivery and late re-emission are safe.
- **Late traces merge.** A trace written again (late spans, or a span that came after
  the late window and started the trace anew) adds its new spans to the stored ones;
  its verdict and edges replace the stored verdict and edges, because the assembler
  emits them for the whole trace as it now knows it. Every span is written again, the
  `already_emitted` ones too (they count as duplicates): a first write that was lost is
  so repaired.
- **Whole traces out.** `get_trace` and `find_traces` return `Trace`s with every stored
  span, the verdict and the edges, spans ordered by start time.
- **Search is per span**, as in Jaeger: a trace matches when one of its spans has the
  service, the operation, every tag and a duration in range, and starts in the window.
  Tags are the span's attributes, its resource's attributes, its events' attributes, and
  what Jaeger derives from the span (`SYNTHESIZED_TAGS`), all compared as text.
- **Nothing raises for bad data.** A record the store refuses for good is counted in
  `observer_trace_store_dropped_total{store,record,reason}` with a log line, and the rest
  is stored. While Elasticsearch is unreachable, `write` retries with backoff (the
  caller's bounded queues push back) until it succeeds or the store is closed; a write
  SQLite fails (a full disk) is dropped and counted the same way.
- **Near real time.** What `write` stored is visible to queries within about a second
  (Elasticsearch refreshes on its own interval; SQLite at once).

Traces come in as the trace core encoded them (`EncodedTrace`: one packed record of the
trace's spans, or a document per span when the store says `span_documents`) and go out as
`Trace`s of `observer.collector.model`, decoded from what was stored.

Ownership: `write` reads the traces it is given and keeps nothing of them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram

from observer.collector._core import EncodedTrace
from observer.collector.model import (
    AttributeValue,
    Completeness,
    Span,
    SpanEvent,
    SpanKind,
    SpanLink,
    StatusCode,
    Trace,
    Verdict,
)
from observer.telemetry import metric_name

if TYPE_CHECKING:
    from observer.config import CollectorStorage

log = logging.getLogger(__name__)

NS_PER_US = 1_000
NS_PER_S = 1_000_000_000


@dataclass(frozen=True, slots=True)
class TraceQuery:
    """Jaeger's trace search: every condition applies to one and the same span."""

    service: str
    operation: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    min_duration_ns: int | None = None
    max_duration_ns: int | None = None
    start_min_ns: int | None = None
    start_max_ns: int | None = None
    limit: int = 20


@dataclass(frozen=True, slots=True)
class Operation:
    name: str
    span_kind: SpanKind


@dataclass(frozen=True, slots=True)
class Dependency:
    """Calls from `parent` to `child` summed over the stored traces of a time window."""

    parent: str
    child: str
    calls: int
    errors: int


class TraceStore(Protocol):
    """Where traces are kept for the query API; see the module docstring for the promises."""

    name: str
    span_documents: bool
    """How the store wants traces encoded: a document per span with its searchable tags,
    or (False) a trace's spans as one record (`EncodedTrace.record`)."""

    async def write(self, traces: Sequence[EncodedTrace]) -> None:
        """Store the traces; returns when they are durable (or refused and counted)."""
        ...

    async def get_trace(self, trace_id: str) -> Trace | None: ...

    async def services(self) -> list[str]:
        """Every service that sent a stored span, sorted."""
        ...

    async def operations(self, service: str, span_kind: SpanKind | None = None) -> list[Operation]:
        """The operations (span names) of a service, with their kinds, sorted by name."""
        ...

    async def find_traces(self, query: TraceQuery) -> list[Trace]:
        """Up to `query.limit` matching traces, the one with the latest matching span first."""
        ...

    async def dependencies(self, end_ns: int, lookback_ns: int) -> list[Dependency]:
        """Edges of traces that started in (end - lookback, end], summed per caller → callee."""
        ...

    async def prune(self, older_than_ns: int) -> None:
        """Delete traces that started before `older_than_ns` (retention)."""
        ...

    async def close(self) -> None: ...


# --- what both stores share ---------------------------------------------------------------


def span_document_id(span: Span) -> str:
    """The idempotent identity of a span: trace id, span id and kind (shared Zipkin ids)."""
    return f"{span.trace_id}{span.span_id}{_KIND_CODES[span.kind]}"


_KIND_CODES = {
    SpanKind.UNSPECIFIED: "u",
    SpanKind.INTERNAL: "i",
    SpanKind.SERVER: "s",
    SpanKind.CLIENT: "c",
    SpanKind.PRODUCER: "p",
    SpanKind.CONSUMER: "k",
}


def span_from_document(document: Mapping[str, Any]) -> Span:
    return Span(
        trace_id=document["trace_id"],
        span_id=document["span_id"],
        parent_span_id=document["parent_span_id"],
        name=document["name"],
        kind=SpanKind(document["kind"]),
        start_ns=document["start_ns"],
        end_ns=document["end_ns"],
        service=document["service"],
        status=StatusCode(document["status"]),
        status_message=document.get("status_message", ""),
        attributes=document.get("attributes", {}),
        resource=document.get("resource", {}),
        events=[SpanEvent(t, n, a) for t, n, a in document.get("events", ())],
        links=[SpanLink(t, s, a) for t, s, a in document.get("links", ())],
        skew_adjustment_ns=document.get("skew_adjustment_ns", 0),
    )


def verdict_from_document(document: Mapping[str, Any]) -> Verdict:
    return Verdict(Completeness(document["completeness"]), dict(document["reasons"]))


# Span tags that Jaeger derives from fields OTLP does not keep as attributes (the
# OpenTelemetry → Jaeger mapping: opentelemetry-collector-contrib pkg/translator/jaeger),
# plus observer's own clock-skew mark. Shown by the query API and searchable in both stores.
SPAN_KIND_TAG = "span.kind"
ERROR_TAG = "error"
STATUS_CODE_TAG = "otel.status_code"
STATUS_DESCRIPTION_TAG = "otel.status_description"
SKEW_TAG = "observer.clock_skew.adjustment_us"
SYNTHESIZED_TAGS = (SPAN_KIND_TAG, ERROR_TAG, STATUS_CODE_TAG, STATUS_DESCRIPTION_TAG, SKEW_TAG)

# INTERNAL and UNSPECIFIED get no span.kind tag, as the Jaeger mapping says.
_KIND_TAG_VALUES = {
    SpanKind.SERVER: "server",
    SpanKind.CLIENT: "client",
    SpanKind.PRODUCER: "producer",
    SpanKind.CONSUMER: "consumer",
}


def synthesized_tags(span: Span) -> list[tuple[str, AttributeValue]]:
    tags: list[tuple[str, AttributeValue]] = []
    kind = _KIND_TAG_VALUES.get(span.kind)
    if kind is not None:
        tags.append((SPAN_KIND_TAG, kind))
    if span.status is StatusCode.ERROR:
        tags.append((STATUS_CODE_TAG, "ERROR"))
        tags.append((ERROR_TAG, True))
    elif span.status is StatusCode.OK:
        tags.append((STATUS_CODE_TAG, "OK"))
    if span.status_message:
        tags.append((STATUS_DESCRIPTION_TAG, span.status_message))
    if span.skew_adjustment_ns:
        tags.append((SKEW_TAG, span.skew_adjustment_ns // NS_PER_US))
    return tags


def tag_text(value: AttributeValue) -> str:
    """How a tag value is compared in searches: Jaeger's text form (true, 200, 1.5, JSON lists)."""
    if type(value) is str:
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return orjson.dumps(value).decode()
    return str(value)


def _texts(attributes: Mapping[str, AttributeValue]) -> dict[str, str]:
    return {
        key: value if type(value) is str else tag_text(value) for key, value in attributes.items()
    }


def searchable_tags(span: Span) -> dict[str, str]:
    """Every tag a search can match on this span, as text (what the trace core's
    `encode::searchable_tags` writes, for a store that checks a search on stored spans).

    On a key present twice, the span's own attributes win over its events' and its
    resource's, and the derived tags over all.
    """
    tags = _texts(span.resource)
    for event in span.events:
        tags.update(_texts(event.attributes))
    tags.update(_texts(span.attributes))
    for key, value in synthesized_tags(span):
        tags[key] = tag_text(value)
    return tags


def merge_spans(spans: Iterable[Span]) -> list[Span]:
    """Spans once each (by identity), ordered by start time."""
    unique = {span_document_id(span): span for span in spans}
    return sorted(unique.values(), key=lambda span: (span.start_ns, span.span_id))


# --- telemetry ----------------------------------------------------------------------------


class StoreMetrics:
    """The store's counters; one instance per store, labelled with the store's name."""

    def __init__(self, store: str, registry: CollectorRegistry | None) -> None:
        self.store = store
        self.spans = Counter(
            metric_name("trace_store_spans"),
            "Spans written to the trace store: stored, or duplicate (already stored).",
            ["store", "outcome"],
            registry=registry,
        )
        self.dropped = Counter(
            metric_name("trace_store_dropped"),
            "Records the trace store refused for good: spans, or traces' summaries; by reason.",
            ["store", "record", "reason"],
            registry=registry,
        )
        self.write_seconds = Histogram(
            metric_name("trace_store_write_duration_seconds"),
            "How long one write of a batch of traces took, retries included.",
            ["store"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.retries = Counter(
            metric_name("trace_store_write_retries"),
            "Writes (or parts of them) sent again after a retryable failure.",
            ["store"],
            registry=registry,
        )
        self.pruned = Counter(
            metric_name("trace_store_pruned_spans"),
            "Spans deleted by retention.",
            ["store"],
            registry=registry,
        )

    def stored(self, count: int, duplicates: int = 0) -> None:
        if count:
            self.spans.labels(self.store, "stored").inc(count)
        if duplicates:
            self.spans.labels(self.store, "duplicate").inc(duplicates)

    def drop(
        self, count: int, reason: str, detail: str, record: str = "span", **fields: object
    ) -> None:
        """Count and log records refused for good; one line per refusal, not per span."""
        self.dropped.labels(self.store, record, reason).inc(count)
        log.warning(
            "The trace store refused records for good; they are dropped.",
            extra={
                "store": self.store,
                "record": record,
                "reason": reason,
                "count": count,
                "detail": detail,
            }
            | fields,
        )


# --- wiring helpers -----------------------------------------------------------------------


async def open_store(
    storage: CollectorStorage, registry: CollectorRegistry | None = None
) -> TraceStore:
    """The store the configuration names: Elasticsearch when set, else the embedded one."""
    if storage.elasticsearch is not None:
        from observer.collector.store.elasticsearch import ElasticsearchTraceStore

        return ElasticsearchTraceStore(storage.elasticsearch, registry=registry)
    from observer.collector.store.sqlite import SqliteTraceStore

    return await SqliteTraceStore.open(storage.embedded.path, registry=registry)


async def keep_retention(
    store: TraceStore,
    retention_s: float,
    interval_s: float | None = None,
    clock: Callable[[], float] = time.time,
) -> None:
    """Prune traces older than the retention, now and then every `interval_s`, until cancelled.

    The interval defaults to a tenth of the retention, at most an hour.
    """
    interval = interval_s if interval_s is not None else min(retention_s / 10, 3600.0)
    while True:
        cutoff_ns = int((clock() - retention_s) * NS_PER_S)
        try:
            await store.prune(cutoff_ns)
        except Exception:
            log.exception(
                "Pruning old traces failed; retrying at the next interval.",
                extra={"store": store.name, "interval_s": interval},
            )
        await asyncio.sleep(interval)


__all__ = [
    "Dependency",
    "Operation",
    "StoreMetrics",
    "TraceQuery",
    "TraceStore",
    "keep_retention",
    "open_store",
]
