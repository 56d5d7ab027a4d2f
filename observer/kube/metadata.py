"""This node's pods and the cluster's namespaces, cached from watches, for enriching records.

Two `Reflector`s keep the cache: pods with ``fieldSelector=spec.nodeName=<node>`` (a
node's hundred pods, not the cluster's) and namespaces (for their labels). At steady
state the API server sees two long-lived watches per agent and no lists.

Pods are indexed by UID (log paths carry it) and by IP (spans are enriched by peer
address; pods on the host network share the node's address and are left out of that
index). A deleted pod stays for `deleted_pod_grace`, and after that while `in_use` names
it (its log files are still open or on disk), so that lines read after its deletion are
still enriched however late; a recreated pod (a StatefulSet's, same name) has a new UID
and its own entry.

The workload is read from the controller's ownerReference; two kinds are one step
further up: a ReplicaSet names its Deployment, a Job its CronJob. Those are fetched with
one GET each and remembered by UID (ReplicaSets are many and change often: watching them
all would cost every agent a cluster-wide watch).

The fields are Filebeat's (``add_kubernetes_metadata``), so that Kibana content made for
Filebeat works: ``kubernetes.labels.*`` with dots in keys replaced by ``_`` (Filebeat's
``labels.dedot``, on by default), ``kubernetes.namespace_labels.*``,
``kubernetes.annotations.*`` (an allow-list), ``kubernetes.node.name``,
``kubernetes.pod.ip``, ``kubernetes.{replicaset,deployment,statefulset,daemonset,job,
cronjob}.name``, ``container.image.name`` (the spec's image) and ``container.id`` (the
runtime's id, its ``containerd://`` scheme removed).

`version` changes whenever a pod's fields may have changed, so that a reader of many
files can look again only then, rather than for every line.

Pods of other nodes are known only when asked for: `fetch_pod` reads one with a GET (the
cluster-wide Events watcher enriches the Events of every node's pods) and keeps it for
`deleted_pod_grace`, an unknown one too, so that a pod's Events cost one GET per period.
They are not indexed by IP: spans come from this node's pods.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx2 as httpx
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from observer.kube.annotations import NO_HINTS, CollectionHints, collection_hints, steering
from observer.kube.annotations import problems as annotation_problems
from observer.kube.client import ApiStatusError, JsonObject, KubeApi
from observer.kube.reflector import Reflector
from observer.telemetry import metric_name

log = logging.getLogger(__name__)

Fields = dict[str, Any]

_WORKLOAD_KINDS = {
    "ReplicaSet": "replicaset",
    "StatefulSet": "statefulset",
    "DaemonSet": "daemonset",
    "Job": "job",
}
_PARENT_PATHS = {
    "ReplicaSet": "/apis/apps/v1/namespaces/{namespace}/replicasets/{name}",
    "Job": "/apis/batch/v1/namespaces/{namespace}/jobs/{name}",
}
"""The owners fetched once to find theirs: a ReplicaSet's Deployment, a Job's CronJob."""
_GRANDPARENT_KINDS = {"Deployment": "deployment", "CronJob": "cronjob"}
_READ_VERBS = frozenset({"get", "list", "watch"})
OWNER_RETRY_SECONDS = 30.0
"""After a failed GET of an owner, how long before it is tried again."""
FETCHED_PODS_MAX = 10_000
"""Pods of other nodes kept (`fetch_pod`), the least recently fetched forgotten first."""


def dedot(mapping: Mapping[str, str] | None) -> dict[str, str]:
    """Label or annotation keys with ``.`` replaced by ``_``, as Filebeat's ``dedot`` does, so
    that ``app.kubernetes.io/name`` does not become an object ``app`` in the mapping."""
    return {key.replace(".", "_"): value for key, value in (mapping or {}).items()}


def _runtime_id(container_id: str | None) -> str | None:
    """``containerd://0123...`` → ``0123...`` (the CRI gives ``<runtime>://<id>``)."""
    if not container_id:
        return None
    return container_id.rpartition("://")[2] or None


@dataclass(slots=True)
class PodEntry:
    """What the cache keeps of one pod: the few fields that go into records."""

    uid: str
    namespace: str
    name: str
    node: str
    ip: str | None
    ips: tuple[str, ...]
    labels: dict[str, str]
    annotations: dict[str, str]
    owner: tuple[str, str, str] | None
    """The controller's (kind, name, uid)."""
    images: dict[str, str]
    """Image by container name, from the spec (init and ephemeral containers too)."""
    container_ids: dict[tuple[str, int], str]
    """Runtime id by (container name, restart count): the current and the previous run."""
    steering: dict[str, str]
    """Its ``observer.dev/*`` annotations, prefix removed (`observer.kube.annotations`)."""
    deleted_at: float | None = field(default=None, compare=False)

    @classmethod
    def from_pod(cls, pod: JsonObject, annotations: Iterable[str]) -> PodEntry:
        metadata = pod["metadata"]
        spec = pod.get("spec") or {}
        status = pod.get("status") or {}
        images: dict[str, str] = {}
        for key in ("initContainers", "containers", "ephemeralContainers"):
            for container in spec.get(key) or ():
                if container.get("image"):
                    images[container["name"]] = container["image"]
        container_ids: dict[tuple[str, int], str] = {}
        for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
            for container in status.get(key) or ():
                # The kubelet writes the log of run N to N.log, N being the restart count.
                restarts = int(container.get("restartCount") or 0)
                current = _runtime_id(container.get("containerID"))
                if current:
                    container_ids[(container["name"], restarts)] = current
                previous = ((container.get("lastState") or {}).get("terminated") or {}).get(
                    "containerID"
                )
                previous = _runtime_id(previous)
                if previous and restarts > 0:
                    container_ids[(container["name"], restarts - 1)] = previous
        references = metadata.get("ownerReferences") or []
        controller = next((ref for ref in references if ref.get("controller")), None)
        if controller is None and references:
            controller = references[0]
        owner = (
            (controller["kind"], controller["name"], controller.get("uid", ""))
            if controller
            else None
        )
        kept = metadata.get("annotations") or {}
        ips = tuple(
            address["ip"] for address in status.get("podIPs") or () if address.get("ip")
        ) or ((status["podIP"],) if status.get("podIP") else ())
        return cls(
            uid=metadata["uid"],
            namespace=metadata.get("namespace", ""),
            name=metadata.get("name", ""),
            node=spec.get("nodeName", ""),
            ip=status.get("podIP") or None,
            ips=() if spec.get("hostNetwork") else ips,
            labels=dedot(metadata.get("labels")),
            annotations=dedot({key: kept[key] for key in annotations if key in kept}),
            owner=owner,
            images=images,
            container_ids=container_ids,
            steering=steering(metadata.get("annotations")),
        )


class PodMetadataCache:
    """Pods of one node and all namespaces, kept by watches; the metadata of log records.

    Never blocks its readers: `fields` answers from memory, None while a pod is unknown.
    """

    def __init__(
        self,
        api: KubeApi,
        node_name: str,
        deleted_pod_grace: float = 300.0,
        annotations: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
        in_use: Callable[[], Collection[str]] = frozenset,
    ) -> None:
        self.api = api
        self.node_name = node_name
        self.deleted_pod_grace = deleted_pod_grace
        self.annotations = tuple(annotations)
        self.clock = clock
        self.in_use = in_use
        """UIDs of pods whose log files are still being read: a deleted pod among them is
        kept past its grace period, until its files are drained."""
        self.pod_listeners: list[Callable[[str, JsonObject], None]] = []
        """Also called with every watch event of this node's pods (container restarts)."""
        self.pods_reflector = Reflector(
            api,
            "/api/v1/pods",
            {"fieldSelector": f"spec.nodeName={node_name}"},
            on_event=self._pod_event,
        )
        self.namespaces_reflector = Reflector(
            api, "/api/v1/namespaces", on_event=self._namespace_event
        )
        self.pods: dict[str, PodEntry] = {}
        """By UID, deleted pods included until their grace period ends."""
        self.pods_by_ip: dict[str, str] = {}
        """Pod IP → UID; a live pod wins over a deleted one that had the address."""
        self.fetched: collections.OrderedDict[str, tuple[PodEntry | None, float]] = (
            collections.OrderedDict()
        )
        """Pods of other nodes by UID, as read by `fetch_pod` (None: not found), and when."""
        self.namespace_labels: dict[str, dict[str, str]] = {}
        self.owners: dict[str, Fields] = {}
        """Workload fields by the UID of a ReplicaSet or Job, fetched once."""
        self._owner_failures: dict[str, float] = {}
        self._resolving: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.version = 0
        """Changes whenever the fields of some pod may have changed."""
        self.annotation_errors = 0
        """``observer.dev/*`` annotations ignored because they could not be understood."""
        self.synced = asyncio.Event()
        """Set once pods and namespaces have both been listed."""

    # --- running -------------------------------------------------------------------------

    async def run(self) -> None:
        """Watch until cancelled; API failures are retried by the reflectors, never raised."""
        tasks = [
            asyncio.create_task(self.pods_reflector.run(), name="kube pods"),
            asyncio.create_task(self.namespaces_reflector.run(), name="kube namespaces"),
            asyncio.create_task(self._housekeeping(), name="kube metadata housekeeping"),
        ]
        try:
            await self.pods_reflector.synced.wait()
            await self.namespaces_reflector.synced.wait()
            # The first pods' owners too (one GET per ReplicaSet or Job; failures are
            # handled inside), so that a backlog read at start names its workloads.
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
            self.synced.set()
            log.info(
                "Pod metadata is in sync with the API server.",
                extra={"node": self.node_name, "pods": len(self.pods)},
            )
            await asyncio.gather(*tasks)
        finally:
            for task in (*tasks, *self._tasks):
                task.cancel()
            await asyncio.gather(*tasks, *self._tasks, return_exceptions=True)

    async def _housekeeping(self) -> None:
        interval = max(0.2, min(10.0, self.deleted_pod_grace / 4))
        while True:
            await asyncio.sleep(interval)
            self.prune()
            for entry in list(self.pods.values()):
                self._resolve_owner(entry)

    def prune(self) -> None:
        """Forget pods deleted longer than the grace period ago whose log files are not being
        read any more, the owners no pod names any more, and deleted namespaces no pod is in."""
        now = self.clock()
        reading: Collection[str] | None = None
        for uid, entry in list(self.pods.items()):
            if entry.deleted_at is not None and now - entry.deleted_at >= self.deleted_pod_grace:
                if reading is None:
                    reading = self.in_use()
                if uid in reading:
                    continue  # lines of it are still to be read: they need its metadata
                del self.pods[uid]
                self._unindex_ips(entry)
        for uid in [
            uid for uid, (_, at) in self.fetched.items() if now - at >= self.deleted_pod_grace
        ]:
            del self.fetched[uid]
        owners = {
            entry.owner[2]
            for entry in (*self.pods.values(), *(fetched for fetched, _ in self.fetched.values()))
            if entry is not None and entry.owner
        }
        for uid in [uid for uid in self.owners if uid not in owners]:
            del self.owners[uid]
        for uid in [uid for uid in self._owner_failures if uid not in owners]:
            del self._owner_failures[uid]
        if self.namespaces_reflector.synced.is_set():
            kept = {entry.namespace for entry in self.pods.values()}
            kept.update(
                item["metadata"]["name"] for item in self.namespaces_reflector.store.values()
            )
            for name in [name for name in self.namespace_labels if name not in kept]:
                del self.namespace_labels[name]

    # --- what readers ask ----------------------------------------------------------------

    def pod(self, uid: str) -> PodEntry | None:
        entry = self.pods.get(uid)
        if entry is None and uid in self.fetched:
            return self.fetched[uid][0]
        return entry

    def knows(self, uid: str) -> bool:
        """Whether the pod is cached, or was fetched (found or not) within the grace period."""
        return uid in self.pods or uid in self.fetched

    async def fetch_pod(self, namespace: str, name: str, uid: str) -> PodEntry | None:
        """A pod not in the cache (another node's), read with one GET and its owner's, kept
        for `deleted_pod_grace`; None when it is gone or is another pod of that name.
        API failures answer None and are not remembered (the next Event asks again)."""
        try:
            found = await self.api.get(f"/api/v1/namespaces/{namespace}/pods/{name}")
        except ApiStatusError as error:
            if error.code != 404:
                return self._fetch_failed(namespace, name, error)
            found = {}
        except (httpx.HTTPError, OSError, ValueError) as error:
            return self._fetch_failed(namespace, name, error)
        entry = None
        if (found.get("metadata") or {}).get("uid") == uid:
            entry = PodEntry.from_pod(found, self.annotations)
            owner = entry.owner
            if (
                owner is not None
                and owner[0] in _PARENT_PATHS
                and owner[2] not in self.owners
                and owner[2] not in self._resolving
            ):
                self._resolving.add(owner[2])
                await self._fetch_owner(owner[0], namespace, owner[1], owner[2])
        self.fetched[uid] = (entry, self.clock())
        self.fetched.move_to_end(uid)
        if len(self.fetched) > FETCHED_PODS_MAX:
            self.fetched.popitem(last=False)
        return entry

    def _fetch_failed(self, namespace: str, name: str, error: Exception) -> PodEntry | None:
        log.warning(
            "Could not read a pod of another node; its records go without its metadata.",
            extra={"namespace": namespace, "pod": name, "error": str(error)},
        )
        return None

    def collection(self, uid: str, container: str) -> CollectionHints:
        """What the pod's ``observer.dev/*`` annotations ask for this container's logs."""
        entry = self.pods.get(uid)
        if entry is None or not entry.steering:
            return NO_HINTS
        return collection_hints(entry.steering, container)

    def pod_by_ip(self, ip: str) -> PodEntry | None:
        uid = self.pods_by_ip.get(ip)
        return None if uid is None else self.pods.get(uid)

    def fields(self, uid: str, container: str, restart_count: int) -> tuple[Fields, Fields] | None:
        """The ``kubernetes`` and ``container`` parts of a record from this pod's container,
        built anew (callers may keep them); None when the pod is unknown."""
        entry = self.pod(uid)
        if entry is None:
            return None
        kubernetes: Fields = {
            "namespace": entry.namespace,
            "pod": {"name": entry.name, "uid": entry.uid},
            "container": {"name": container},
            "node": {"name": entry.node},
        }
        if entry.ip:
            kubernetes["pod"]["ip"] = entry.ip
        if entry.labels:
            kubernetes["labels"] = entry.labels
        if entry.annotations:
            kubernetes["annotations"] = entry.annotations
        namespace_labels = self.namespace_labels.get(entry.namespace)
        if namespace_labels:
            kubernetes["namespace_labels"] = namespace_labels
        kubernetes.update(self._workload(entry))
        container_fields: Fields = {"restart_count": restart_count}
        image = entry.images.get(container)
        if image:
            container_fields["image"] = {"name": image}
        runtime_id = entry.container_ids.get((container, restart_count))
        if runtime_id:
            container_fields["id"] = runtime_id
        return kubernetes, container_fields

    def _workload(self, entry: PodEntry) -> Fields:
        if entry.owner is None:
            return {}
        kind, name, uid = entry.owner
        if kind in _PARENT_PATHS and uid in self.owners:
            return self.owners[uid]
        if kind in _WORKLOAD_KINDS:
            return {_WORKLOAD_KINDS[kind]: {"name": name}}
        return {}

    # --- watch events --------------------------------------------------------------------

    def _pod_event(self, kind: str, pod: JsonObject) -> None:
        self._update_pod(kind, pod)
        for listener in self.pod_listeners:
            listener(kind, pod)

    def _update_pod(self, kind: str, pod: JsonObject) -> None:
        uid = pod["metadata"]["uid"]
        old = self.pods.get(uid)
        if kind == "DELETED":
            if old is not None and old.deleted_at is None:
                old.deleted_at = self.clock()
            return
        entry = PodEntry.from_pod(pod, self.annotations)
        if old is not None and old == entry and old.deleted_at is None:
            return  # a status change that no record shows (conditions, probes...)
        if entry.steering and (old is None or old.steering != entry.steering):
            self._check_steering(entry)
        self.pods[uid] = entry
        if old is not None:
            self._unindex_ips(old)
        for ip in entry.ips:
            self.pods_by_ip[ip] = uid
        self.version += 1
        self._resolve_owner(entry)

    def _check_steering(self, entry: PodEntry) -> None:
        """Annotations under our prefix that will be ignored: a warning, and a count."""
        found = annotation_problems(entry.steering)
        if found:
            self.annotation_errors += len(found)
            log.warning(
                "A pod's observer.dev annotations cannot all be used; those are ignored.",
                extra={"namespace": entry.namespace, "pod": entry.name, "problems": found},
            )

    def _unindex_ips(self, entry: PodEntry) -> None:
        for ip in entry.ips:
            if self.pods_by_ip.get(ip) == entry.uid:
                del self.pods_by_ip[ip]
                # Another pod that had the address (deleted, in its grace period) gets it back.
                for other in self.pods.values():
                    if other.uid != entry.uid and ip in other.ips:
                        self.pods_by_ip[ip] = other.uid
                        if other.deleted_at is None:
                            break

    def _namespace_event(self, kind: str, namespace: JsonObject) -> None:
        name = namespace["metadata"]["name"]
        if kind == "DELETED":
            # Pods in their grace period still name it; their records keep its labels.
            return
        labels = dedot(namespace["metadata"].get("labels"))
        if self.namespace_labels.get(name) != labels:
            self.namespace_labels[name] = labels
            self.version += 1

    # --- owners --------------------------------------------------------------------------

    def _resolve_owner(self, entry: PodEntry) -> None:
        """Fetch a ReplicaSet or Job named by a pod once, in the background, to find its owner."""
        if entry.owner is None:
            return
        kind, name, uid = entry.owner
        if kind not in _PARENT_PATHS or uid in self.owners or uid in self._resolving:
            return
        failed = self._owner_failures.get(uid)
        if failed is not None and self.clock() - failed < OWNER_RETRY_SECONDS:
            return
        self._resolving.add(uid)
        task = asyncio.create_task(self._fetch_owner(kind, entry.namespace, name, uid))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fetch_owner(self, kind: str, namespace: str, name: str, uid: str) -> None:
        fields: Fields = {_WORKLOAD_KINDS[kind]: {"name": name}}
        try:
            parent = await self.api.get(_PARENT_PATHS[kind].format(namespace=namespace, name=name))
        except ApiStatusError as error:
            if error.code != 404:
                self._owner_failed(kind, namespace, name, uid, error)
                return
            parent = {}  # gone: the pod's own reference is all there is
        except (httpx.HTTPError, OSError, ValueError) as error:
            self._owner_failed(kind, namespace, name, uid, error)
            return
        finally:
            self._resolving.discard(uid)
        metadata = parent.get("metadata") or {}
        # Same name, another object (deleted and recreated): its owner is not this pod's.
        if metadata.get("uid") == uid:
            for reference in metadata.get("ownerReferences") or ():
                if reference.get("controller") and reference.get("kind") in _GRANDPARENT_KINDS:
                    fields[_GRANDPARENT_KINDS[reference["kind"]]] = {"name": reference["name"]}
        self._owner_failures.pop(uid, None)
        self.owners[uid] = fields
        self.version += 1

    def _owner_failed(self, kind: str, namespace: str, name: str, uid: str, error: Any) -> None:
        self._owner_failures[uid] = self.clock()
        log.warning(
            "Could not read a pod's owner; its workload is left out until a retry succeeds.",
            extra={
                "kind": kind,
                "namespace": namespace,
                "name": name,
                "error": str(error),
                "retry_in_seconds": OWNER_RETRY_SECONDS,
            },
        )


class KubeMetrics(Collector):
    """The cache's size and the API traffic it causes, read at scrape time."""

    def __init__(self, cache: PodMetadataCache, others: Mapping[str, Reflector] | None = None):
        self.cache = cache
        self.others = dict(others or {})
        """Other reflectors on the same connection, by resource (the kubelet's Events)."""

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        cache = self.cache
        size = GaugeMetricFamily(
            metric_name("kubernetes_cache_objects"),
            "Objects in the metadata cache (deleted pods included during their grace period).",
            labels=["resource"],
        )
        size.add_metric(["pods"], len(cache.pods))
        size.add_metric(["namespaces"], len(cache.namespace_labels))
        size.add_metric(["owners"], len(cache.owners))
        for resource, other in self.others.items():
            size.add_metric([resource], len(other.store))
        yield size
        reflectors = (
            ("pods", cache.pods_reflector),
            ("namespaces", cache.namespaces_reflector),
            *self.others.items(),
        )
        relists = CounterMetricFamily(
            metric_name("kubernetes_relists"),
            "Full lists of a resource: one at start, then only after 410 Gone.",
            labels=["resource"],
        )
        restarts = CounterMetricFamily(
            metric_name("kubernetes_watch_restarts"),
            "Watches the server ended normally and that were resumed.",
            labels=["resource"],
        )
        down = GaugeMetricFamily(
            metric_name("kubernetes_watch_down_seconds"),
            "How long the list/watch of a resource has been failing (0 while it works): "
            "the metadata added to records is at most this stale.",
            labels=["resource"],
        )
        for resource, reflector in reflectors:
            relists.add_metric([resource], reflector.relists)
            restarts.add_metric([resource], reflector.watch_restarts)
            down.add_metric([resource], reflector.down_seconds())
        yield relists
        yield restarts
        yield down
        requests = CounterMetricFamily(
            metric_name("kubernetes_api_requests"),
            "Requests to the Kubernetes API server, by verb.",
            labels=["verb"],
        )
        # The read verbs from the start: a first direct GET (a pod whose lines came before
        # its watch event) must not add a series, and rate() then counts it from 0.
        counted = cache.api.requests_by_verb
        for verb in sorted(_READ_VERBS | counted.keys()):
            requests.add_metric([verb], counted[verb])
        yield requests
        yield CounterMetricFamily(
            metric_name("kubernetes_annotation_errors"),
            "observer.dev/* pod annotations ignored because they could not be understood.",
            value=cache.annotation_errors,
        )
