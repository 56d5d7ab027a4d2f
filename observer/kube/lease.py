"""Leader election among the agents through a Lease, in the manner of client-go's.

One agent of the cluster holds the Lease (coordination.k8s.io/v1) and does the work that
must happen once per cluster (watching the kubelet's Events); the others look at it now
and then and take it over when its holder stops renewing it.

As in client-go's leaderelection package:

- Expiry is judged by this process's own clock: a Lease is expired when the record (holder,
  renew time, transitions) has not changed for ``lease_duration`` since *this* process
  first saw it as it is, so clocks that disagree between nodes do not matter.
- Every write carries the resourceVersion read before it; a 409 Conflict means another
  agent wrote first, and this one lost that round.
- A leader that has not managed to renew for ``lease_duration - renew_interval`` stops
  leading before anyone else may take over.
- A leader that stops gracefully releases the Lease (no holder), so that the next one
  takes over at its next look instead of after ``lease_duration``.

Cost, measured in docs/kubernetes-api-load.md: the leader writes the Lease once per
``renew_interval``; every other agent reads it once per ``renew_interval`` (jittered), from
the API server's watch cache (``resourceVersion=0``), which answers without etcd.

The Lease's annotations carry what the work needs handed over to the next leader (where
the Events watch resumes): `annotations` is written with every renewal, and `run` hands
the annotations found at acquisition to the work.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

import httpx2 as httpx

from observer.kube.client import ApiStatusError, JsonObject, KubeApi

log = logging.getLogger(__name__)

HTTP_NOT_FOUND = 404
HTTP_CONFLICT = 409

Work = Callable[[dict[str, str]], Coroutine[Any, Any, None]]
"""What the leader does until cancelled, given the annotations found on the Lease."""


def _micro_time(moment: datetime) -> str:
    """A Kubernetes MicroTime: RFC 3339 with microseconds."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElection:
    """Holds, renews and hands over one Lease; `leading` says whether this process holds it."""

    def __init__(
        self,
        api: KubeApi,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: float,
        renew_interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_interval = renew_interval
        self.clock = clock
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}"
        self.annotations: dict[str, str] = {}
        """Written on the Lease with every renewal (and the release)."""
        self.leading = False
        self.transitions = 0
        """Times this process became the leader."""
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._lease: JsonObject | None = None
        """The Lease as last read or written, for its resourceVersion."""

    async def run(self, work: Work) -> None:
        """Take the Lease when free, run `work` while holding it, and start over when it is
        lost; until cancelled, when a held Lease is released."""
        while True:
            found = await self._acquire()
            await self._lead(work, found)

    async def _acquire(self) -> dict[str, str]:
        while True:
            if await self._try_acquire_or_renew():
                assert self._lease is not None
                annotations = dict(self._lease["metadata"].get("annotations") or {})
                self.leading = True
                self.transitions += 1
                log.info(
                    "Became the leader.",
                    extra={"lease": f"{self.namespace}/{self.name}", "identity": self.identity},
                )
                return annotations
            await asyncio.sleep(self.renew_interval * random.uniform(1.0, 1.2))  # noqa: S311

    async def _lead(self, work: Work, annotations: dict[str, str]) -> None:
        """Run `work` while renewing; back to following when renewal fails for too long.
        Cancelled, or `work` failing, it hands the Lease over; lost, it has nothing to give."""
        self.annotations = dict(annotations)
        task = asyncio.create_task(work(annotations), name=f"leading {self.name}")
        hand_over = True
        try:
            await self._renew_until_lost(task)
            hand_over = task.done()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            self.leading = False
            if hand_over:
                await asyncio.shield(self._release())
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "The leader's work failed; the lease was given up.", exc_info=task.exception()
            )

    async def _renew_until_lost(self, task: asyncio.Task[None]) -> None:
        deadline = self.lease_duration - self.renew_interval
        renewed_at = self.clock()
        while not task.done():
            wait = self.renew_interval
            if self.clock() - renewed_at >= self.renew_interval:
                wait = min(1.0, self.renew_interval / 4)  # retrying a failed renewal
            done, _ = await asyncio.wait({task}, timeout=wait)
            if done:
                return
            if await self._try_acquire_or_renew():
                renewed_at = self.clock()
            elif self._holder() not in ("", self.identity):
                log.warning(
                    "Another agent holds the lease now; no longer leading.",
                    extra={"lease": f"{self.namespace}/{self.name}", "holder": self._holder()},
                )
                return
            elif self.clock() - renewed_at >= deadline:
                log.warning(
                    "Could not renew the lease in time; no longer leading.",
                    extra={"lease": f"{self.namespace}/{self.name}", "deadline": deadline},
                )
                return

    def _holder(self) -> str:
        spec = (self._lease or {}).get("spec") or {}
        return str(spec.get("holderIdentity") or "")

    async def _try_acquire_or_renew(self) -> bool:
        """One round of client-go's tryAcquireOrRenew; failures of the API are a lost round."""
        now = datetime.now(UTC)
        try:
            # A follower's look is served from the watch cache; a stale answer only makes
            # the write below fail with 409. The leader reads from etcd, as it writes next.
            params = None if self.leading else {"resourceVersion": "0"}
            current = await self.api.get(self.path, params)
        except ApiStatusError as error:
            if error.code != HTTP_NOT_FOUND:
                return self._failed(error)
            current = {}
        except (httpx.HTTPError, OSError, ValueError) as error:
            return self._failed(error)
        if not current:
            return await self._write("create", "POST", self._record(None, now))
        self._lease = current
        spec = current.get("spec") or {}
        holder = str(spec.get("holderIdentity") or "")
        observed = (holder, spec.get("renewTime"), spec.get("leaseTransitions"))
        if observed != self._observed:
            self._observed, self._observed_at = observed, self.clock()
        if (
            holder
            and holder != self.identity
            and self.clock() - self._observed_at < self.lease_duration
        ):
            return False
        return await self._write("update", "PUT", self._record(current, now))

    def _record(self, current: JsonObject | None, now: datetime) -> JsonObject:
        spec = (current or {}).get("spec") or {}
        ours = spec.get("holderIdentity") == self.identity
        transitions = int(spec.get("leaseTransitions") or 0)
        metadata: JsonObject = {"name": self.name, "namespace": self.namespace}
        if current is not None:
            metadata["resourceVersion"] = current["metadata"]["resourceVersion"]
            metadata["annotations"] = dict(current["metadata"].get("annotations") or {})
        if self.leading:
            metadata.setdefault("annotations", {}).update(self.annotations)
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": max(1, round(self.lease_duration)),
                "acquireTime": spec.get("acquireTime") if ours else _micro_time(now),
                "renewTime": _micro_time(now),
                "leaseTransitions": transitions if ours or current is None else transitions + 1,
            },
        }

    async def _write(self, verb: str, method: str, lease: JsonObject) -> bool:
        path = self.path if method == "PUT" else self.path.rpartition("/")[0]
        try:
            written = await self.api.request(verb, method, path, body=lease)
        except ApiStatusError as error:
            if error.code == HTTP_CONFLICT:
                return False  # another agent wrote first (or created it): it leads
            return self._failed(error)
        except (httpx.HTTPError, OSError, ValueError) as error:
            return self._failed(error)
        self._lease = written
        spec = written["spec"]
        self._observed = (spec["holderIdentity"], spec.get("renewTime"), spec["leaseTransitions"])
        self._observed_at = self.clock()
        return True

    async def _release(self) -> None:
        """Give the Lease up (no holder, a 1 s duration) with the last annotations."""
        if self._lease is None or self._holder() != self.identity:
            return
        lease = self._record(self._lease, datetime.now(UTC))
        lease["metadata"]["annotations"] = {
            **(self._lease["metadata"].get("annotations") or {}),
            **self.annotations,
        }
        lease["spec"].update(holderIdentity="", leaseDurationSeconds=1)
        try:
            self._lease = await self.api.request("update", "PUT", self.path, body=lease)
        except (ApiStatusError, httpx.HTTPError, OSError, ValueError) as error:
            log.warning(
                "Could not release the lease; another agent takes over once it expires.",
                extra={"lease": f"{self.namespace}/{self.name}", "error": str(error)},
            )
            return
        log.info("Released the lease.", extra={"lease": f"{self.namespace}/{self.name}"})

    def _failed(self, error: Exception) -> bool:
        log.warning(
            "Could not read or write the lease.",
            extra={"lease": f"{self.namespace}/{self.name}", "error": str(error)},
        )
        return False
