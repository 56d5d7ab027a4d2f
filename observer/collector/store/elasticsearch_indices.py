"""The trace store's indices in Elasticsearch: what lives where, the templates that map
it, and retention, which deletes whole indices.

- The spans data stream ``traces-observer.spans-default``: one document per span. Only
  what searches filter on is mapped (trace id, service, name, kind, status, start,
  duration); the searchable tags are one ``flattened`` field left out of ``_source``;
  attributes, events and links stay in ``_source`` as sent.
- Trace summaries in a regular index per UTC day of the trace's start,
  ``observer-traces-YYYY.MM.DD``: time bounds, verdict, and the service-graph edges as
  ``nested`` documents, so /api/dependencies sums calls and errors per caller → callee.

Templates are installed before the first write. One already at this version
(``_meta.version``) is left as it is, so operators' edits survive restarts.

Retention deletes whole indices, the way Elasticsearch itself does it (no delete by
query over billions of spans): a backing index whose newest span is past the cutoff is
deleted; a write index holding any expired span is rolled over, so that a later prune
deletes it once all of it has expired (never the prune that rolled it over: a bulk
request routed to it just before may still be writing). A span can so outlive the
retention by two prune intervals plus the age of its backing index. A day's summaries
are deleted once the day has ended before the cutoff.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from elasticsearch import AsyncElasticsearch, NotFoundError

from observer.collector.store import NS_PER_S

log = logging.getLogger(__name__)

SPANS_DATA_STREAM = "traces-observer.spans-default"
SUMMARY_INDEX_PREFIX = "observer-traces-"
TEMPLATE_VERSION = 1
"""Bump when a mapping below changes, so that running collectors replace the template."""

_KEYWORD = {"type": "keyword", "ignore_above": 1024}
_LONG = {"type": "long"}

SPAN_MAPPINGS: dict[str, Any] = {
    # Only what is searched is mapped; the rest of the span stays in _source as sent.
    "dynamic": False,
    "_source": {"excludes": ["tags"]},
    "properties": {
        "@timestamp": {"type": "date_nanos"},
        "trace_id": _KEYWORD,
        "span_id": _KEYWORD,
        "parent_span_id": _KEYWORD,
        "name": _KEYWORD,
        "kind": _KEYWORD,
        "service": _KEYWORD,
        "status": _KEYWORD,
        "start_ns": _LONG,
        "end_ns": _LONG,
        "duration_ns": _LONG,
        # Application keys never conflict or explode the mapping; values past Lucene's
        # term limit stay unindexed instead of refusing the span.
        "tags": {"type": "flattened", "ignore_above": 8191},
    },
}

SUMMARY_MAPPINGS: dict[str, Any] = {
    "dynamic": False,
    "properties": {
        "trace_id": _KEYWORD,
        "start_ns": _LONG,
        "end_ns": _LONG,
        "late": {"type": "boolean"},
        "verdict": {"properties": {"completeness": _KEYWORD}},
        "edges": {
            "type": "nested",
            "properties": {
                "caller": _KEYWORD,
                "callee": _KEYWORD,
                "calls": _LONG,
                "errors": _LONG,
                "virtual": {"type": "boolean"},
            },
        },
    },
}

_INDEX_SETTINGS = {"number_of_shards": 1, "auto_expand_replicas": "0-1"}


def index_templates() -> dict[str, dict[str, Any]]:
    """Template name → body: the spans data stream and the daily summary indices."""
    meta = {"managed_by": "observer", "version": TEMPLATE_VERSION}
    return {
        "observer-traces-observer.spans": {
            "index_patterns": [f"{SPANS_DATA_STREAM.rsplit('-', 1)[0]}-*"],
            "data_stream": {},
            # Above the built-in traces-*-* template (priority 100) of a default cluster.
            "priority": 200,
            "template": {"settings": _INDEX_SETTINGS, "mappings": SPAN_MAPPINGS},
            "_meta": meta,
        },
        "observer-traces-summaries": {
            "index_patterns": [f"{SUMMARY_INDEX_PREFIX}*"],
            "priority": 200,
            "template": {"settings": _INDEX_SETTINGS, "mappings": SUMMARY_MAPPINGS},
            "_meta": meta,
        },
    }


def summary_index(start_ns: int) -> str:
    day = datetime.fromtimestamp(start_ns // NS_PER_S, UTC)
    return f"{SUMMARY_INDEX_PREFIX}{day:%Y.%m.%d}"


async def install_templates(client: AsyncElasticsearch) -> None:
    """Install the templates, leaving alone one at this version (operators' edits stay)."""
    for name, body in index_templates().items():
        try:
            existing = await client.indices.get_index_template(name=name)
            current = existing["index_templates"][0]["index_template"]
            if current.get("_meta", {}).get("version") == TEMPLATE_VERSION:
                continue
        except NotFoundError:
            pass
        await client.indices.put_index_template(name=name, **body)
        log.info("Installed an index template.", extra={"template": name})


async def prune_spans(client: AsyncElasticsearch, older_than_ns: int) -> int:
    """Delete backing indices whose spans all expired; roll over a write index with any."""
    try:
        stream = await client.indices.get_data_stream(name=SPANS_DATA_STREAM)
    except NotFoundError:
        return 0
    backing = [index["index_name"] for index in stream["data_streams"][0]["indices"]]
    write_index = backing[-1]
    response = await client.search(
        index=SPANS_DATA_STREAM,
        size=0,
        aggs={
            "indices": {
                "terms": {"field": "_index", "size": 10_000},
                "aggs": {
                    "oldest": {"min": {"field": "start_ns"}},
                    "newest": {"max": {"field": "start_ns"}},
                },
            }
        },
    )
    ages = {
        bucket["key"]: (
            bucket["oldest"]["value"],
            bucket["newest"]["value"],
            bucket["doc_count"],
        )
        for bucket in response["aggregations"]["indices"]["buckets"]
    }
    expired: list[str] = []
    deleted_spans = 0
    for index in backing:
        oldest, newest, count = ages.get(index, (None, None, 0))
        if index == write_index:
            # Never deleted here: a bulk request routed to it before a rollover may
            # still be writing fresh spans. Rolled over when it holds an expired span,
            # so that a later prune deletes it once all of it has expired.
            if oldest is not None and oldest < older_than_ns:
                await client.indices.rollover(alias=SPANS_DATA_STREAM)
        elif newest is None or newest < older_than_ns:
            expired.append(index)
            deleted_spans += count
    if expired:
        await client.indices.delete(index=",".join(expired))
    return deleted_spans


async def prune_summaries(client: AsyncElasticsearch, older_than_ns: int) -> int:
    """Delete the summary indices of days that ended before the cutoff."""
    try:
        indices = await client.indices.get(index=f"{SUMMARY_INDEX_PREFIX}*")
    except NotFoundError:
        return 0
    cutoff = datetime.fromtimestamp(older_than_ns / NS_PER_S, UTC)
    expired = []
    for index in indices:
        try:
            day = datetime.strptime(index.removeprefix(SUMMARY_INDEX_PREFIX), "%Y.%m.%d")
        except ValueError:
            continue  # not one of ours
        if day.replace(tzinfo=UTC) + timedelta(days=1) <= cutoff:
            expired.append(index)
    if expired:
        await client.indices.delete(index=",".join(expired))
    return len(expired)
