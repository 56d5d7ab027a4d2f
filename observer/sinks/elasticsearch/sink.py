"""The agent's Elasticsearch sink: every document stored exactly once, or dead-lettered.

How each promise is kept:

- **Exactly once.** A document's ``_id`` is derived from where it was read (node, file
  fingerprint, byte offset) and it is written with ``create``. A replay after a crash or
  a retry after an unknown outcome sends the same ``_id``; Elasticsearch answers 409
  (``version_conflict_engine_exception``), which counts as already delivered.
  Known limit (elastic/elasticsearch#44794): ids are unique per backing index, so a retry
  that crosses a data stream rollover can store a second copy. Retries after an unknown
  outcome that land in another backing index than the one written before are counted as
  possible duplicates.
- **Per-item outcomes.** Items refused with 429 or 5xx are re-sent alone, with jittered
  exponential backoff. So are items refused 401 or 403 (no privilege on their data
  stream): that is the cluster's configuration, not the document's fault, so they wait
  for it to be fixed, logged as an error, rather than being dead-lettered (as Logstash
  does). A whole request that fails (429, 5xx, 401, 403, connection, timeout) is re-sent
  whole; 413 splits it. Items refused for good (mapping conflicts and other 4xx) go to
  the dead-letter data stream with the reason, or to a local file if that refuses them
  too; then they are settled, so the checkpoint moves on.
- **Backpressure.** Documents held (buffered and in flight) are bounded in bytes; when
  the bound is reached `submit` waits, the agent's queue fills, and reading stops. The
  log files are the buffer.

Bodies are serialised once with orjson, each document's bytes kept for retries, and
gzip-compressed at a fast level.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import logging
import os
import random
import time
import weakref
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from elastic_transport import ConnectionError as TransportConnectionError
from elastic_transport import ConnectionTimeout
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from observer.config import ElasticsearchSinkConfig
from observer.sinks import Document
from observer.sinks.elasticsearch.connection import RefusedError, transport
from observer.sinks.elasticsearch.setup import install
from observer.telemetry import metric_name

log = logging.getLogger(__name__)

_BULK_TARGET = "/_bulk?filter_path=errors,items.*.status,items.*.error,items.*._index"
_STILL_WAITING_LOG_INTERVAL = 30.0
_NOT_PERMITTED = (401, 403)


def document_id(node: str, source: str, offset: int) -> str:
    """20 URL-safe characters, like Elasticsearch's own ids, from where the line was read."""
    return _short_id(f"{node}|{source}|{offset}")


def _short_id(seed: str) -> str:
    digest = hashlib.blake2b(seed.encode(), digest_size=15).digest()
    return base64.urlsafe_b64encode(digest).decode()


def _field(document: Document, path: tuple[str, ...]) -> Any:
    value: Any = document
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


@dataclass(eq=False, slots=True)
class _Batch:
    remaining: int
    done: asyncio.Future[None]


@dataclass(eq=False, slots=True)
class _Item:
    id: str
    target: str
    line: bytes
    """The bulk action and the document, each ending in a newline."""
    source_start: int
    batch: _Batch
    counted_bytes: int
    """Bytes this item holds against the sink's bound (0 for dead letters: already counted)."""
    refusal: str | None = None
    """For a dead letter, the error type that refused the original document."""

    @property
    def source(self) -> bytes:
        return self.line[self.source_start : -1]


@dataclass(slots=True)
class _Refusal:
    item: _Item
    status: int
    type: str
    reason: str


class _RequestFailedError(Exception):
    """The whole request failed; whether Elasticsearch stored some items is unknown."""

    def __init__(self, reason: str, status: int | None, retry_after: float | None = None):
        super().__init__(reason)
        self.status = status
        self.retry_after = retry_after


class _TooLargeError(Exception):
    """413: the request body exceeds http.max_content_length."""


@dataclass
class _Metrics:
    registry: CollectorRegistry | None
    requests: Histogram = field(init=False)
    items: Counter = field(init=False)
    request_bytes: Counter = field(init=False)
    dead_lettered: Counter = field(init=False)
    possible_duplicates: Counter = field(init=False)
    held_bytes: Gauge = field(init=False)
    backpressure: Gauge = field(init=False)
    blocked_seconds: Counter = field(init=False)
    unavailable_seconds: Gauge = field(init=False)

    def __post_init__(self) -> None:
        registry = self.registry
        self.requests = Histogram(
            metric_name("elasticsearch_request_duration_seconds"),
            "_bulk requests by outcome: ok, retryable (429, 5xx, connection), too_large, error.",
            ["outcome"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.items = Counter(
            metric_name("elasticsearch_items"),
            "Bulk item outcomes: created, duplicate (409: already delivered), retried, "
            "dead_lettered; with the HTTP status.",
            ["outcome", "status"],
            registry=registry,
        )
        self.request_bytes = Counter(
            metric_name("elasticsearch_request_bytes"),
            "Bytes of _bulk bodies sent, before and after compression.",
            ["encoding"],
            registry=registry,
        )
        self.dead_lettered = Counter(
            metric_name("records_dead_lettered"),
            "Documents Elasticsearch refused for good, by error type and where they were kept.",
            ["reason", "store"],
            registry=registry,
        )
        self.possible_duplicates = Counter(
            metric_name("elasticsearch_possible_duplicates"),
            "Documents re-sent after an unknown outcome that landed in another backing index "
            "than before: a rollover in between may have stored them twice.",
            registry=registry,
        )
        self.held_bytes = Gauge(
            metric_name("sink_held_bytes"),
            "Bytes of documents a sink holds: buffered or in flight.",
            ["sink"],
            registry=registry,
        )
        self.backpressure = Gauge(
            metric_name("sink_backpressure"),
            "1 while a sink is full and reading waits for it.",
            ["sink"],
            registry=registry,
        )
        self.blocked_seconds = Counter(
            metric_name("sink_blocked_seconds"),
            "Time reading waited for a full sink.",
            ["sink"],
            registry=registry,
        )
        self.unavailable_seconds = Gauge(
            metric_name("elasticsearch_unavailable_seconds"),
            "How long Elasticsearch has been refusing requests (0 when it accepts them).",
            registry=registry,
        )


_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, _Metrics] = weakref.WeakKeyDictionary()
"""One set per registry, shared by the sinks that write to it (logs, kubelet events)."""


def _metrics_for(registry: CollectorRegistry | None) -> _Metrics:
    if registry is None:
        return _Metrics(None)
    if registry not in _METRICS:
        _METRICS[registry] = _Metrics(registry)
    return _METRICS[registry]


class ElasticsearchSink:
    def __init__(
        self,
        settings: ElasticsearchSinkConfig,
        node_name: str,
        state_dir: Path,
        registry: CollectorRegistry | None = None,
        name: str = "elasticsearch",
        id_from: str | None = None,
    ) -> None:
        """`id_from`: the dotted path of a document field that identifies the record where
        it came from (records that are not lines of a file, such as kubelet Events); the
        ``_id`` is derived from it instead of from the file position."""
        self.name = name
        self.settings = settings
        self.node_name = node_name
        self.dead_letter_file = state_dir / settings.dead_letter.file
        self.connection = transport(settings)
        self.metrics = _metrics_for(registry)
        self._id_path = tuple(id_from.split(".")) if id_from else None
        bulk = settings.bulk
        self._max_held_bytes = bulk.max_bytes * (bulk.max_in_flight + 1)
        self._slots = asyncio.Semaphore(bulk.max_in_flight)
        self._buffer: list[_Item] = []
        self._buffer_bytes = 0
        self._held_bytes = 0
        # Read at scrape time: settling is per document, a gauge update per document is
        # most of what settling a response costs.
        sink = weakref.ref(self)
        self.metrics.held_bytes.labels(name).set_function(
            lambda: held._held_bytes if (held := sink()) is not None else 0
        )
        self._space = asyncio.Event()
        self._flush_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._prepared = asyncio.Event()
        self._preparing: asyncio.Task[None] | None = None
        self._unavailable_since: float | None = None
        self._last_waiting_log = 0.0
        self._not_permitted_logged_at: dict[str, float] = {}
        self._not_permitted_unlogged: collections.Counter[str] = collections.Counter()
        self._backing_index: dict[str, str] = {}
        self._data_stream_fields: dict[str, dict[str, str]] = {}
        stream = settings.data_stream
        self._default_target = self._target(stream.namespace)
        self._route_path = (
            tuple(stream.namespace_from.split(".")) if stream.namespace_from else None
        )

    # --- the Sink protocol ---------------------------------------------------------------

    async def start(self) -> None:
        if self.settings.setup.enabled:
            self._preparing = asyncio.create_task(self._prepare(), name="elasticsearch-setup")
        else:
            self._prepared.set()

    def ready(self) -> bool:
        return self._prepared.is_set() and self._unavailable_since is None

    async def submit(self, documents: list[Document], source: str) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not documents:
            done.set_result(None)
            return done
        batch = _Batch(len(documents), done)
        items = [self._item(document, source, batch) for document in documents]
        size = sum(item.counted_bytes for item in items)
        await self._wait_for_space()
        self._held_bytes += size
        self._buffer.extend(items)
        self._buffer_bytes += size
        bulk = self.settings.bulk
        if self._buffer_bytes >= bulk.max_bytes or len(self._buffer) >= bulk.max_documents:
            self._dispatch()
        elif self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(
                bulk.flush_interval, self._dispatch
            )
        return done

    async def stop(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
        tasks = list(self._tasks)
        if self._preparing is not None:
            tasks.append(self._preparing)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.connection.close()

    # --- building requests ---------------------------------------------------------------

    def _target(self, namespace: str) -> str:
        stream = self.settings.data_stream
        target = f"{stream.type}-{stream.dataset}-{namespace}"
        self._data_stream_fields[target] = {
            "type": stream.type,
            "dataset": stream.dataset,
            "namespace": namespace,
        }
        return target

    def _route(self, document: Document) -> str:
        if self._route_path is None:
            return self._default_target
        value = _field(document, self._route_path)
        if not isinstance(value, str) or not value:
            return self._default_target
        # Data stream namespaces: lowercase, no '-', none of \ / * ? " < > | , # : or space.
        namespace = "".join(c if c.isalnum() or c in "._" else "_" for c in value.lower())
        target = f"{self.settings.data_stream.type}-{self.settings.data_stream.dataset}-{namespace}"
        if target not in self._data_stream_fields:
            self._target(namespace)
        return target

    def _item(self, document: Document, source: str, batch: _Batch) -> _Item:
        target = self._route(document)
        document["data_stream"] = self._data_stream_fields[target]
        if self._id_path is None:
            item_id = document_id(self.node_name, source, document["log"]["offset"])
        else:
            item_id = _short_id(str(_field(document, self._id_path)))
        action = b'{"create":{"_index":"%s","_id":"%s"}}\n' % (target.encode(), item_id.encode())
        line = action + orjson.dumps(document) + b"\n"
        return _Item(item_id, target, line, len(action), batch, len(line))

    async def _wait_for_space(self) -> None:
        if self._held_bytes < self._max_held_bytes:
            return
        self.metrics.backpressure.labels(self.name).set(1)
        started = time.monotonic()
        while self._held_bytes >= self._max_held_bytes:
            self._space.clear()
            await self._space.wait()
        self.metrics.blocked_seconds.labels(self.name).inc(time.monotonic() - started)
        self.metrics.backpressure.labels(self.name).set(0)

    def _dispatch(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        items, self._buffer, self._buffer_bytes = self._buffer, [], 0
        for chunk in _chunks(items, self.settings.bulk.max_bytes, self.settings.bulk.max_documents):
            task = asyncio.create_task(self._deliver(chunk))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # --- delivering ----------------------------------------------------------------------

    async def _deliver(self, items: list[_Item]) -> None:
        try:
            await self._prepared.wait()
            async with self._slots:
                await self._send_until_settled(items, dead_letters=False)
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # a bug or a full disk: fail the batches, loudly
            for item in items:
                if not item.batch.done.done():
                    item.batch.done.set_exception(error)
            raise

    async def _send_until_settled(self, items: list[_Item], dead_letters: bool) -> None:
        """Send until every item is created, found a duplicate, or refused for good."""
        attempt = 0
        backing_before_unknown_outcome: dict[str, str] | None = None
        while items:
            try:
                response = await self._bulk(items)
            except _TooLargeError:
                if len(items) == 1:
                    refusal = _Refusal(
                        items[0],
                        413,
                        "request_entity_too_large",
                        "document larger than http.max_content_length",
                    )
                    await self._refused([refusal], dead_letters)
                    return
                half = len(items) // 2
                await self._send_until_settled(items[:half], dead_letters)
                await self._send_until_settled(items[half:], dead_letters)
                return
            except _RequestFailedError as error:
                self._unavailable(error)
                if backing_before_unknown_outcome is None:
                    backing_before_unknown_outcome = dict(self._backing_index)
                await asyncio.sleep(self._backoff(attempt, error.retry_after))
                attempt += 1
                continue
            self._available()
            items = await self._settle_items(
                items, response, dead_letters, backing_before_unknown_outcome
            )
            if items:
                await asyncio.sleep(self._backoff(attempt, None))
                attempt += 1

    async def _settle_items(
        self,
        items: list[_Item],
        response: dict[str, Any],
        dead_letters: bool,
        backing_before: dict[str, str] | None,
    ) -> list[_Item]:
        """Settle what the response settles; return the items to send again."""
        outcomes = self.metrics.items
        if not response.get("errors") and backing_before is None and not dead_letters:
            for item in items:
                self._settled(item)
            outcomes.labels("created", "201").inc(len(items))
            self._note_backing_indices(items, response)
            return []
        retry: list[_Item] = []
        refused: list[_Refusal] = []
        for item, result in zip(items, response["items"], strict=True):
            outcome = next(iter(result.values()))
            status = outcome["status"]
            if dead_letters and (status < 300 or status == 409):
                self.metrics.dead_lettered.labels(item.refusal, "elasticsearch").inc()
                self._settled(item)
            elif status < 300:
                backing = outcome.get("_index")
                if (
                    backing_before is not None
                    and backing_before.get(item.target, backing) != backing
                ):
                    self.metrics.possible_duplicates.inc()
                if backing is not None:
                    self._backing_index[item.target] = backing
                outcomes.labels("created", str(status)).inc()
                self._settled(item)
            elif status == 409:
                outcomes.labels("duplicate", "409").inc()
                self._settled(item)
            elif status == 429 or status >= 500:
                outcomes.labels("retried", str(status)).inc()
                retry.append(item)
            elif status in _NOT_PERMITTED and not dead_letters:
                outcomes.labels("retried", str(status)).inc()
                self._not_permitted(item.target, status, outcome.get("error") or {})
                retry.append(item)
            else:
                error = outcome.get("error") or {}
                refused.append(
                    _Refusal(
                        item,
                        status,
                        str(error.get("type", "unknown")),
                        str(error.get("reason", "")),
                    )
                )
        if refused:
            await self._refused(refused, dead_letters)
        return retry

    def _note_backing_indices(self, items: list[_Item], response: dict[str, Any]) -> None:
        """Each target's backing index, as the last of its documents found it."""
        noted: set[str] = set()
        for item, result in zip(reversed(items), reversed(response["items"]), strict=True):
            if item.target in noted:
                continue
            backing = next(iter(result.values())).get("_index")
            if backing is not None:
                self._backing_index[item.target] = backing
                noted.add(item.target)

    async def _bulk(self, items: list[_Item]) -> dict[str, Any]:
        headers = {
            "content-type": "application/vnd.elasticsearch+x-ndjson; compatible-with=8",
            "accept": "application/vnd.elasticsearch+json; compatible-with=8",
        }
        self.metrics.request_bytes.labels("identity").inc(sum(len(item.line) for item in items))
        level = self.settings.bulk.compression_level
        if level:
            # In a thread: zlib lets go of the GIL while it compresses, so the event loop
            # goes on reading and answering meanwhile, on another core when there is one.
            body = await asyncio.to_thread(_gzip, [item.line for item in items], level)
            headers["content-encoding"] = "gzip"
            self.metrics.request_bytes.labels("gzip").inc(len(body))
        else:
            body = b"".join([item.line for item in items])
        started = time.monotonic()
        outcome = "error"
        try:
            response = await self.connection.perform_request(
                "POST", _BULK_TARGET, headers=headers, body=body
            )
            status = response.meta.status
            if 200 <= status < 300:
                outcome = "ok"
                result: dict[str, Any] = response.body
                return result
            if status == 413:
                outcome = "too_large"
                raise _TooLargeError
            outcome = "retryable"
            error = RefusedError(status, response.body, response.meta.headers)
            if status != 429 and status < 500:
                # 400 for a body we built, 401/403 for credentials or privileges: nothing
                # a document did, so documents are not dead-lettered; retried until fixed.
                log.error(
                    "Elasticsearch refused a _bulk request as a whole; retrying. Check the "
                    "credentials, privileges and version of the cluster.",
                    extra={"status": status, "error": str(error)},
                )
            raise _RequestFailedError(str(error), status, _retry_after(response.meta.headers))
        except (TransportConnectionError, ConnectionTimeout) as error:
            outcome = "retryable"
            raise _RequestFailedError(_cause(error), None) from error
        finally:
            self.metrics.requests.labels(outcome).observe(time.monotonic() - started)

    def _settled(self, item: _Item) -> None:
        if item.counted_bytes:
            self._held_bytes -= item.counted_bytes
            if self._held_bytes < self._max_held_bytes:
                self._space.set()
        batch = item.batch
        batch.remaining -= 1
        if batch.remaining == 0 and not batch.done.done():
            batch.done.set_result(None)

    # --- dead letters --------------------------------------------------------------------

    async def _refused(self, refusals: list[_Refusal], dead_letters: bool) -> None:
        """Keep refused documents with the reason, then settle them."""
        if dead_letters:
            # The dead-letter data stream refused them too: the local file is the last resort.
            self._write_dead_letter_file(refusals)
            for refusal in refusals:
                self._settled(refusal.item)
            return
        for refusal in refusals:
            log.warning(
                "Elasticsearch refused a document for good; it goes to the dead-letter store.",
                extra={
                    "target": refusal.item.target,
                    "document_id": refusal.item.id,
                    "status": refusal.status,
                    "error_type": refusal.type,
                    "reason": refusal.reason[:500],
                },
            )
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        batch = _Batch(len(refusals), done)
        letters = [self._dead_letter_item(refusal, batch) for refusal in refusals]
        await self._send_until_settled(letters, dead_letters=True)
        for refusal in refusals:
            self.metrics.items.labels("dead_lettered", str(refusal.status)).inc()
            self._settled(refusal.item)

    def _dead_letter_item(self, refusal: _Refusal, batch: _Batch) -> _Item:
        item = refusal.item
        original = item.source
        try:
            where = orjson.loads(original).get("log", {})
        except orjson.JSONDecodeError:
            where = {}
        letter = {
            "@timestamp": datetime.now(UTC).isoformat(),
            "message": f"{refusal.type}: {refusal.reason}",
            "error": {"type": refusal.type, "message": refusal.reason, "code": str(refusal.status)},
            "event": {"original": original.decode(errors="replace")},
            "observer": {"target": item.target, "document_id": item.id},
            "log": {"file": where.get("file"), "offset": where.get("offset")},
        }
        target = self.settings.dead_letter.data_stream
        action = b'{"create":{"_index":"%s","_id":"%s"}}\n' % (target.encode(), item.id.encode())
        line = action + orjson.dumps(letter) + b"\n"
        return _Item(item.id, target, line, len(action), batch, 0, refusal.type)

    def _write_dead_letter_file(self, refusals: list[_Refusal]) -> None:
        self.dead_letter_file.parent.mkdir(parents=True, exist_ok=True)
        with self.dead_letter_file.open("ab") as out:
            for refusal in refusals:
                letter = orjson.loads(refusal.item.source)
                letter["error"]["dead_letter_store_refusal"] = {
                    "status": refusal.status,
                    "type": refusal.type,
                    "reason": refusal.reason,
                }
                out.write(orjson.dumps(letter) + b"\n")
                self.metrics.dead_lettered.labels(letter["error"]["type"], "file").inc()
                log.error(
                    "The dead-letter data stream refused a document too; kept it in the local "
                    "dead-letter file.",
                    extra={
                        "file": str(self.dead_letter_file),
                        "document_id": refusal.item.id,
                        "reason": refusal.reason[:500],
                    },
                )
            out.flush()
            os.fsync(out.fileno())

    # --- availability --------------------------------------------------------------------

    async def _prepare(self) -> None:
        attempt = 0
        while True:
            try:
                await install(self.connection, self.settings)
            except RefusedError as error:
                if error.status in (401, 403):
                    log.error(
                        "Elasticsearch refused to install the index templates; documents wait. "
                        "Check the credentials and their privileges (manage_index_templates, "
                        "manage_ilm), or turn setup off for a cluster managed elsewhere.",
                        extra={"status": error.status, "error": str(error)},
                    )
                else:
                    log.warning(
                        "Could not install the index templates yet; documents wait until it works.",
                        extra={"status": error.status, "error": str(error)},
                    )
            except (TransportConnectionError, ConnectionTimeout) as error:
                log.warning(
                    "Could not install the index templates yet; documents wait until it works.",
                    extra={"error": _cause(error)},
                )
            else:
                self._prepared.set()
                return
            await asyncio.sleep(self._backoff(attempt, None))
            attempt += 1

    def _unavailable(self, error: _RequestFailedError) -> None:
        now = time.monotonic()
        if self._unavailable_since is None:
            self._unavailable_since = now
            self._last_waiting_log = now
            log.warning(
                "Elasticsearch is not accepting documents; reading waits for it (the log "
                "files are the buffer, nothing is dropped).",
                extra={"status": error.status, "error": str(error)},
            )
        elif now - self._last_waiting_log >= _STILL_WAITING_LOG_INTERVAL:
            self._last_waiting_log = now
            log.warning(
                "Still waiting for Elasticsearch.",
                extra={
                    "waiting_seconds": round(now - self._unavailable_since, 1),
                    "error": str(error),
                },
            )
        self.metrics.unavailable_seconds.set(now - self._unavailable_since)

    def _not_permitted(self, target: str, status: int, error: dict[str, Any]) -> None:
        """Log documents refused for privileges, at most once per interval per data stream."""
        self._not_permitted_unlogged[target] += 1
        now = time.monotonic()
        last = self._not_permitted_logged_at.get(target)
        if last is not None and now - last < _STILL_WAITING_LOG_INTERVAL:
            return
        self._not_permitted_logged_at[target] = now
        log.error(
            "Elasticsearch refused documents for lack of privileges on their data stream; "
            "they are held and retried, not dead-lettered. Give the agent's credentials "
            "create_doc and auto_configure on it.",
            extra={
                "data_stream": target,
                "status": status,
                "error": f"{error.get('type', 'unknown')}: {error.get('reason', '')}"[:500],
                "documents_since_last_log": self._not_permitted_unlogged.pop(target),
            },
        )

    def _available(self) -> None:
        if self._unavailable_since is None:
            return
        waited = time.monotonic() - self._unavailable_since
        self._unavailable_since = None
        self.metrics.unavailable_seconds.set(0)
        log.info(
            "Elasticsearch accepts documents again; reading resumes.",
            extra={"waited_seconds": round(waited, 1)},
        )

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Exponential with equal jitter: spread out, but never a tight loop."""
        retry = self.settings.retry
        ceiling = min(retry.max_backoff, retry.initial_backoff * 2.0 ** min(attempt, 30))
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not secrets
        if retry_after is not None:
            delay = max(delay, min(retry_after, retry.max_backoff))
        return delay


def _cause(error: TransportConnectionError | ConnectionTimeout) -> str:
    """What went wrong on the connection: the transport's `str()` is only "TLS error" or
    "Connection error" when it does not retry itself; its message has the cause (e.g.
    CERTIFICATE_VERIFY_FAILED)."""
    return f"{type(error).__name__}: {error.message}"[:500]


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value: str | None = headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


_GZIP_PIECE_BYTES = 256 << 10


def _gzip(lines: list[bytes], level: int) -> bytes:
    """The lines gzipped, in pieces of about 256 KiB: the uncompressed body (max_bytes) is
    never built whole, and a compressing thread takes the GIL back a few times per body,
    not once per line (each time can wait a switch interval for the event loop's thread)."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)  # 31: the gzip format
    compressed: list[bytes] = []
    piece: list[bytes] = []
    piece_bytes = 0
    for line in lines:
        piece.append(line)
        piece_bytes += len(line)
        if piece_bytes >= _GZIP_PIECE_BYTES:
            compressed.append(compressor.compress(b"".join(piece)))
            piece, piece_bytes = [], 0
    compressed.append(compressor.compress(b"".join(piece)))
    compressed.append(compressor.flush())
    return b"".join(compressed)


def _chunks(items: list[_Item], max_bytes: int, max_documents: int) -> Iterator[list[_Item]]:
    chunk: list[_Item] = []
    size = 0
    for item in items:
        if chunk and (size + len(item.line) > max_bytes or len(chunk) >= max_documents):
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += len(item.line)
    if chunk:
        yield chunk
