"""The embedded trace store: one SQLite file, no server; the default for the demo and
small clusters.

A trace is one record, written as the trace core encoded it, so storing costs a few rows
per trace rather than rows and index entries per span (observer/collector/store/__init__.py
states the promises):

    traces          one row per trace: its time bounds, verdict, edges (JSON) and record
                    (its spans as the core packs them: each resource and the trace id
                    once, LZ4-compressed; native/src/encode.rs `trace_record`). A trace
                    written again (late spans) is merged: spans already stored are kept,
                    new ones added, verdict and edges replaced.
    trace_services  per trace, each service that sent spans: when its first and last
                    spans started and its longest span. Search reads these latest first
                    and checks the conditions on the trace's spans themselves, so
                    matching stays per span, as in Jaeger.
    operations      each (service, operation, kind) once, with the start of the latest
                    trace it was seen in, for the service and operation lists; retention
                    deletes it with the last such trace.

SQLite is blocking, so every call runs off the event loop: writes on one thread with its
own connection, reads on another, in WAL mode so that reads never wait for a write.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import orjson
from prometheus_client import CollectorRegistry

from observer.collector._core import EncodedTrace, operations_of, pack_record, unpack_record
from observer.collector.model import Edge, Span, SpanKind, Trace
from observer.collector.store import (
    Dependency,
    Operation,
    StoreMetrics,
    TraceQuery,
    merge_spans,
    searchable_tags,
    span_from_document,
    verdict_from_document,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3

# page_size and auto_vacuum must be chosen before the first table exists. A trace's row is
# about 2 KB: 4 KB pages hold one (half of the file unused); 8 KB pages hold three, while
# an insert into the trace id index (random keys) still rewrites only 8 KB.
# INCREMENTAL lets prune give freed pages back to the file system
# (sqlite.org/pragma.html#pragma_auto_vacuum).
_SCHEMA = """
PRAGMA page_size = 8192;
PRAGMA auto_vacuum = INCREMENTAL;
PRAGMA journal_mode = WAL;
CREATE TABLE IF NOT EXISTS traces (
    id INTEGER PRIMARY KEY,
    trace_id TEXT NOT NULL UNIQUE,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL,
    span_count INTEGER NOT NULL,
    verdict BLOB NOT NULL,
    late INTEGER NOT NULL,
    edges BLOB NOT NULL,
    record BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS traces_by_start ON traces (start_ns);
CREATE TABLE IF NOT EXISTS trace_services (
    trace INTEGER NOT NULL,
    service TEXT NOT NULL,
    first_start_ns INTEGER NOT NULL,
    last_start_ns INTEGER NOT NULL,
    longest_ns INTEGER NOT NULL,
    PRIMARY KEY (trace, service)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS trace_services_by_start ON trace_services (service, last_start_ns);
CREATE TABLE IF NOT EXISTS operations (
    service TEXT NOT NULL,
    operation TEXT NOT NULL,
    kind TEXT NOT NULL,
    last_trace_start_ns INTEGER NOT NULL,
    PRIMARY KEY (service, operation, kind)
) WITHOUT ROWID;
"""

_INSERT_TRACE = (
    "INSERT INTO traces (id, trace_id, start_ns, end_ns, span_count, verdict, late, edges, record) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPDATE_TRACE = (
    "UPDATE traces SET start_ns = ?, end_ns = ?, span_count = ?, verdict = ?, late = ?, "
    "edges = ?, record = ? WHERE id = ?"
)
_INSERT_SERVICE = "INSERT INTO trace_services VALUES (?, ?, ?, ?, ?)"
_UPSERT_OPERATION = (
    "INSERT INTO operations VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE "
    "SET last_trace_start_ns = max(last_trace_start_ns, excluded.last_trace_start_ns)"
)
# SQLite's default limit of host parameters in one statement is 32766; stay well below.
_IN_CHUNK = 500
_PRUNE_CHUNK = 1000

Result = TypeVar("Result")


class SqliteTraceStore:
    """Open with `await SqliteTraceStore.open(path)`; see the module docstring."""

    name = "embedded"
    # One record per trace (`EncodedTrace.record`), not a document per span.
    span_documents = False

    def __init__(
        self,
        writer: sqlite3.Connection,
        reader: sqlite3.Connection,
        write_thread: ThreadPoolExecutor,
        read_thread: ThreadPoolExecutor,
        registry: CollectorRegistry | None,
    ) -> None:
        self._writer = writer
        self._reader = reader
        self._write_thread = write_thread
        self._read_thread = read_thread
        self.metrics = StoreMetrics(self.name, registry)
        self._closed = False
        # The next traces.id: the writer thread alone assigns them (read at the first write).
        self._next_id: int | None = None

    @classmethod
    async def open(cls, path: Path, registry: CollectorRegistry | None = None) -> SqliteTraceStore:
        """Create or open the database file (and its directory) and its schema."""
        write_thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-trace-writer")
        read_thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-trace-reader")
        loop = asyncio.get_running_loop()
        writer = await loop.run_in_executor(write_thread, _connect_writer, path)
        reader = await loop.run_in_executor(read_thread, _connect_reader, path)
        log.info("Opened the embedded trace store.", extra={"path": str(path)})
        return cls(writer, reader, write_thread, read_thread, registry)

    async def _on(self, thread: ThreadPoolExecutor, call: Callable[[], Result]) -> Result:
        return await asyncio.get_running_loop().run_in_executor(thread, call)

    # --- writing ---------------------------------------------------------------------------

    async def write(self, traces: Sequence[EncodedTrace]) -> None:
        if not traces:
            return
        started = time.monotonic()
        await self._on(self._write_thread, lambda: self._write(traces))
        self.metrics.write_seconds.labels(self.name).observe(time.monotonic() - started)

    def _write(self, traces: Sequence[EncodedTrace]) -> None:
        connection = self._writer
        try:
            with _transaction(connection):
                stored, duplicates = self._write_in_transaction(traces)
        except sqlite3.Error as error:
            # The disk is full or the file damaged: nothing a caller could retry into success.
            self.metrics.drop(sum(t.span_count for t in traces), "sqlite_error", str(error))
            return
        self.metrics.stored(stored, duplicates)

    def _write_in_transaction(self, traces: Sequence[EncodedTrace]) -> tuple[int, int]:
        connection = self._writer
        # Traces stored before (late spans, a replay, another replica's emission): merged.
        stored_before: dict[str, tuple[int, bytes]] = {}
        ids = list({trace.trace_id: None for trace in traces})
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            for row_id, trace_id, record in connection.execute(
                f"SELECT id, trace_id, record FROM traces WHERE trace_id IN ({marks})",  # noqa: S608 - '?' marks only
                chunk,
            ):
                stored_before[trace_id] = (row_id, record)
        if self._next_id is None:
            (last,) = connection.execute("SELECT coalesce(max(id), 0) FROM traces").fetchone()
            self._next_id = last + 1
        trace_rows: list[tuple[Any, ...]] = []
        service_rows: list[tuple[Any, ...]] = []
        stored = duplicates = 0
        for trace in traces:
            earlier = stored_before.get(trace.trace_id)
            if earlier is None:
                row_id = self._next_id
                self._next_id += 1
                edges = orjson.dumps(trace.edges)
                trace_rows.append(
                    (
                        row_id,
                        trace.trace_id,
                        trace.start_ns,
                        trace.end_ns,
                        trace.span_count,
                        trace.verdict,
                        trace.late,
                        edges,
                        trace.record,
                    )
                )
                service_rows += [(row_id, *summary) for summary in trace.services]
                stored += trace.span_count
                stored_before[trace.trace_id] = (row_id, trace.record)
            else:
                row_id, record = earlier
                merged, added = _merged(record, trace.record)
                stored += added
                duplicates += trace.span_count - added
                packed = pack_record(orjson.dumps(merged))
                self._replace(row_id, trace, merged["spans"], packed)
                stored_before[trace.trace_id] = (row_id, packed)
        connection.executemany(_INSERT_TRACE, trace_rows)
        connection.executemany(_INSERT_SERVICE, service_rows)
        connection.executemany(_UPSERT_OPERATION, operations_of(traces))
        return stored, duplicates

    def _replace(
        self, row_id: int, trace: EncodedTrace, documents: list[dict[str, Any]], record: bytes
    ) -> None:
        """Rewrite a stored trace with its merged record (`documents` its spans), this
        emission's verdict and edges."""
        summaries: dict[str, list[int]] = {}
        for document in documents:
            start = document["start_ns"]
            duration = document["end_ns"] - start
            summary = summaries.get(document["service"])
            if summary is None:
                summaries[document["service"]] = [start, start, duration]
            else:
                summary[0] = min(summary[0], start)
                summary[1] = max(summary[1], start)
                summary[2] = max(summary[2], duration)
        connection = self._writer
        connection.execute(
            _UPDATE_TRACE,
            (
                min(d["start_ns"] for d in documents),
                max(d["end_ns"] for d in documents),
                len(documents),
                trace.verdict,
                trace.late,
                orjson.dumps(trace.edges),
                record,
                row_id,
            ),
        )
        connection.execute("DELETE FROM trace_services WHERE trace = ?", (row_id,))
        connection.executemany(
            _INSERT_SERVICE,
            [(row_id, service, *summary) for service, summary in summaries.items()],
        )

    async def prune(self, older_than_ns: int) -> None:
        spans = await self._on(self._write_thread, lambda: self._prune(older_than_ns))
        if spans:
            self.metrics.pruned.labels(self.name).inc(spans)
            log.info(
                "Deleted traces past the retention.",
                extra={"store": self.name, "spans": spans, "older_than_ns": older_than_ns},
            )

    def _prune(self, older_than_ns: int) -> int:
        connection = self._writer
        deleted = 0
        while True:
            # In chunks, so that the write lock is never held for long.
            with _transaction(connection):
                rows = connection.execute(
                    "SELECT id, span_count FROM traces WHERE start_ns < ? LIMIT ?",
                    (older_than_ns, _PRUNE_CHUNK),
                ).fetchall()
                if not rows:
                    break
                ids = [row_id for row_id, _ in rows]
                deleted += sum(count for _, count in rows)
                marks = ",".join("?" * len(ids))
                connection.execute(f"DELETE FROM trace_services WHERE trace IN ({marks})", ids)  # noqa: S608 - '?' marks only
                connection.execute(f"DELETE FROM traces WHERE id IN ({marks})", ids)  # noqa: S608
        with _transaction(connection):
            connection.execute(
                "DELETE FROM operations WHERE last_trace_start_ns < ?", (older_than_ns,)
            )
        if deleted:
            connection.execute("PRAGMA incremental_vacuum")
        return deleted

    # --- reading ---------------------------------------------------------------------------

    async def get_trace(self, trace_id: str) -> Trace | None:
        traces = await self._on(self._read_thread, lambda: self._load([trace_id]))
        return traces[0] if traces else None

    async def services(self) -> list[str]:
        rows = await self._on(
            self._read_thread,
            lambda: self._reader.execute(
                "SELECT DISTINCT service FROM operations ORDER BY service"
            ).fetchall(),
        )
        return [row[0] for row in rows]

    async def operations(self, service: str, span_kind: SpanKind | None = None) -> list[Operation]:
        sql = "SELECT operation, kind FROM operations WHERE service = ?"
        parameters: list[str] = [service]
        if span_kind is not None:
            sql += " AND kind = ?"
            parameters.append(span_kind.value)
        sql += " ORDER BY operation, kind"
        rows = await self._on(
            self._read_thread, lambda: self._reader.execute(sql, parameters).fetchall()
        )
        return [Operation(name, SpanKind(kind)) for name, kind in rows]

    async def find_traces(self, query: TraceQuery) -> list[Trace]:
        return await self._on(self._read_thread, lambda: self._find(query))

    def _find(self, query: TraceQuery) -> list[Trace]:
        # Candidates: traces where the service has spans in the window and one long enough,
        # latest last span first. A trace's latest matching span starts no later than its
        # service's last span, so once `limit` matches are found the scan stops at the
        # first candidate that cannot beat the earliest of them.
        conditions = ["s.service = ?"]
        parameters: list[object] = [query.service]
        for clause, value in (
            ("s.last_start_ns >= ?", query.start_min_ns),
            ("s.first_start_ns <= ?", query.start_max_ns),
            ("s.longest_ns >= ?", query.min_duration_ns),
        ):
            if value is not None:
                conditions.append(clause)
                parameters.append(value)
        sql = (
            "SELECT t.trace_id, s.last_start_ns, t.record FROM trace_services AS s "  # noqa: S608 - fixed clauses, values as '?'
            "JOIN traces AS t ON t.id = s.trace WHERE "
            + " AND ".join(conditions)
            + " ORDER BY s.last_start_ns DESC"
        )
        best: list[tuple[int, str]] = []  # (latest matching start, trace id), a min-heap
        with _transaction(self._reader, "DEFERRED"):
            for trace_id, last_start, record in self._reader.execute(sql, parameters):
                if len(best) >= query.limit and last_start < best[0][0]:
                    break
                latest = _latest_match(_span_documents(trace_id, record), query)
                if latest is None:
                    continue
                if len(best) < query.limit:
                    heapq.heappush(best, (latest, trace_id))
                elif latest > best[0][0]:
                    heapq.heapreplace(best, (latest, trace_id))
            ids = [trace_id for _, trace_id in sorted(best, reverse=True)]
            return self._load_in_transaction(ids)

    def _load(self, ids: list[str]) -> list[Trace]:
        with _transaction(self._reader, "DEFERRED"):  # one snapshot of every trace
            return self._load_in_transaction(ids)

    def _load_in_transaction(self, ids: list[str]) -> list[Trace]:
        """The traces with these ids, in this order; ids not stored are left out."""
        found: dict[str, Trace] = {}
        connection = self._reader
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            for trace_id, verdict, late, edges, record in connection.execute(
                f"SELECT trace_id, verdict, late, edges, record FROM traces WHERE trace_id IN ({marks})",  # noqa: S608
                chunk,
            ):
                found[trace_id] = Trace(
                    trace_id,
                    merge_spans(span_from_document(d) for d in _span_documents(trace_id, record)),
                    verdict_from_document(orjson.loads(verdict)),
                    [Edge(*edge) for edge in orjson.loads(edges)],
                    late=bool(late),
                )
        return [found[trace_id] for trace_id in ids if trace_id in found]

    async def dependencies(self, end_ns: int, lookback_ns: int) -> list[Dependency]:
        # edges: [[caller, callee, calls, errors, virtual], …]
        rows = await self._on(
            self._read_thread,
            lambda: self._reader.execute(
                "SELECT e.value ->> 0, e.value ->> 1, sum(e.value ->> 2), sum(e.value ->> 3) "
                "FROM traces, json_each(traces.edges) AS e "
                "WHERE traces.start_ns > ? AND traces.start_ns <= ? "
                "GROUP BY 1, 2 ORDER BY 1, 2",
                (end_ns - lookback_ns, end_ns),
            ).fetchall(),
        )
        return [Dependency(*row) for row in rows]

    async def close(self) -> None:
        """Close both connections; later calls fail, and closing again does nothing."""
        if self._closed:
            return
        self._closed = True
        await self._on(self._write_thread, self._writer.close)
        await self._on(self._read_thread, self._reader.close)
        self._write_thread.shutdown()
        self._read_thread.shutdown()


def _span_documents(trace_id: str, packed: bytes) -> list[dict[str, Any]]:
    """A stored record's spans as span documents (store/__init__.py `span_from_document`)."""
    record = orjson.loads(unpack_record(packed))
    resources = record["resources"]
    documents: list[dict[str, Any]] = record["spans"]
    for document in documents:
        document["trace_id"] = trace_id
        document["resource"] = resources[document["resource"]]
    return documents


def _merged(stored: bytes, new: bytes) -> tuple[dict[str, Any], int]:
    """The stored record (unpacked) with the new record's spans not among it; how many
    were new."""
    record = orjson.loads(unpack_record(stored))
    documents = record["spans"]
    resources = record["resources"]
    known = {(d["span_id"], d["kind"]) for d in documents}
    incoming = orjson.loads(unpack_record(new))
    # A new span's resource index, in the merged record's resources.
    moved: dict[int, int] = {}
    added = 0
    for document in incoming["spans"]:
        key = (document["span_id"], document["kind"])
        if key in known:
            continue
        known.add(key)
        index = document["resource"]
        if index not in moved:
            moved[index] = len(resources)
            resources.append(incoming["resources"][index])
        document["resource"] = moved[index]
        documents.append(document)
        added += 1
    return record, added


def _latest_match(documents: list[dict[str, Any]], query: TraceQuery) -> int | None:
    """When the latest span matching every condition of the query started, or None."""
    latest: int | None = None
    for document in documents:
        start = document["start_ns"]
        duration = document["end_ns"] - start
        if (
            document["service"] != query.service
            or (query.operation is not None and document["name"] != query.operation)
            or (query.min_duration_ns is not None and duration < query.min_duration_ns)
            or (query.max_duration_ns is not None and duration > query.max_duration_ns)
            or (query.start_min_ns is not None and start < query.start_min_ns)
            or (query.start_max_ns is not None and start > query.start_max_ns)
            or (latest is not None and start <= latest)
        ):
            continue
        if query.tags and not _has_tags(span_from_document(document), query):
            continue
        latest = start
    return latest


def _has_tags(span: Span, query: TraceQuery) -> bool:
    tags = searchable_tags(span)
    return all(tags.get(key) == value for key, value in query.tags.items())


@contextmanager
def _transaction(connection: sqlite3.Connection, mode: str = "IMMEDIATE") -> Iterator[None]:
    """One transaction: committed when the block ends, rolled back when it raises.

    IMMEDIATE takes the write lock at once; DEFERRED (for reads) gives one snapshot.
    """
    connection.execute(f"BEGIN {mode}")
    try:
        yield
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def _connect_writer(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Autocommit mode: transactions are begun and ended explicitly above.
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    if version not in (0, SCHEMA_VERSION):
        connection.close()
        raise RuntimeError(
            f"{path} holds trace store schema version {version}; this observer knows "
            f"version {SCHEMA_VERSION}. Move the file aside or use the matching observer."
        )
    connection.executescript(_SCHEMA)
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    # NORMAL in WAL mode: a power loss may forget the last transactions, never corrupt.
    connection.execute("PRAGMA synchronous = NORMAL")
    return connection


def _connect_reader(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA query_only = 1")
    connection.execute("PRAGMA busy_timeout = 5000")
    return connection
