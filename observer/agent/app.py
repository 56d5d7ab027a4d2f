"""The agent, wired: pod log files → tail and decode → sinks → checkpoints.

Ownership: the tailer builds each Batch and gives it to the queue; the delivery task owns
it from `get` on and submits the same document list to every sink in turn. Submitting
waits while a sink is full (backpressure reaches the tailer through the bounded queue);
the batch's checkpoint handover is settled when every sink has acknowledged it, in
whatever order batches complete.

Shutdown order (SIGTERM, or the end of `--once`): stop reading, let delivery finish for up
to `shutdown_timeout`, close the sinks, save the checkpoints. What was not acknowledged by
then is read again at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from observer.agent.checkpoint import CheckpointStore, Handover
from observer.agent.events import KubeletEventMetrics, KubeletEventSource, event_sinks
from observer.agent.log_metrics import LogPathMetrics
from observer.agent.tail import Batch, TailCounts, Tailer
from observer.config import AgentConfig
from observer.kube.client import KubeApi
from observer.kube.metadata import KubeMetrics, PodMetadataCache
from observer.sinks import Sink
from observer.sinks.file import FileSink
from observer.telemetry import ReadinessCheck, TelemetryServer, build_info, metric_name

log = logging.getLogger(__name__)

CHECKPOINT_INTERVAL = 1.0
INITIAL_SYNC_WAIT = 2.0
"""At start, how long reading waits for the pod metadata cache's first list, so that a
backlog is not sent without metadata when the API server answers quickly; reading starts
after this anyway, and files get their metadata when it arrives."""


class TailMetrics(Collector):
    """The log path's counters, read at scrape time rather than updated per line."""

    def __init__(
        self, counts: TailCounts, open_files: Callable[[], int], queued: Callable[[], int]
    ):
        self.counts = counts
        self.open_files = open_files
        self.queued = queued

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        counts = self.counts
        yield CounterMetricFamily(
            metric_name("log_lines_read"),
            "Log lines decoded from container log files.",
            value=counts.decode.lines,
        )
        yield CounterMetricFamily(
            metric_name("log_bytes_read"),
            "Bytes read from container log files.",
            value=counts.bytes_read,
        )
        repaired = CounterMetricFamily(
            metric_name("log_lines_repaired"),
            "Lines kept but changed: truncated, invalid UTF-8 replaced, in no known format, "
            "or not JSON where an observer.dev/parser annotation said it would be.",
            labels=["reason"],
        )
        repaired.add_metric(["truncated"], counts.decode.truncated)
        repaired.add_metric(["invalid_utf8"], counts.decode.invalid_utf8)
        repaired.add_metric(["malformed"], counts.decode.malformed)
        repaired.add_metric(["not_json"], counts.decode.not_json)
        yield repaired
        yield CounterMetricFamily(
            metric_name("log_lines_excluded"),
            "Lines read but not sent: their pod asks so (observer.dev/exclude).",
            value=counts.decode.excluded,
        )
        yield CounterMetricFamily(
            metric_name("log_file_truncations"),
            "Log files found truncated (copytruncate).",
            value=counts.truncations,
        )
        yield CounterMetricFamily(
            metric_name("log_bytes_lost_to_rotation"),
            "Bytes of rotated log files compressed or deleted before they were read.",
            value=counts.bytes_lost_to_rotation,
        )
        yield GaugeMetricFamily(
            metric_name("log_files_open"), "Log files being tailed.", value=self.open_files()
        )
        yield GaugeMetricFamily(
            metric_name("queue_batches"), "Batches read and not yet delivered.", value=self.queued()
        )
        yield CounterMetricFamily(
            metric_name("kubernetes_records_without_metadata"),
            "Records sent with only what the log path says: their pod was unknown to the "
            "metadata cache (not yet listed, or the API server unreachable).",
            value=counts.records_without_metadata,
        )


def build_sinks(config: AgentConfig, registry: CollectorRegistry) -> list[Sink]:
    sinks: list[Sink] = []
    if config.sinks.elasticsearch is not None:
        # Imported only when configured: the client and its transport weigh ~20 MB.
        from observer.sinks.elasticsearch import ElasticsearchSink

        sinks.append(
            ElasticsearchSink(
                config.sinks.elasticsearch, config.node_name, config.state_dir, registry
            )
        )
    if config.sinks.file is not None:
        sinks.append(FileSink(config.sinks.file))
    return sinks


async def run(
    config: AgentConfig,
    once: bool,
    stop: asyncio.Event | None = None,
    registry: CollectorRegistry | None = None,
) -> None:
    """Run until `stop` is set (SIGTERM and SIGINT set it), or with `once` until every file is read.

    `registry` receives the agent's metrics (a new one by default; served unless `once`).
    """
    registry = registry if registry is not None else CollectorRegistry()
    sinks = build_sinks(config, registry)
    checkpoints = CheckpointStore(config.state_dir)
    checkpoints.load()
    settings = config.sources.pod_logs
    queue: asyncio.Queue[Batch] = asyncio.Queue(maxsize=settings.queue_batches)
    metadata, metadata_problem = pod_metadata_cache(config)
    tailer = Tailer(settings, checkpoints, queue, metadata=metadata)
    metadata_task = None
    if metadata is not None:
        metadata.in_use = functools.partial(pods_being_read, tailer)
        metadata_task = asyncio.create_task(metadata.run(), name="pod metadata")
        metadata_task.add_done_callback(_metadata_stopped)
    for sink in sinks:
        await sink.start()
    # The kubelet's Events and container restarts (observer/agent/events.py): following only.
    events = None
    if metadata is not None and config.sources.kube_events.enabled and not once:
        event_sink_list, events_own_sinks = event_sinks(config, registry, sinks)
        events = KubeletEventSource(
            config.sources.kube_events, metadata, event_sink_list, config.state_dir
        )
        for sink in events_own_sinks:
            await sink.start()
        await events.start()
    # Spans from workloads and sidecars, to the collectors (observer/agent/spans): following only.
    spans = None
    if config.sources.spans.enabled and not once:
        # Imported only when enabled: gRPC and the span path are not needed otherwise.
        from observer.agent.spans import SpanPipeline

        spans = SpanPipeline(config.sources.spans, config.sinks.collector, metadata, registry)
        await spans.start()
    telemetry = None
    if not once:
        build_info(registry, "agent")
        registry.register(TailMetrics(tailer.counts, lambda: len(tailer.files), queue.qsize))
        registry.register(LogPathMetrics(tailer, config.kubernetes.deleted_pod_grace))
        telemetry = TelemetryServer(registry, config.telemetry.listen)
        for sink in sinks:
            telemetry.readiness_checks[f"sink {sink.name}"] = _readiness(sink)
        if metadata is not None:
            others = {"events": events.watch.reflector} if events is not None else None
            registry.register(KubeMetrics(metadata, others))
        if events is not None:
            registry.register(KubeletEventMetrics(events))
            for sink in events_own_sinks:
                telemetry.readiness_checks[f"sink {sink.name}"] = _readiness(sink)
        if metadata is not None or metadata_problem is not None:
            telemetry.readiness_checks["kubernetes metadata synced"] = _metadata_readiness(
                metadata, metadata_problem
            )
        if spans is not None:
            telemetry.readiness_checks["span collectors known"] = _spans_readiness(spans.ready)
        await telemetry.start()
    if metadata is not None:
        # Bounded: an unreachable API server delays the start by this much, never more.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(INITIAL_SYNC_WAIT):
                await metadata.synced.wait()
    failure: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    unacknowledged = 0

    def acknowledged(handover: Handover, acknowledgements: asyncio.Future[list[None]]) -> None:
        if acknowledgements.cancelled():
            return
        error = acknowledgements.exception()
        if error is not None:
            if not failure.done():
                failure.set_exception(error)
            return
        nonlocal unacknowledged
        unacknowledged -= 1
        checkpoints.settle(handover)
        queue.task_done()

    async def deliver() -> None:
        nonlocal unacknowledged
        while True:
            batch = await queue.get()
            unacknowledged += 1
            waiting = [await sink.submit(batch.documents, batch.handover.key) for sink in sinks]
            # Only the handover is kept until acknowledged: the documents can be freed as
            # soon as every sink has serialised them.
            asyncio.gather(*waiting).add_done_callback(
                functools.partial(acknowledged, batch.handover)
            )

    async def save_checkpoints() -> None:
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL)
            for key in tailer.stale_checkpoints():
                checkpoints.forget(key)
            try:
                await checkpoints.save_off_loop()
            except OSError as error:  # a full or read-only disk: reading and shipping go on
                log.error(
                    "Could not save the checkpoints; trying again at the next save. A restart "
                    "meanwhile sends again what was delivered since the last save (not "
                    "duplicated: delivery is idempotent).",
                    extra={"path": str(checkpoints.path), "error": str(error)},
                )

    loop = asyncio.get_running_loop()
    handled_signals: tuple[signal.Signals, ...] = ()
    if stop is None:
        stop = asyncio.Event()
        handled_signals = (signal.SIGTERM, signal.SIGINT)
        for signal_number in handled_signals:
            loop.add_signal_handler(signal_number, stop.set)
    watcher = _watch_for_changes(settings.root, tailer, loop) if not once else None

    delivery = asyncio.create_task(deliver(), name="deliver")
    saver = asyncio.create_task(save_checkpoints(), name="checkpoints")
    reading = asyncio.create_task(tailer.run(once=once), name="tail")
    stopping = asyncio.create_task(stop.wait())
    log.info("The agent is running.", extra={"root": str(settings.root), "once": once})
    try:
        running: set[asyncio.Future[Any]] = {reading, stopping, delivery, failure}
        await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
        if delivery.done():
            delivery.result()  # a sink failed: raise it
        if failure.done():
            failure.result()
        reading.cancel()
        await asyncio.wait({reading})  # unlike awaiting it, never swallows our own cancellation
        drained = asyncio.create_task(queue.join())
        draining: set[asyncio.Future[Any]] = {drained, failure}
        if once:  # everything read is delivered, however long it takes, unless told to stop
            await asyncio.wait({*draining, stopping}, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.wait(
            draining, timeout=config.shutdown_timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if failure.done():
            failure.result()
        if not drained.done():
            drained.cancel()
            log.warning(
                "Stopping before every batch was acknowledged; the rest is read again at "
                "the next start.",
                extra={"unacknowledged_batches": unacknowledged},
            )
    finally:
        for signal_number in handled_signals:
            loop.remove_signal_handler(signal_number)
        for task in (delivery, saver, stopping, reading):
            task.cancel()
        if watcher is not None:
            watcher.stop()
        if spans is not None:  # receivers stop, then what they took is delivered
            await spans.stop(config.shutdown_timeout)
        if telemetry is not None:
            await telemetry.stop()
        if events is not None:
            # Its records were being delivered while the logs drained; what is left is made
            # again from the watch at the next start (the resume point stays before it).
            await events.stop(drain_for=min(1.0, config.shutdown_timeout))
            for sink in events_own_sinks:
                await sink.stop()
        if metadata_task is not None and metadata is not None:
            metadata_task.cancel()
            await asyncio.wait({metadata_task})
            await metadata.api.close()
        for sink in sinks:
            await sink.stop()
        for key in tailer.stale_checkpoints():
            checkpoints.forget(key)
        await checkpoints.save_off_loop()  # after a periodic save still writing
    log.info(
        "The agent stopped.",
        extra={
            "lines": tailer.counts.decode.lines,
            "bytes_read": tailer.counts.bytes_read,
            "malformed": tailer.counts.decode.malformed,
            "truncated": tailer.counts.decode.truncated,
            "invalid_utf8": tailer.counts.decode.invalid_utf8,
        },
    )


def pod_metadata_cache(config: AgentConfig) -> tuple[PodMetadataCache | None, str | None]:
    """The pod metadata cache, or None and why not (None too when there is nothing to fix).

    Outside a cluster with no kubeconfig (`observer demo`, a laptop) the agent runs on the
    log paths alone, saying so once; a kubeconfig that was asked for and cannot be loaded
    is an error that /readyz keeps reporting.
    """
    settings = config.kubernetes
    if not settings.enabled:
        return None, None
    if not config.node_name:
        log.warning(
            "node_name is not set: pod metadata is off (the cache watches this node's pods).",
        )
        return None, None
    try:
        api = KubeApi.connect(settings)
    except Exception as error:  # lightkube raises its own ConfigError, KeyError, OSError...
        if settings.kubeconfig is None:
            log.warning(
                "No Kubernetes credentials (no service account, no kubeconfig): pod "
                "metadata is off; records carry what their log paths say.",
                extra={"error": str(error)},
            )
            return None, None
        log.error(
            "The kubeconfig could not be loaded: pod metadata is off.",
            extra={"kubeconfig": str(settings.kubeconfig), "error": str(error)},
        )
        return None, f"kubeconfig could not be loaded: {error}"
    cache = PodMetadataCache(
        api, config.node_name, settings.deleted_pod_grace, settings.annotations
    )
    return cache, None


def pods_being_read(tailer: Tailer) -> set[str]:
    """UIDs of the pods whose log files are open, or on disk and not opened yet: the
    metadata cache keeps a deleted pod among them until its lines are read."""
    uids = {tailed.origin.uid for tailed in tailer.files.values()}
    with contextlib.suppress(OSError), os.scandir(tailer.root) as entries:
        uids.update(entry.name.rpartition("_")[2] for entry in entries)
    return uids


def _metadata_stopped(task: asyncio.Task[None]) -> None:
    """The cache retries API failures itself; anything else is a bug, said loudly once.

    Logs keep flowing: files keep the metadata they have, new pods' records are marked."""
    if not task.cancelled() and task.exception() is not None:
        log.error(
            "The pod metadata cache stopped; records of pods not yet known go without it.",
            exc_info=task.exception(),
        )


def _metadata_readiness(cache: PodMetadataCache | None, problem: str | None) -> ReadinessCheck:
    async def check() -> str | None:
        if cache is None:
            return problem
        return None if cache.synced.is_set() else "pods and namespaces not listed yet"

    return check


def _spans_readiness(ready: Callable[[], str | None]) -> ReadinessCheck:
    async def check() -> str | None:
        return ready()

    return check


def _readiness(sink: Sink) -> ReadinessCheck:
    async def check() -> str | None:
        return None if sink.ready() else "not accepting documents"

    return check


def _watch_for_changes(root: Any, tailer: Tailer, loop: asyncio.AbstractEventLoop) -> Any:
    """inotify (through watchdog) tells the tailer at once of files created, renamed
    (rotated) and deleted; the periodic rescan covers missed events.

    Not of writes: those are one event per write, and the tailer reads growing files once
    per poll interval anyway.
    """
    from watchdog import events
    from watchdog.observers import Observer

    class Wake(events.FileSystemEventHandler):
        def on_any_event(self, event: Any) -> None:
            loop.call_soon_threadsafe(tailer.wake)

    observer = Observer()
    root.mkdir(parents=True, exist_ok=True)
    observer.schedule(
        Wake(),
        str(root),
        recursive=True,
        event_filter=[
            events.FileCreatedEvent,
            events.FileMovedEvent,
            events.FileDeletedEvent,
            events.DirCreatedEvent,
            events.DirMovedEvent,
            events.DirDeletedEvent,
        ],
    )
    observer.start()
    return observer
