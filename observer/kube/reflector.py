"""A list+watch cache of one kind of object, in the manner of client-go's Reflector.

It lists once, then watches from the list's resourceVersion with bookmarks, so that at
steady state the API server sees one long-lived watch per resource and no lists. A watch
that ends normally (the server's timeout) is resumed from the last resourceVersion seen;
only `410 Gone` (the version was compacted out of etcd) forces a relist. Failures back off
exponentially with jitter, capped, so that thousands of agents do not stampede a
recovering API server. See the Kubernetes API concepts, "Efficient detection of changes".

One departure from client-go: when no API server could be reached for `UNREACHABLE_RELIST`
seconds, a resource the API server serves from its watch cache is listed at once rather
than watched from the old version. Such an outage is an API server restart (a connection
blip is shorter; with several API servers behind one address, another answers at once),
and a restarted server's watch cache begins at its start: it would answer that watch
`410 Gone` and the list would follow anyway (measured: one doomed watch per resource per
agent after every API server restart, in docs/kubernetes-api-load.md).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx2 as httpx

from observer.kube.client import ApiStatusError, JsonObject, KubeApi

log = logging.getLogger(__name__)

EventHandler = Callable[[str, JsonObject], None]
"""Called with ADDED, MODIFIED or DELETED and the object, after the store is updated."""

HTTP_GONE = 410
UNREACHABLE_RELIST = 10.0
"""Seconds without reaching the API server after which a watch-cached resource lists."""


class Reflector:
    def __init__(
        self,
        api: KubeApi,
        path: str,
        params: Mapping[str, str] | None = None,
        on_event: EventHandler | None = None,
        backoff_initial: float = 0.8,
        backoff_max: float = 30.0,
        keep: Callable[[JsonObject], bool] | None = None,
        resource_version: str = "",
        clock: Callable[[], float] = time.monotonic,
        remember: bool = True,
        watch_cached: bool = True,
    ) -> None:
        self.api = api
        self.path = path
        self.params = dict(params or {})
        self.on_event = on_event
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.keep = keep
        """Objects it rejects are neither stored nor handled: a condition on a field the
        server cannot select on (an Event's ``source.host``)."""
        self.store: dict[str, JsonObject] = {}
        """Objects by metadata.uid, as the server last described them (with `remember`)."""
        self.remember = remember
        """False: objects are handed to `on_event` and not kept (the cluster's Events, which
        the handler reduces to what it needs); a relist then reports no deletions."""
        self.watch_cached = watch_cached
        """The server serves this resource from its watch cache (all but Events, by
        default): after a long failure to connect, list rather than resume (module
        docstring)."""
        self.synced = asyncio.Event()
        self.resource_version = resource_version
        """Where the next watch starts; given at construction, it resumes a saved position
        without a list (a `410 Gone` then lists as usual)."""
        self.listing = False
        """True while the handler sees the objects of a list (not changes from a watch)."""
        self.relists = 0
        self.watch_restarts = 0
        self.clock = clock
        self.failing_since: float | None = None
        self._unreachable_since: float | None = None
        """When connecting first failed, in the present failure (None: it connects)."""
        """When the list/watch last stopped working (None while it works): the age of
        what the store knows is at most this old."""

    def down_seconds(self) -> float:
        """How long the list/watch has not worked: 0 while it does."""
        return 0.0 if self.failing_since is None else self.clock() - self.failing_since

    async def run(self) -> None:
        """List and watch until cancelled; never raises for API failures."""
        failures = 0
        while True:
            unreachable = self._unreachable_since
            if (
                self.watch_cached
                and unreachable is not None
                and self.clock() - unreachable >= UNREACHABLE_RELIST
            ):
                self.resource_version = ""
            try:
                if not self.resource_version:
                    await self._relist()
                await self._watch()
                failures = 0
            except ApiStatusError as error:
                if error.code == HTTP_GONE:
                    log.info(
                        "Watch resourceVersion expired; listing again.",
                        extra={"path": self.path, "resource_version": self.resource_version},
                    )
                    self.resource_version = ""
                    continue
                failures += 1
                await self._back_off(failures, error)
            except (httpx.HTTPError, OSError, ValueError) as error:
                if isinstance(error, httpx.ConnectError) and self._unreachable_since is None:
                    self._unreachable_since = self.clock()
                failures += 1
                await self._back_off(failures, error)

    async def _relist(self) -> None:
        listed = await self.api.list(self.path, {**self.params, "resourceVersion": "0"})
        self.relists += 1
        keep = self.keep
        fresh = {
            item["metadata"]["uid"]: item
            for item in listed.get("items", [])
            if keep is None or keep(item)
        }
        gone = [uid for uid in self.store if uid not in fresh]
        self.listing = True
        try:
            for uid in gone:
                self._apply("DELETED", self.store[uid])
            for item in fresh.values():
                self._apply("MODIFIED" if item["metadata"]["uid"] in self.store else "ADDED", item)
        finally:
            self.listing = False
        self.resource_version = listed["metadata"]["resourceVersion"]
        self._working()
        self.synced.set()
        log.debug(
            "Listed objects.",
            extra={
                "path": self.path,
                "count": len(fresh),
                "resource_version": self.resource_version,
            },
        )

    async def _watch(self) -> None:
        params = {
            **self.params,
            "resourceVersion": self.resource_version,
            "allowWatchBookmarks": "true",
        }
        async for kind, item in self.api.watch(self.path, params, opened=self._working):
            if kind != "BOOKMARK":
                self._apply(kind, item)
            self.resource_version = item["metadata"]["resourceVersion"]
        self.watch_restarts += 1

    def _working(self) -> None:
        self.failing_since = None
        self._unreachable_since = None

    def _apply(self, kind: str, item: JsonObject) -> None:
        if self.keep is not None and not self.keep(item):
            return
        if self.remember:
            uid = item["metadata"]["uid"]
            if kind == "DELETED":
                self.store.pop(uid, None)
            else:
                self.store[uid] = item
        if self.on_event is not None:
            self.on_event(kind, item)

    async def _back_off(self, failures: int, error: Any) -> None:
        if self.failing_since is None:
            self.failing_since = self.clock()
        delay = min(self.backoff_max, self.backoff_initial * 2 ** (failures - 1))
        delay *= random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not cryptography
        log.warning(
            "Kubernetes list/watch failed; retrying.",
            extra={"path": self.path, "error": str(error), "retry_in_seconds": round(delay, 2)},
        )
        await asyncio.sleep(delay)
