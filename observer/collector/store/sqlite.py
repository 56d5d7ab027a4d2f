"""The embedded trace store: one SQLite file, no server; the default for the demo and
small clusters.

The schema follows the queries (observer/collector/store/__init__.py states the promises):

    spans       one row per span, unique by (trace_id, span_key) so a span written twice
                is stored once; indexed by (service, start) and (service, operation,
                start) for search. `tags` is the span's searchable tags as a JSON object
                of text; `body` the whole span as JSON.
    traces      one row per trace: its time bounds and verdict, replaced when the trace
                is written again (late spans).
    edges       the service-graph edges of each trace, replaced with the trace; summed
                by time window for /api/dependencies.
    operations  each (service, operation, kind) once, for the service and operation lists.

SQLite is blocking, so every call runs off the event loop: writes on one thread with its
own connection, reads on another, in WAL mode so that reads never wait for a write.
"""

from __future__ import annotations

import asyncio
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

from observer.collector.model import SpanKind, Trace
from observer.collector.store import (
    Dependency,
    Operation,
    ResourceTexts,
    StoreMetrics,
    TraceQuery,
    edge_document,
    edge_from_document,
    merge_spans,
    searchable_tags,
    span_document,
    span_document_id,
    span_from_document,
    trace_bounds,
    verdict_document,
    verdict_from_document,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

# auto_vacuum must be chosen before the first table exists; INCREMENTAL lets prune give
# freed pages back to the file system (sqlite.org/pragma.html#pragma_auto_vacuum).
_SCHEMA = """
PRAGMA auto_vacuum = INCREMENTAL;
PRAGMA journal_mode = WAL;
CREATE TABLE IF NOT EXISTS spans (
    trace_id TEXT NOT NULL,
    span_key TEXT NOT NULL,
    service TEXT NOT NULL,
    operation TEXT NOT NULL,
    kind TEXT NOT NULL,
    start_ns INTEGER NOT NULL,
    duration_ns INTEGER NOT NULL,
    tags TEXT NOT NULL,
    body BLOB NOT NULL,
    UNIQUE (trace_id, span_key)
);
CREATE INDEX IF NOT EXISTS spans_by_service ON spans (service, start_ns);
CREATE INDEX IF NOT EXISTS spans_by_operation ON spans (service, operation, start_ns);
CREATE TABLE IF NOT EXISTS traces (
    trace_id TEXT PRIMARY KEY,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL,
    verdict BLOB NOT NULL,
    late INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS traces_by_start ON traces (start_ns);
CREATE TABLE IF NOT EXISTS edges (
    trace_id TEXT NOT NULL,
    start_ns INTEGER NOT NULL,
    caller TEXT NOT NULL,
    callee TEXT NOT NULL,
    calls INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    virtual INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS edges_by_trace ON edges (trace_id);
CREATE INDEX IF NOT EXISTS edges_by_start ON edges (start_ns);
CREATE TABLE IF NOT EXISTS operations (
    service TEXT NOT NULL,
    operation TEXT NOT NULL,
    kind TEXT NOT NULL,
    PRIMARY KEY (service, operation, kind)
) WITHOUT ROWID;
"""

_INSERT_SPAN = (
    "INSERT OR IGNORE INTO spans "
    "(trace_id, span_key, service, operation, kind, start_ns, duration_ns, tags, body) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPSERT_TRACE = (
    "INSERT INTO traces (trace_id, start_ns, end_ns, verdict, late) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (trace_id) DO UPDATE SET start_ns = min(start_ns, excluded.start_ns), "
    "end_ns = max(end_ns, excluded.end_ns), verdict = excluded.verdict, "
    "late = late OR excluded.late"
)
_INSERT_EDGE = (
    "INSERT INTO edges (trace_id, start_ns, caller, callee, calls, errors, virtual) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
# SQLite's default limit of host parameters in one statement is 32766; stay well below.
_IN_CHUNK = 500
_PRUNE_CHUNK = 1000

Result = TypeVar("Result")


class SqliteTraceStore:
    """Open with `await SqliteTraceStore.open(path)`; see the module docstring."""

    name = "embedded"

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

    async def write(self, traces: Sequence[Trace]) -> None:
        if not traces:
            return
        started = time.monotonic()
        await self._on(self._write_thread, lambda: self._write(traces))
        self.metrics.write_seconds.labels(self.name).observe(time.monotonic() - started)

    def _write(self, traces: Sequence[Trace]) -> None:
        span_rows: list[tuple[Any, ...]] = []
        operations: set[tuple[str, str, str]] = set()
        trace_rows: list[tuple[Any, ...]] = []
        edge_rows: list[tuple[Any, ...]] = []
        unencodable = 0
        resource_texts: ResourceTexts = {}
        for trace in traces:
            if not trace.spans:
                continue
            for span in trace.spans:
                try:
                    body = orjson.dumps(span_document(span))
                    tags = orjson.dumps(searchable_tags(span, resource_texts)).decode()
                except (TypeError, orjson.JSONEncodeError):
                    unencodable += 1
                    continue
                key = span_document_id(span)[len(span.trace_id) :]
                span_rows.append(
                    (
                        span.trace_id,
                        key,
                        span.service,
                        span.name,
                        span.kind.value,
                        span.start_ns,
                        span.duration_ns,
                        tags,
                        body,
                    )
                )
                operations.add((span.service, span.name, span.kind.value))
            start_ns, end_ns = trace_bounds(trace)
            verdict = orjson.dumps(verdict_document(trace.verdict))
            trace_rows.append((trace.trace_id, start_ns, end_ns, verdict, trace.late))
            for edge in trace.edges:
                document = edge_document(edge)
                edge_rows.append(
                    (
                        trace.trace_id,
                        start_ns,
                        document["caller"],
                        document["callee"],
                        document["calls"],
                        document["errors"],
                        document["virtual"],
                    )
                )
        if unencodable:
            self.metrics.drop(unencodable, "unencodable", "a span value JSON cannot hold")
        connection = self._writer
        try:
            with _transaction(connection):
                stored = connection.executemany(_INSERT_SPAN, span_rows).rowcount
                connection.executemany(
                    "INSERT OR IGNORE INTO operations VALUES (?, ?, ?)", sorted(operations)
                )
                connection.executemany(_UPSERT_TRACE, trace_rows)
                # A trace written again brings its edges for the whole trace: replace them.
                connection.executemany(
                    "DELETE FROM edges WHERE trace_id = ?", [(row[0],) for row in trace_rows]
                )
                connection.executemany(_INSERT_EDGE, edge_rows)
        except sqlite3.Error as error:
            # The disk is full or the file damaged: nothing a caller could retry into success.
            self.metrics.drop(len(span_rows), "sqlite_error", str(error))
            return
        self.metrics.stored(stored, len(span_rows) - stored)

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
                ids = [
                    row[0]
                    for row in connection.execute(
                        "SELECT trace_id FROM traces WHERE start_ns < ? LIMIT ?",
                        (older_than_ns, _PRUNE_CHUNK),
                    )
                ]
                if not ids:
                    break
                marks = ",".join("?" * len(ids))
                deleted += connection.execute(
                    f"DELETE FROM spans WHERE trace_id IN ({marks})",  # noqa: S608 - '?' marks only
                    ids,
                ).rowcount
                connection.execute(f"DELETE FROM edges WHERE trace_id IN ({marks})", ids)  # noqa: S608
                connection.execute(f"DELETE FROM traces WHERE trace_id IN ({marks})", ids)  # noqa: S608
        if deleted:
            with _transaction(connection):
                connection.execute(
                    "DELETE FROM operations WHERE NOT EXISTS (SELECT 1 FROM spans "
                    "WHERE spans.service = operations.service "
                    "AND spans.operation = operations.operation AND spans.kind = operations.kind)"
                )
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
        conditions = ["service = ?"]
        parameters: list[object] = [query.service]
        if query.operation is not None:
            conditions.append("operation = ?")
            parameters.append(query.operation)
        for clause, value in (
            ("duration_ns >= ?", query.min_duration_ns),
            ("duration_ns <= ?", query.max_duration_ns),
            ("start_ns >= ?", query.start_min_ns),
            ("start_ns <= ?", query.start_max_ns),
        ):
            if value is not None:
                conditions.append(clause)
                parameters.append(value)
        for tag_key, tag_value in query.tags.items():
            conditions.append(
                "EXISTS (SELECT 1 FROM json_each(spans.tags) WHERE key = ? AND value = ?)"
            )
            parameters += [tag_key, tag_value]
        # Matching spans latest first, along the (service[, operation], start) index; the
        # first `limit` distinct traces met are those with the latest matching spans, so
        # the scan stops early instead of grouping every match of the window.
        sql = (
            "SELECT trace_id FROM spans WHERE "  # noqa: S608 - fixed clauses, values as '?'
            + " AND ".join(conditions)
            + " ORDER BY start_ns DESC"
        )
        with _transaction(self._reader, "DEFERRED"):
            ids: dict[str, None] = {}
            for (trace_id,) in self._reader.execute(sql, parameters):
                ids[trace_id] = None
                if len(ids) == query.limit:
                    break
            return self._load_in_transaction(list(ids))

    def _load(self, ids: list[str]) -> list[Trace]:
        with _transaction(self._reader, "DEFERRED"):  # one snapshot of spans, verdict, edges
            return self._load_in_transaction(ids)

    def _load_in_transaction(self, ids: list[str]) -> list[Trace]:
        """The traces with these ids, in this order; ids with no stored span are left out."""
        spans: dict[str, list[Any]] = {trace_id: [] for trace_id in ids}
        summaries: dict[str, tuple[bytes, int]] = {}
        edges: dict[str, list[Any]] = {trace_id: [] for trace_id in ids}
        connection = self._reader
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            for trace_id, body in connection.execute(
                f"SELECT trace_id, body FROM spans WHERE trace_id IN ({marks})",  # noqa: S608
                chunk,
            ):
                spans[trace_id].append(span_from_document(orjson.loads(body)))
            for trace_id, verdict, late in connection.execute(
                f"SELECT trace_id, verdict, late FROM traces WHERE trace_id IN ({marks})",  # noqa: S608
                chunk,
            ):
                summaries[trace_id] = (verdict, late)
            for trace_id, caller, callee, calls, errors, virtual in connection.execute(
                "SELECT trace_id, caller, callee, calls, errors, virtual FROM edges "  # noqa: S608
                f"WHERE trace_id IN ({marks}) ORDER BY rowid",
                chunk,
            ):
                edges[trace_id].append(
                    edge_from_document(
                        {
                            "caller": caller,
                            "callee": callee,
                            "calls": calls,
                            "errors": errors,
                            "virtual": bool(virtual),
                        }
                    )
                )
        traces = []
        for trace_id in ids:
            if not spans[trace_id]:
                continue
            trace = Trace(trace_id, merge_spans(spans[trace_id]), edges=edges[trace_id])
            if trace_id in summaries:
                verdict, late = summaries[trace_id]
                trace.verdict = verdict_from_document(orjson.loads(verdict))
                trace.late = bool(late)
            traces.append(trace)
        return traces

    async def dependencies(self, end_ns: int, lookback_ns: int) -> list[Dependency]:
        rows = await self._on(
            self._read_thread,
            lambda: self._reader.execute(
                "SELECT caller, callee, sum(calls), sum(errors) FROM edges "
                "WHERE start_ns > ? AND start_ns <= ? "
                "GROUP BY caller, callee ORDER BY caller, callee",
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
