"""The Elasticsearch trace store: spans in a data stream, one summary per trace beside them.

Layout (elasticsearch_indices.py has the mappings and the retention):

- **Spans** go to the data stream ``traces-observer.spans-default``, one document per
  span, written with ``create`` and ``_id`` = trace id + span id + kind (the kind keeps
  the two halves of a Zipkin shared span id apart). A span written again meets 409
  (``version_conflict_engine_exception``) and counts as stored, so at-least-once delivery
  and late re-emission are safe. Known limit (elastic/elasticsearch#44794): ids are unique
  per backing index, so a span written again after a rollover is stored twice; reads
  return it once.
- **Trace summaries** (time bounds, verdict, service-graph edges) go to a regular index
  per UTC day of the trace's start, ``observer-traces-YYYY.MM.DD``, written with
  ``index`` and ``_id`` = trace id, so a late trace replaces its summary (a data stream
  would refuse that: create only).
- **Retention** deletes whole indices, never documents one by one: expired backing
  indices of the data stream and expired days of summaries.

Bulk outcomes are judged per item (Elasticsearch bulk API docs): 2xx stored, 409 already
stored, 429 and 5xx sent again with backoff, any other refusal dropped and counted.
Whole requests that fail (429, 5xx, connection, timeout) are sent again until they
succeed or the store is closed; 413 splits the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from elastic_transport import ConnectionError as TransportConnectionError
from elastic_transport import ConnectionTimeout
from elasticsearch import ApiError, AsyncElasticsearch
from prometheus_client import CollectorRegistry

from observer.collector._core import EncodedTrace
from observer.collector.model import Edge, SpanKind, Trace
from observer.collector.store import (
    NS_PER_S,
    Dependency,
    Operation,
    StoreMetrics,
    TraceQuery,
    merge_spans,
    span_from_document,
    verdict_from_document,
)
from observer.collector.store.elasticsearch_indices import (
    SPANS_DATA_STREAM,
    SUMMARY_INDEX_PREFIX,
    install_templates,
    prune_spans,
    prune_summaries,
    summary_index,
)
from observer.config import ElasticsearchConfig
from observer.sinks.elasticsearch import connect

log = logging.getLogger(__name__)


def _timestamp(ns: int) -> str:
    """RFC 3339 with nanoseconds, for the date_nanos @timestamp data streams require."""
    seconds, fraction = divmod(ns, NS_PER_S)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{fraction:09d}Z"


_BULK_PARAMS = {"filter_path": "items.*.status,items.*.error"}
_BULK_HEADERS = {
    "content-type": "application/vnd.elasticsearch+x-ndjson; compatible-with=8",
    "accept": "application/vnd.elasticsearch+json; compatible-with=8",
}
_SEARCH_OPTIONS: dict[str, Any] = {"ignore_unavailable": True, "allow_no_indices": True}
_PAGE = 5000
_SPAN_SORT = [{"start_ns": "asc"}, {"span_id": "asc"}, {"kind": "asc"}]
_MAX_BUCKETS = 10_000
_STILL_FAILING_LOG_INTERVAL = 30.0


@dataclass(slots=True)
class _Item:
    line: bytes
    """The bulk action and the document, each ending in a newline."""
    record: str
    """"span", "trace" (a summary), or "stale" (an older summary's delete)."""


class _RequestFailedError(Exception):
    """The whole request failed; whether Elasticsearch stored some items is unknown."""


class _TooLargeError(Exception):
    """413: the request body exceeds http.max_content_length."""


class ElasticsearchTraceStore:
    name = "elasticsearch"
    # A document per span: the core encodes each with its searchable tags.
    span_documents = True

    def __init__(
        self,
        settings: ElasticsearchConfig,
        registry: CollectorRegistry | None = None,
        client: AsyncElasticsearch | None = None,
        max_request_bytes: int = 5 << 20,
        initial_backoff: float = 0.1,
        max_backoff: float = 30.0,
    ) -> None:
        self.client = client or connect(settings, compress_requests=False)
        self.metrics = StoreMetrics(self.name, registry)
        self._max_request_bytes = max_request_bytes
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self._setup_done = False
        self._setup_lock = asyncio.Lock()
        self._closed = asyncio.Event()
        self._failing_since: float | None = None
        self._last_failure_log = 0.0

    # --- writing ---------------------------------------------------------------------------

    async def write(self, traces: Sequence[EncodedTrace]) -> None:
        items = self._items(traces)
        if not items:
            return
        started = time.monotonic()
        chunk: list[_Item] = []
        size = 0
        for item in items:
            if chunk and size + len(item.line) > self._max_request_bytes:
                await self._send_until_settled(chunk)
                chunk, size = [], 0
            chunk.append(item)
            size += len(item.line)
        await self._send_until_settled(chunk)
        self.metrics.write_seconds.labels(self.name).observe(time.monotonic() - started)

    def _items(self, traces: Sequence[EncodedTrace]) -> list[_Item]:
        items: list[_Item] = []
        span_action = b'{"create":{"_index":"' + SPANS_DATA_STREAM.encode() + b'","_id":"%s"}}\n'
        for trace in traces:
            for document_id, body, tags, start_ns, duration_ns in trace.span_documents:
                # The core's document, with what this store indexes beside it.
                extra = b',"@timestamp":"%s","duration_ns":%d,"tags":' % (
                    _timestamp(start_ns).encode(),
                    duration_ns,
                )
                line = span_action % document_id.encode() + body[:-1] + extra + tags + b"}\n"
                items.append(_Item(line, "span"))
            index = summary_index(trace.start_ns)
            summary = {
                "trace_id": trace.trace_id,
                "start_ns": trace.start_ns,
                "end_ns": trace.end_ns,
                "late": trace.late,
                "verdict": orjson.Fragment(trace.verdict),
                "edges": [
                    {
                        "caller": caller,
                        "callee": callee,
                        "calls": calls,
                        "errors": errors,
                        "virtual": virtual,
                    }
                    for caller, callee, calls, errors, virtual in trace.edges
                ],
            }
            action = orjson.dumps({"index": {"_index": index, "_id": trace.trace_id}})
            items.append(_Item(action + b"\n" + orjson.dumps(summary) + b"\n", "trace"))
            if trace.late:
                # A late span that starts before every other moves the trace to an earlier
                # day; the summary in the day after (if any) must not count twice.
                later = summary_index(trace.start_ns + 86400 * NS_PER_S)
                if later != index:
                    action = orjson.dumps({"delete": {"_index": later, "_id": trace.trace_id}})
                    items.append(_Item(action + b"\n", "stale"))
        return items

    async def _send_until_settled(self, items: list[_Item]) -> None:
        attempt = 0
        while items:
            if self._closed.is_set():
                spans = sum(item.record == "span" for item in items)
                self.metrics.drop(spans, "store_closed", "closed while Elasticsearch failed")
                return
            try:
                await self._ensure_setup()
                response = await self._bulk(items)
            except _TooLargeError:
                if len(items) == 1:
                    self._refused(items[0], 413, "request_entity_too_large", "")
                    return
                half = len(items) // 2
                await self._send_until_settled(items[:half])
                await self._send_until_settled(items[half:])
                return
            except _RequestFailedError as error:
                self._failing(str(error))
                await self._backoff(attempt)
                attempt += 1
                continue
            self._recovered()
            items = self._settle(items, response)
            if items:
                await self._backoff(attempt)
                attempt += 1

    def _settle(self, items: list[_Item], response: dict[str, Any]) -> list[_Item]:
        """Count what the response settles; return the items to send again."""
        retry: list[_Item] = []
        stored = duplicates = 0
        for item, result in zip(items, response["items"], strict=True):
            outcome = next(iter(result.values()))
            status = outcome["status"]
            if status < 300:
                stored += item.record == "span"
            elif status == 409 and item.record == "span":
                duplicates += 1
            elif status == 404 and item.record == "stale":
                pass  # no such summary or no such day: nothing to delete
            elif status == 429 or status >= 500:
                retry.append(item)
            else:
                error = outcome.get("error") or {}
                self._refused(
                    item, status, str(error.get("type", "unknown")), str(error.get("reason", ""))
                )
        self.metrics.stored(stored, duplicates)
        if retry:
            self.metrics.retries.labels(self.name).inc(len(retry))
        return retry

    def _refused(self, item: _Item, status: int, error_type: str, reason: str) -> None:
        record = "span" if item.record == "span" else "trace"
        self.metrics.drop(1, error_type, reason[:500], record=record, status=status)

    async def _bulk(self, items: list[_Item]) -> dict[str, Any]:
        body = b"".join([item.line for item in items])
        compressor = zlib.compressobj(1, zlib.DEFLATED, 31)  # gzip at its fastest level
        compressed = compressor.compress(body) + compressor.flush()
        try:
            response = await self.client.perform_request(
                "POST",
                "/_bulk",
                params=_BULK_PARAMS,
                headers=_BULK_HEADERS | {"content-encoding": "gzip"},
                body=compressed,
            )
        except ApiError as error:
            if error.status_code == 413:
                raise _TooLargeError from error
            raise _RequestFailedError(f"{error.status_code}: {str(error)[:300]}") from error
        except (TransportConnectionError, ConnectionTimeout) as error:
            raise _RequestFailedError(str(error)[:300]) from error
        result: dict[str, Any] = response.body
        return result

    async def _ensure_setup(self) -> None:
        if self._setup_done:
            return
        async with self._setup_lock:
            if self._setup_done:
                return
            try:
                await install_templates(self.client)
            except ApiError as error:
                raise _RequestFailedError(f"setup: {error.status_code}: {error}") from error
            except (TransportConnectionError, ConnectionTimeout) as error:
                raise _RequestFailedError(f"setup: {error}") from error
            self._setup_done = True

    def _failing(self, reason: str) -> None:
        now = time.monotonic()
        self.metrics.retries.labels(self.name).inc()
        if self._failing_since is None:
            self._failing_since = now
        if now - self._last_failure_log >= _STILL_FAILING_LOG_INTERVAL:
            self._last_failure_log = now
            log.warning(
                "Elasticsearch does not take traces; retrying with backoff.",
                extra={"store": self.name, "error": reason, "for_s": now - self._failing_since},
            )

    def _recovered(self) -> None:
        if self._failing_since is not None:
            log.info(
                "Elasticsearch takes traces again.",
                extra={"store": self.name, "after_s": time.monotonic() - self._failing_since},
            )
            self._failing_since = None
            self._last_failure_log = 0.0

    async def _backoff(self, attempt: int) -> None:
        """Exponential backoff with full jitter, cut short when the store is closed."""
        delay = random.uniform(0, min(self._max_backoff, self._initial_backoff * 2**attempt))  # noqa: S311
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closed.wait(), delay)

    # --- reading ---------------------------------------------------------------------------

    async def get_trace(self, trace_id: str) -> Trace | None:
        traces = await self._load([trace_id])
        return traces[0] if traces else None

    async def services(self) -> list[str]:
        response = await self.client.search(
            index=SPANS_DATA_STREAM,
            size=0,
            aggs={"services": {"terms": {"field": "service", "size": _MAX_BUCKETS}}},
            **_SEARCH_OPTIONS,
        )
        buckets = (response.get("aggregations") or {}).get("services", {}).get("buckets", [])
        return sorted(bucket["key"] for bucket in buckets)

    async def operations(self, service: str, span_kind: SpanKind | None = None) -> list[Operation]:
        filters: list[dict[str, Any]] = [{"term": {"service": service}}]
        if span_kind is not None:
            filters.append({"term": {"kind": span_kind.value}})
        response = await self.client.search(
            index=SPANS_DATA_STREAM,
            size=0,
            query={"bool": {"filter": filters}},
            aggs={
                "names": {
                    "terms": {"field": "name", "size": _MAX_BUCKETS},
                    "aggs": {"kinds": {"terms": {"field": "kind", "size": len(SpanKind)}}},
                }
            },
            **_SEARCH_OPTIONS,
        )
        buckets = (response.get("aggregations") or {}).get("names", {}).get("buckets", [])
        operations = [
            Operation(bucket["key"], SpanKind(kind["key"]))
            for bucket in buckets
            for kind in bucket["kinds"]["buckets"]
        ]
        return sorted(operations, key=lambda operation: (operation.name, operation.span_kind))

    async def find_traces(self, query: TraceQuery) -> list[Trace]:
        filters: list[dict[str, Any]] = [{"term": {"service": query.service}}]
        if query.operation is not None:
            filters.append({"term": {"name": query.operation}})
        for field_name, low, high in (
            ("duration_ns", query.min_duration_ns, query.max_duration_ns),
            ("start_ns", query.start_min_ns, query.start_max_ns),
        ):
            bounds = {op: value for op, value in (("gte", low), ("lte", high)) if value is not None}
            if bounds:
                filters.append({"range": {field_name: bounds}})
        for key, value in query.tags.items():
            filters.append({"term": {f"tags.{key}": value}})
        response = await self.client.search(
            index=SPANS_DATA_STREAM,
            size=0,
            query={"bool": {"filter": filters}},
            aggs={
                "traces": {
                    "terms": {
                        "field": "trace_id",
                        "size": query.limit,
                        "order": {"latest": "desc"},
                    },
                    "aggs": {"latest": {"max": {"field": "start_ns"}}},
                }
            },
            **_SEARCH_OPTIONS,
        )
        buckets = (response.get("aggregations") or {}).get("traces", {}).get("buckets", [])
        return await self._load([bucket["key"] for bucket in buckets])

    async def _load(self, ids: list[str]) -> list[Trace]:
        """The traces with these ids, in this order; ids with no stored span are left out."""
        if not ids:
            return []
        span_documents, summaries = await asyncio.gather(
            self._all_hits(SPANS_DATA_STREAM, {"terms": {"trace_id": ids}}, _SPAN_SORT),
            self._all_hits(
                f"{SUMMARY_INDEX_PREFIX}*",
                {"terms": {"trace_id": ids}},
                [{"end_ns": "desc"}, {"start_ns": "asc"}],
            ),
        )
        spans: dict[str, list[Any]] = {trace_id: [] for trace_id in ids}
        for document in span_documents:
            spans[document["trace_id"]].append(span_from_document(document))
        latest_summary: dict[str, dict[str, Any]] = {}
        for summary in summaries:
            latest_summary.setdefault(summary["trace_id"], summary)
        traces = []
        for trace_id in ids:
            if not spans[trace_id]:
                continue
            trace = Trace(trace_id, merge_spans(spans[trace_id]))
            found = latest_summary.get(trace_id)
            if found is not None:
                trace.verdict = verdict_from_document(found["verdict"])
                trace.edges = [
                    Edge(e["caller"], e["callee"], e["calls"], e["errors"], e["virtual"])
                    for e in found["edges"]
                ]
                trace.late = found["late"]
            traces.append(trace)
        return traces

    async def _all_hits(
        self, index: str, query: dict[str, Any], sort: list[dict[str, str]]
    ) -> list[dict[str, Any]]:
        """Every matching document's _source, page by page (search_after)."""
        documents: list[dict[str, Any]] = []
        after: list[Any] | None = None
        while True:
            page = await self.client.search(
                index=index,
                query=query,
                sort=sort,
                size=_PAGE,
                search_after=after,
                track_total_hits=False,
                **_SEARCH_OPTIONS,
            )
            hits = page["hits"]["hits"]
            documents += [hit["_source"] for hit in hits]
            if len(hits) < _PAGE:
                return documents
            after = hits[-1]["sort"]

    async def dependencies(self, end_ns: int, lookback_ns: int) -> list[Dependency]:
        response = await self.client.search(
            index=f"{SUMMARY_INDEX_PREFIX}*",
            size=0,
            query={"range": {"start_ns": {"gt": end_ns - lookback_ns, "lte": end_ns}}},
            aggs={
                "edges": {
                    "nested": {"path": "edges"},
                    "aggs": {
                        "callers": {
                            "terms": {"field": "edges.caller", "size": _MAX_BUCKETS},
                            "aggs": {
                                "callees": {
                                    "terms": {"field": "edges.callee", "size": _MAX_BUCKETS},
                                    "aggs": {
                                        "calls": {"sum": {"field": "edges.calls"}},
                                        "errors": {"sum": {"field": "edges.errors"}},
                                    },
                                }
                            },
                        }
                    },
                }
            },
            **_SEARCH_OPTIONS,
        )
        callers = (response.get("aggregations") or {}).get("edges", {}).get("callers", {})
        dependencies = [
            Dependency(
                caller["key"],
                callee["key"],
                int(callee["calls"]["value"]),
                int(callee["errors"]["value"]),
            )
            for caller in callers.get("buckets", [])
            for callee in caller["callees"]["buckets"]
        ]
        return sorted(dependencies, key=lambda dependency: (dependency.parent, dependency.child))

    # --- retention -------------------------------------------------------------------------

    async def prune(self, older_than_ns: int) -> None:
        spans = await prune_spans(self.client, older_than_ns)
        days = await prune_summaries(self.client, older_than_ns)
        if spans or days:
            self.metrics.pruned.labels(self.name).inc(spans)
            log.info(
                "Deleted traces past the retention.",
                extra={
                    "store": self.name,
                    "spans": spans,
                    "summary_indices": days,
                    "older_than_ns": older_than_ns,
                },
            )

    async def close(self) -> None:
        self._closed.set()
        await self.client.close()
