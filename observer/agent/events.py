"""The agent's kubelet events source: Events and container terminations → records → sinks.

What comes in (`observer.kube.events.KubeletEvents` for the kubelet's Events, the
metadata cache's pod watch for restarts) becomes records (`observer.agent.event_records`)
that go to their own sinks: an Elasticsearch sink writing the ``kubernetes.event`` data
stream with ``_id`` from ``event.id``, and the file sink if one is configured.

Whose Events (``scope``):

- ``node``: each agent watches the kubelet's Events and keeps its node's.
- ``cluster``: the agents elect one through a Lease (`observer.kube.lease`); the leader
  watches every node's kubelet Events, and the others none. A pod of another node is read
  with one GET when its first Event arrives (`PodMetadataCache.fetch_pod`, kept for the
  deleted-pod grace period); while that GET is out, the Events behind it wait, in order.
  Events found by a list (at the first start, or after `410 Gone`) are not worth a GET
  each: they carry what the cache knows. Container terminations stay each agent's own.

Once each:

- An Event the kubelet repeats is one object whose ``count`` grows. An update that does
  not raise the count (its count was seen already) makes no record; each count seen is one
  occurrence with its own ``event.id``. A restart, a relist, or another agent's copy sends
  an ``event.id`` already stored, which Elasticsearch answers with 409.
- Resuming: the watch's resourceVersion is saved once every record up to it is
  acknowledged by every sink; a restart watches on from there without listing. Records
  not acknowledged by then are made again from the watch. With scope ``node`` it is
  saved in ``<state_dir>/kube-events.json`` (write, fsync, rename, fsync the directory, as
  the checkpoints are); with ``cluster``, in an annotation of the Lease, written with each
  renewal and at the hand-over, where the next leader finds it.

Counting: occurrences seen by the watch (not those listed at start, which happened before)
feed the metrics: Events by reason; probe failures by namespace, workload, pod and probe
kind (pods of this node only, each series dropped when its pod leaves the cache: the
issue asks for the pod, and a node holds a bounded number of them); container restarts
by reason and OOM kills, by namespace and workload.

Ownership and bounds: records wait in a deque of at most `queue_records`; past that new
records are dropped, counted and logged once per episode. The delivery task owns a batch
once it takes it, and submits the same list to every sink (submitting waits while a sink
is full).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from observer.agent.event_records import event_record, termination_record
from observer.agent.kubelet_messages import (
    ACTION_OOM_KILLED,
    ACTION_PROBE_ERRORED,
    ACTION_PROBE_FAILED,
)
from observer.agent.state_file import StateFile
from observer.config import AgentConfig, KubeEventsConfig
from observer.kube.client import JsonObject
from observer.kube.events import KubeletEvents, event_count, event_host
from observer.kube.lease import LeaderElection
from observer.kube.metadata import PodMetadataCache
from observer.kube.workload import workload_of
from observer.sinks import Sink
from observer.sinks.file import FileSink
from observer.telemetry import metric_name

log = logging.getLogger(__name__)

Document = dict[str, Any]

STATE_FILE = "kube-events.json"
FORMAT_VERSION = 1
SOURCE = "kube-events"
"""The `source` the sinks are given; ids come from ``event.id``, not from it."""
BATCH_RECORDS = 500
SAVE_INTERVAL = 1.0
SEEN_EVENTS_MAX = 50_000
"""Event uids whose last count is remembered (the kubelet's Events live an hour)."""
RESUME_ANNOTATION = "observer.dev/kube-events-resource-version"
"""On the Lease (scope cluster): where the next leader's watch resumes."""
FETCH_BACKLOG_MAX = 1_000
"""Events waiting behind a pod's GET; past this they go on with what the cache knows."""
FETCH_TIMEOUT = 5.0


class ResumePoint:
    """The saved resourceVersion of the Events watch, written atomically."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / STATE_FILE
        self._file = StateFile(self.path)
        self.saved = ""

    def load(self) -> str:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return ""
        try:
            state = orjson.loads(raw)
            if state.get("version") != FORMAT_VERSION:
                raise ValueError(f"unknown format version {state.get('version')!r}")
            self.saved = str(state["resource_version"])
        except (orjson.JSONDecodeError, ValueError, KeyError, TypeError, AttributeError) as error:
            aside = self.path.with_suffix(".corrupt")
            self.path.replace(aside)
            log.error(
                "The kubelet events resume file is corrupt; moved it aside, and listing the "
                "node's Events again (records already stored are not duplicated).",
                extra={"path": str(self.path), "moved_to": str(aside), "error": str(error)},
            )
            self.saved = ""
        return self.saved

    async def save(self, resource_version: str) -> None:
        """Write it, the disk's waits in a thread; writes stay in order."""
        if not resource_version or resource_version == self.saved:
            return
        await self._file.write(
            orjson.dumps({"version": FORMAT_VERSION, "resource_version": resource_version})
        )
        self.saved = resource_version


@dataclass(eq=False, slots=True)
class _Sent:
    """A batch given to the sinks; `covers`: the resourceVersion it completes, if any."""

    covers: str | None
    settled: bool = False


_Series = TypeVar("_Series", bound=tuple[str, ...])


@dataclass(slots=True)
class EventCounts:
    records: collections.Counter[str] = field(default_factory=collections.Counter)
    """Records handed to the sinks, by provider (kubelet, pod-status)."""
    dropped: int = 0
    without_metadata: int = 0
    events_by_reason: collections.Counter[str] = field(default_factory=collections.Counter)
    probe_failures: collections.Counter[tuple[str, str, str, str]] = field(
        default_factory=collections.Counter
    )
    """By (namespace, workload, pod, probe kind)."""
    probe_failure_pods: dict[tuple[str, str, str, str], set[str]] = field(default_factory=dict)
    """The pod uids behind each series, to drop it once they are all gone."""
    restarts: collections.Counter[tuple[str, str, str]] = field(default_factory=collections.Counter)
    """By (namespace, workload, reason)."""
    oom_kills: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    workload_pods: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    """The pod uids behind the restart and OOM series of each (namespace, workload)."""


class KubeletEventSource:
    """Watches, makes records, delivers them, and saves where to resume (module docstring)."""

    def __init__(
        self,
        settings: KubeEventsConfig,
        metadata: PodMetadataCache,
        sinks: list[Sink],
        state_dir: Path,
    ) -> None:
        self.settings = settings
        self.metadata = metadata
        self.sinks = sinks
        self.node = metadata.node_name
        self.resume = ResumePoint(state_dir)
        self.election: LeaderElection | None = None
        if settings.scope == "cluster":
            election = settings.leader_election
            self.election = LeaderElection(
                metadata.api,
                election.namespace,
                election.lease_name,
                election.identity or f"{self.node}_{socket.gethostname()}_{os.getpid()}",
                election.lease_duration,
                election.renew_interval,
            )
            self.watch = KubeletEvents(metadata.api, None, self._event)
        else:
            self.watch = KubeletEvents(
                metadata.api, self.node, self._event, resource_version=self.resume.load()
            )
        metadata.pod_listeners.append(self._pod)
        self.counts = EventCounts()
        self._buffer: collections.deque[Document] = collections.deque()
        self._wake = asyncio.Event()
        self._incoming: collections.deque[tuple[str, JsonObject, bool]] = collections.deque()
        """Events waiting, in order, for their pod's GET (`_needs_pod`)."""
        self._incoming_wake = asyncio.Event()
        self._pending: collections.deque[_Sent] = collections.deque()
        self._safe = self.resume.saved
        """Every record up to this resourceVersion is acknowledged by every sink."""
        self._seen: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._restarts: dict[tuple[str, str], int] = {}
        self._dropping = False
        self._tasks: list[asyncio.Task[None]] = []

    # --- running -------------------------------------------------------------------------

    async def start(self) -> None:
        watching = self.watch.run() if self.election is None else self.election.run(self._lead)
        self._tasks = [
            asyncio.create_task(watching, name="kubelet events watch"),
            asyncio.create_task(self._deliver(), name="kubelet events delivery"),
            asyncio.create_task(self._save_periodically(), name="kubelet events resume"),
            asyncio.create_task(self._enrich(), name="kubelet events pod reads"),
        ]
        for task in self._tasks:
            task.add_done_callback(_stopped)

    async def stop(self, drain_for: float) -> None:
        """Stop watching (a leader hands the Lease over with its resume point), deliver what
        is held for up to `drain_for` seconds, save the resume point."""
        watch, *others = self._tasks
        self._advance()
        self._hand_over()
        watch.cancel()
        await asyncio.wait({watch})
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain_for):
                while self._buffer or self._pending or self._incoming:
                    self._wake.set()
                    await asyncio.sleep(0.05)
        for task in others:
            task.cancel()
        await asyncio.wait(others)
        self._advance()
        if self.election is None:
            await self.resume.save(self._safe)
        if self._buffer or self._pending or self._incoming:
            log.warning(
                "Stopping with kubelet event records not acknowledged; they are made again "
                "from the watch at the next start.",
                extra={
                    "records": len(self._buffer) + len(self._incoming),
                    "batches": len(self._pending),
                },
            )

    async def _deliver(self) -> None:
        while True:
            if not self._buffer:
                self._wake.clear()
                await self._wake.wait()
                continue
            take = min(BATCH_RECORDS, len(self._buffer))
            batch = [self._buffer.popleft() for _ in range(take)]
            # Emptied: everything the watch handed over up to its version is in a batch.
            sent = _Sent(None if self._buffer else self.watch.resource_version)
            self._pending.append(sent)
            waiting = [await sink.submit(batch, SOURCE) for sink in self.sinks]
            asyncio.gather(*waiting).add_done_callback(functools.partial(self._settled, sent))

    def _settled(self, sent: _Sent, acknowledgements: asyncio.Future[list[None]]) -> None:
        if acknowledgements.cancelled():
            return
        error = acknowledgements.exception()
        if error is not None:
            # A sink failed (a bug, a full disk); the resume point stays before this batch.
            log.error("A sink failed kubelet event records.", exc_info=error)
            return
        sent.settled = True
        while self._pending and self._pending[0].settled:
            covers = self._pending.popleft().covers
            if covers:
                self._safe = covers

    def _advance(self) -> None:
        """Nothing held: the watch's own version is safe (bookmarks, other nodes' Events)."""
        held = self._buffer or self._pending or self._incoming
        if not held and self.watch.resource_version:
            self._safe = self.watch.resource_version

    def _hand_over(self) -> None:
        """Scope cluster: the resume point goes with the Lease's next write."""
        if self.election is not None and self.election.leading and self._safe:
            self.election.annotations[RESUME_ANNOTATION] = self._safe

    async def _save_periodically(self) -> None:
        while True:
            await asyncio.sleep(SAVE_INTERVAL)
            self._advance()
            if self.election is None:
                await self.resume.save(self._safe)
            else:
                self._hand_over()

    async def _lead(self, annotations: dict[str, str]) -> None:
        """Scope cluster, while this agent holds the Lease: watch every node's kubelet
        Events from where the last leader's records were all acknowledged."""
        resume_from = annotations.get(RESUME_ANNOTATION, "")
        self._safe = resume_from
        self.watch.reflector.resource_version = resume_from
        await self.watch.run()

    # --- what comes in -------------------------------------------------------------------

    def _event(self, kind: str, event: JsonObject, listing: bool) -> None:
        if self._incoming or self._needs_pod(kind, event, listing):
            self._incoming.append((kind, event, listing))
            self._incoming_wake.set()
        else:
            self._make(kind, event, listing)

    def _needs_pod(self, kind: str, event: JsonObject, listing: bool) -> bool:
        """A new occurrence, from the watch, about a pod the cache has not seen lately."""
        involved = event.get("involvedObject") or {}
        return (
            kind != "DELETED"
            and not listing
            and involved.get("kind") == "Pod"
            and not self.metadata.knows(str(involved.get("uid") or ""))
            and event_count(event) > self._seen.get(event["metadata"]["uid"], 0)
        )

    async def _enrich(self) -> None:
        """Read the pods of waiting Events, one GET each, and make their records in order."""
        while True:
            if not self._incoming:
                self._incoming_wake.clear()
                await self._incoming_wake.wait()
                continue
            kind, event, listing = self._incoming[0]
            if len(self._incoming) <= FETCH_BACKLOG_MAX and self._needs_pod(kind, event, listing):
                involved = event["involvedObject"]
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(FETCH_TIMEOUT):
                        await self.metadata.fetch_pod(
                            str(involved.get("namespace") or ""),
                            str(involved.get("name") or ""),
                            str(involved.get("uid") or ""),
                        )
            self._incoming.popleft()
            self._make(kind, event, listing)

    def _make(self, kind: str, event: JsonObject, listing: bool) -> None:
        uid = event["metadata"]["uid"]
        if kind == "DELETED":  # expired (Events live an hour): nothing happened
            self._seen.pop(uid, None)
            return
        count = event_count(event)
        last = self._seen.get(uid)
        if last is not None and count <= last:
            return  # an update that adds no occurrence
        self._seen[uid] = count
        self._seen.move_to_end(uid)
        if len(self._seen) > SEEN_EVENTS_MAX:
            self._seen.popitem(last=False)
        record = event_record(event, self.metadata, event_host(event) or self.node)
        if not (listing and last is None):  # listed first: it happened before we looked
            self._occurred(record, count - last if last is not None else 1)
        self._enqueue(record)

    def _occurred(self, record: Document, times: int) -> None:
        counts = self.counts
        event = record["event"]
        counts.events_by_reason[event["reason"]] += times
        probe = record.get("probe")
        if probe and event.get("action") in (ACTION_PROBE_FAILED, ACTION_PROBE_ERRORED):
            kubernetes = record["kubernetes"]
            labels = (
                kubernetes.get("namespace", ""),
                workload_of(kubernetes),
                kubernetes["pod"]["name"],
                probe["kind"],
            )
            counts.probe_failures[labels] += times
            counts.probe_failure_pods.setdefault(labels, set()).add(kubernetes["pod"]["uid"])

    def _pod(self, kind: str, pod: JsonObject) -> None:
        """A pod of this node changed: a grown restartCount is a record of the run that ended."""
        uid = pod["metadata"]["uid"]
        if kind == "DELETED":
            for key in [key for key in self._restarts if key[0] == uid]:
                del self._restarts[key]
            return
        first_look = self.metadata.pods_reflector.listing
        status = pod.get("status") or {}
        for container in (status.get("initContainerStatuses") or []) + (
            status.get("containerStatuses") or []
        ):
            key = (uid, container["name"])
            restarts = int(container.get("restartCount") or 0)
            last = self._restarts.get(key)
            self._restarts[key] = restarts
            if restarts == 0 or (last is not None and restarts <= last):
                continue
            record = termination_record(pod, container, self.metadata, self.node)
            if record is None:
                continue
            if last is not None or not first_look:
                self._restarted(record, restarts - last if last is not None else 1)
            self._enqueue(record)

    def _restarted(self, record: Document, times: int) -> None:
        kubernetes = record["kubernetes"]
        namespace, workload = kubernetes.get("namespace", ""), workload_of(kubernetes)
        self.counts.restarts[(namespace, workload, record["event"]["reason"])] += times
        if record["event"]["action"] == ACTION_OOM_KILLED:
            self.counts.oom_kills[(namespace, workload)] += 1
        uid = kubernetes["pod"]["uid"]
        self.counts.workload_pods.setdefault((namespace, workload), set()).add(uid)

    def _enqueue(self, record: Document) -> None:
        if len(self._buffer) >= self.settings.queue_records:
            self._dropped(record)
            return
        self._dropping = False
        if record["kubernetes"].get("metadata_missing"):
            self.counts.without_metadata += 1
        self.counts.records[record["event"]["provider"]] += 1
        self._buffer.append(record)
        self._wake.set()

    def _dropped(self, record: Document) -> None:
        self.counts.dropped += 1
        if not self._dropping:
            self._dropping = True
            log.warning(
                "Kubelet event records are waiting for the sinks beyond the queue's bound; "
                "new ones are dropped until it drains.",
                extra={
                    "queue_records": self.settings.queue_records,
                    "event_id": record["event"]["id"],
                },
            )

    def forget_gone_pods(self) -> None:
        """Drop the series of pods, and of workloads, the metadata cache has forgotten
        every pod of (it keeps a deleted pod for its grace period): pods and workloads
        coming and going must not grow /metrics for ever."""
        counts = self.counts
        for labels in self._gone(counts.probe_failure_pods):
            counts.probe_failures.pop(labels, None)
        gone = self._gone(counts.workload_pods)
        if gone:
            for restart in [key for key in counts.restarts if key[:2] in gone]:
                del counts.restarts[restart]
            for workload in gone:
                counts.oom_kills.pop(workload, None)

    def _gone(self, pods_by_series: dict[_Series, set[str]]) -> set[_Series]:
        """The series none of whose pods the metadata cache still has, forgotten here."""
        gone: set[_Series] = set()
        for series, uids in list(pods_by_series.items()):
            alive = {uid for uid in uids if self.metadata.pod(uid) is not None}
            if alive:
                pods_by_series[series] = alive
            else:
                del pods_by_series[series]
                gone.add(series)
        return gone


def _stopped(task: asyncio.Task[None]) -> None:
    """A task of the source ended by an error: a bug, said loudly once; logs keep flowing."""
    if not task.cancelled() and task.exception() is not None:
        log.error(
            "The kubelet events source stopped a task; its records stop until a restart.",
            extra={"task": task.get_name()},
            exc_info=task.exception(),
        )


class KubeletEventMetrics(Collector):
    """The events source's counters, read at scrape time."""

    def __init__(self, source: KubeletEventSource) -> None:
        self.source = source

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        self.source.forget_gone_pods()
        counts = self.source.counts
        records = CounterMetricFamily(
            metric_name("kubernetes_event_records"),
            "Records made of the kubelet's Events (kubelet) and of container restarts read "
            "from pod status (pod-status), handed to the sinks.",
            labels=["provider"],
        )
        for provider, value in sorted(counts.records.items()):
            records.add_metric([provider], value)
        yield records
        yield CounterMetricFamily(
            metric_name("kubernetes_event_records_dropped"),
            "Records dropped because the sinks held the queue full (queue_records).",
            value=counts.dropped,
        )
        yield CounterMetricFamily(
            metric_name("kubernetes_event_records_without_metadata"),
            "Event records whose pod the metadata cache did not know.",
            value=counts.without_metadata,
        )
        reasons = CounterMetricFamily(
            metric_name("kubernetes_events"),
            "Occurrences of the kubelet's Events seen by the watch, by reason.",
            labels=["reason"],
        )
        for reason, value in sorted(counts.events_by_reason.items()):
            reasons.add_metric([reason], value)
        yield reasons
        probes = CounterMetricFamily(
            metric_name("probe_failures"),
            "Failed or errored probes (the kubelet's Unhealthy Events), by probe kind; pods of "
            "this node (every node's on the Events leader, with scope cluster), each series "
            "gone once its pod is.",
            labels=["namespace", "workload", "pod", "probe"],
        )
        for labels, value in sorted(counts.probe_failures.items()):
            probes.add_metric(list(labels), value)
        yield probes
        restarts = CounterMetricFamily(
            metric_name("container_restarts"),
            "Container restarts seen in pod status, by the reason the previous run ended.",
            labels=["namespace", "workload", "reason"],
        )
        for restart_labels, value in sorted(counts.restarts.items()):
            restarts.add_metric(list(restart_labels), value)
        yield restarts
        oom = CounterMetricFamily(
            metric_name("container_oom_kills"),
            "Container runs that ended OOMKilled, seen in pod status.",
            labels=["namespace", "workload"],
        )
        for oom_labels, value in sorted(counts.oom_kills.items()):
            oom.add_metric(list(oom_labels), value)
        yield oom
        if self.source.election is not None:
            yield GaugeMetricFamily(
                metric_name("kubernetes_events_leader"),
                "1 while this agent holds the Lease and watches every node's kubelet Events "
                "(scope cluster); the agents' sum is 1 when all is well.",
                value=int(self.source.election.leading),
            )


def event_sinks(
    config: AgentConfig, registry: CollectorRegistry, log_sinks: list[Sink]
) -> tuple[list[Sink], list[Sink]]:
    """The sinks event records go to, and which of them are the source's own to start and
    stop: an Elasticsearch sink for the events data stream (same cluster and settings as the
    logs', ids from ``event.id``), and the log path's file sink, shared."""
    own: list[Sink] = []
    settings = config.sinks.elasticsearch
    if settings is not None:
        from observer.sinks.elasticsearch import ElasticsearchSink

        stream = settings.data_stream.model_copy(
            update={"dataset": config.sources.kube_events.dataset}
        )
        own.append(
            ElasticsearchSink(
                settings.model_copy(update={"data_stream": stream}),
                config.node_name,
                config.state_dir,
                registry,
                name="elasticsearch_events",
                id_from="event.id",
            )
        )
    shared = [sink for sink in log_sinks if isinstance(sink, FileSink)]
    return own + shared, own
