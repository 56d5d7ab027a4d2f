"""The collector's trace path: receivers → bounded queue → the trace core → a TraceStore.

```
 native OTLP/gRPC (otlp_grpc.py) ─ push ──┐
 shared receivers: decode ─ accept(batch) ─┴► queue ─► worker task:
 (DECODERS: the core        (False when full:  (IntakeQueue,  TraceCore.add_queued   native/src
  decodes OTLP protobuf)     answer retryably)  by spans)       assemble             assemble.rs
                                                             TraceCore.expire (when quiet)
                                                               reconstruct → graph   reconstruct.rs, graph.rs
                                                               → sample → encode     sample.rs, encode.rs
                                                             await write(kept)       a TraceStore
```

The trace core (`observer.collector._core`, built from `native/`) does the per-span work
in Rust, from decoding (decode.rs) on: Python handles one object per batch and per kept
trace, never one per span, which is what lets one collector core keep up with many nodes.
The native OTLP/gRPC server decodes and queues on its own thread; the shared receivers
decode OTLP protobuf with the core (`DECODERS`), so that a request's spans are decoded
once and invalid ids are answered for exactly; OTLP/JSON and Zipkin arrive as OTLP
messages and are decoded by the core in `accept`. `native/src/core.rs` says how its
stages chain; this module feeds it, paces it and writes what it keeps.

`accept` never blocks: the queue (the core's, native/src/intake.rs) is bounded by spans
(`assembly.max_queued_spans`) and a batch that does not fit is refused, so the receiver
answers the protocol's retryable "slow down" and the sender keeps the spans. A push into
the empty queue wakes the worker through a socket the event loop watches. The one worker
task owns the core; it assembles up to `BATCHES_PER_TURN` batches at a time, and traces
are emitted when they go quiet (looked for at most every `CHECK_INTERVAL` while busy, and
on a timer as often when idle), `WRITE_CHUNK` at a time; every emitted trace is counted
into the service graph and RED metrics, sampled or not. A slow store makes the worker
wait, the queue fill, and receivers push back.

Ownership: `accept` takes the batch (the caller must not touch it after True); the
traces handed to `write` are the store's to read during the call.

`stop()` refuses new batches, assembles what is queued, emits every live trace and
writes it: at shutdown nothing accepted is lost.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence

from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from observer.collector._core import (
    DecodedSpans,
    EncodedTrace,
    IntakeQueue,
    TraceCore,
    decode_spans,
)
from observer.collector.graph import GraphMetrics
from observer.config import CollectorConfig
from observer.protocols import otlp, zipkin
from observer.protocols.otlp import (
    Checked,
    EncodedBatch,
    PayloadError,
    count_spans,
    frame_resource_spans,
)
from observer.receivers import Decoders
from observer.telemetry import metric_name

log = logging.getLogger(__name__)

WriteTraces = Callable[[Sequence[EncodedTrace]], Awaitable[None]]
Clock = Callable[[], float]

# How often an idle worker looks for traces that went quiet.
CHECK_INTERVAL = 0.25
# Traces emitted and written at a time. A burst of traffic goes quiet all at once; in
# slices, what the store builds for one write stays small and receivers are served between.
WRITE_CHUNK = 256
# Queued batches assembled per turn of the worker, between looks for traces due.
BATCHES_PER_TURN = 16


SpanBatch = DecodedSpans | list[ResourceSpans]
"""What the pipeline takes: an OTLP protobuf request decoded by the core, or spans as
OTLP messages (OTLP/JSON and Zipkin requests)."""


def decode_request(body: bytes) -> Checked[DecodedSpans]:
    """An OTLP protobuf request decoded by the trace core: no Python object per span or
    message, and the ids checked as `otlp.check_ids` checks them."""
    try:
        decoded = decode_spans(body)
    except ValueError as error:
        raise PayloadError(f"not a protobuf ExportTraceServiceRequest: {error}") from None
    return Checked(decoded, decoded.span_count, decoded.rejected, decoded.reason)


DECODERS: Decoders[SpanBatch] = Decoders(
    decode_request, otlp.decode_checked_json, zipkin.decode_json, zipkin.decode_protobuf
)
"""The collector's receivers' decoders."""


def request_bytes(batch: Sequence[ResourceSpans]) -> bytes:
    """The batch as an ExportTraceServiceRequest's bytes."""
    return b"".join(frame_resource_spans(part.SerializeToString()) for part in batch)


def trace_core(config: CollectorConfig, span_documents: bool) -> TraceCore:
    """The trace core as `config` sets it up, encoding for a store that wants
    `span_documents` (see TracePipeline)."""
    assembly = config.assembly
    graph = config.graph
    sampling = config.sampling
    threshold = sampling.latency_threshold
    return TraceCore(
        idle_timeout=assembly.idle_timeout,
        max_age=assembly.max_age,
        late_window=assembly.late_window,
        max_live_traces=assembly.max_live_traces,
        max_live_spans=assembly.max_live_spans,
        max_skew_ns=int(config.reconstruction.max_clock_skew * 1e9),
        keep_errors=sampling.keep_errors,
        latency_threshold_ns=None if threshold is None else int(threshold * 1e9),
        probabilistic_share=sampling.probabilistic_share,
        request_buckets=list(graph.request_buckets),
        latency_buckets=list(graph.latency_buckets),
        max_series=graph.max_series,
        span_documents=span_documents,
    )


class TracePipeline:
    def __init__(
        self,
        config: CollectorConfig,
        write: WriteTraces,
        *,
        span_documents: bool = False,
        registry: CollectorRegistry | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        """`span_documents`: the store keeps a document per span (Elasticsearch) rather
        than one record per trace (the embedded store); the core encodes accordingly."""
        self.core = trace_core(config, span_documents)
        self.max_queued_spans = config.assembly.max_queued_spans
        self._clock = clock
        self._write = write
        # The queue is the core's, so that the native OTLP/gRPC server (otlp_grpc.py) pushes
        # into it from its own thread; a push into an empty queue writes to `_woken`.
        self._woken, wake = socket.socketpair()
        with wake:
            self.queue = IntakeQueue(self.max_queued_spans, wake.fileno())
        self._woken.setblocking(False)
        self._ready = asyncio.Event()
        self._closing = False
        self._worker: asyncio.Task[None] | None = None
        self._wake: asyncio.TimerHandle | None = None
        self.counts = PipelineCounts()
        if registry is not None:
            registry.register(PipelineMetrics(self))
            registry.register(GraphMetrics(self.core))

    @property
    def queued_spans(self) -> int:
        return self.queue.queued_spans

    # --- the receivers' side ----------------------------------------------------------

    def accept(self, batch: SpanBatch, span_count: int | None = None) -> bool:
        """Queue a batch for assembly; False when the queue is full (or closing), and the
        caller should answer retryably. `span_count` saves counting when known."""
        decoded = batch if isinstance(batch, DecodedSpans) else self._decoded(batch, span_count)
        if decoded is None:
            return True
        # The queue counts what it refuses (full, or closed by `stop`).
        return self.queue.push(decoded) == "accepted"

    def _decoded(self, batch: list[ResourceSpans], span_count: int | None) -> DecodedSpans | None:
        """OTLP messages decoded by the core; None when they do not decode (a bug: the
        batch is lost, said and counted; a bug must not stop the collector)."""
        try:
            # Kept bytes when the messages are unchanged since decoding.
            request = batch.encoded if isinstance(batch, EncodedBatch) else request_bytes(batch)
            decoded = decode_spans(request)
        except Exception:
            log.exception("A span batch could not be unpacked; its spans are dropped.")
            spans = count_spans(batch) if span_count is None else span_count
            self.counts.spans_rejected["unpack_error"] += spans
            return None
        if decoded.rejected:
            # Receivers refuse invalid ids before they get here; this is a caller's batch
            # that was not checked.
            self.counts.spans_rejected["invalid_id"] += decoded.rejected
            log.warning(
                "Spans with invalid ids were dropped.",
                extra={"rejected": decoded.rejected, "reason": decoded.reason},
            )
        return decoded

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> asyncio.Task[None]:
        """Start the worker; returned for the caller to watch: it ends only by `stop` or a
        failure, which the pipeline does not handle itself."""
        self._worker = asyncio.create_task(self._run(), name="trace-pipeline")
        return self._worker

    async def stop(self) -> None:
        """Refuse new batches, assemble and write everything accepted, then end."""
        self._closing = True
        self.queue.close()
        if self._worker is not None:
            self._ready.set()  # wakes the worker; it drains and ends
            await self._worker
            self._worker = None
        self._woken.close()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self._woken, self._on_wake)
        # An idle worker looks for traces due every CHECK_INTERVAL, woken by a timer.
        self._wake_if_idle(loop)
        next_check = 0.0
        try:
            while True:
                self._ready.clear()
                taken = await self._process_queued(BATCHES_PER_TURN)
                if self._closing and not taken:
                    await self.drain()
                    return
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + CHECK_INTERVAL
                    await self.flush_due()
                if not taken:
                    await self._ready.wait()
        finally:
            loop.remove_reader(self._woken)
            if self._wake is not None:
                self._wake.cancel()

    def _on_wake(self) -> None:
        try:
            while self._woken.recv(4096):
                pass
        except BlockingIOError:
            pass
        self._ready.set()

    def _wake_if_idle(self, loop: asyncio.AbstractEventLoop) -> None:
        self._wake = loop.call_later(CHECK_INTERVAL, self._wake_if_idle, loop)
        self._ready.set()

    # --- the work ---------------------------------------------------------------------

    async def process_queued(self) -> None:
        """Assemble every batch queued now, without waiting for more (for tests and tools
        that drive the pipeline without its worker)."""
        while await self._process_queued(BATCHES_PER_TURN):
            pass

    async def _process_queued(self, limit: int) -> int:
        """Assemble up to `limit` queued batches and write the traces the bounds forced
        out; how many batches were taken."""
        taken, forced = self.core.add_queued(self.queue, self._clock(), limit)
        await self._store(forced)
        return taken

    async def flush_due(self) -> None:
        """Emit and write the traces that are due by the clock (what the worker does when
        idle), a chunk at a time."""
        while True:
            emitted, kept = self.core.expire(self._clock(), WRITE_CHUNK)
            await self._store(kept)
            if emitted < WRITE_CHUNK:
                return

    async def drain(self) -> None:
        """Emit and write every live trace, due or not (what `stop` ends with)."""
        await self._store(self.core.drain(self._clock()))

    async def _store(self, kept: list[EncodedTrace]) -> None:
        self._report_bounds()
        if not kept:
            return
        counts = self.counts
        try:
            await self._write(kept)
        except Exception:
            # Stores retry what can be retried; what reaches here is lost, said and counted.
            log.exception("Traces could not be stored.", extra={"traces": len(kept)})
            counts.traces_not_stored += len(kept)
        else:
            counts.traces_stored += len(kept)

    def _report_bounds(self) -> None:
        report = self.core.take_bounds_report()
        if report is not None:
            log.warning(
                "Trace assembly is at its memory bounds: emitted the oldest traces early and "
                "forgot retained ones; raise assembly.max_live_traces / max_live_spans or "
                "shorten idle_timeout if this persists.",
                extra=report,
            )
        for metric in self.core.take_overflow_warnings():
            log.warning(
                "A trace metric reached its series bound; new label sets are counted as "
                "overflow, not exported. Raise graph.max_series if this is expected.",
                extra={"metric": metric},
            )


class PipelineCounts:
    """What the Python side counts; the core counts assembly, verdicts and sampling."""

    def __init__(self) -> None:
        self.spans_rejected: Counter[str] = Counter()
        self.traces_stored = 0
        self.traces_not_stored = 0


class PipelineMetrics(Collector):
    """The trace path's own health, read from its counters at scrape time."""

    def __init__(self, pipeline: TracePipeline) -> None:
        self.pipeline = pipeline

    def collect(self) -> Iterator[Metric]:
        pipeline = self.pipeline
        core = pipeline.core
        assembly = core.counts()
        counts = pipeline.counts

        def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(metric_name(name), documentation, value=value)

        def counter(
            name: str, documentation: str, label: str, values: dict[str, int]
        ) -> CounterMetricFamily:
            family = CounterMetricFamily(metric_name(name), documentation, labels=[label])
            for key, value in sorted(values.items()):
                family.add_metric([key], value)
            return family

        yield gauge(
            "trace_queue_spans", "Spans accepted and not yet assembled.", pipeline.queued_spans
        )
        yield gauge("traces_live", "Traces being assembled.", core.live_traces)
        yield gauge("trace_spans_live", "Spans of traces being assembled.", core.live_spans)
        yield gauge(
            "traces_retained", "Emitted traces kept to merge late spans into.", core.retained_traces
        )
        yield gauge("trace_spans_retained", "Spans of emitted traces kept.", core.retained_spans)
        yield counter(
            "trace_spans_total",
            "Spans by what became of them at intake and assembly.",
            "outcome",
            {
                "assembled": assembly["spans_in"] - assembly["duplicate_spans"],
                "duplicate": assembly["duplicate_spans"],
                "refused_queue_full": pipeline.queue.refused_spans,
                **{f"rejected_{reason}": n for reason, n in counts.spans_rejected.items()},
            },
        )
        late_spans = CounterMetricFamily(
            metric_name("trace_late_spans_total"),
            "Spans merged into a trace that had already been emitted.",
        )
        late_spans.add_metric([], assembly["late_spans"])
        yield late_spans
        yield counter(
            "traces_emitted_total",
            "Traces emitted by assembly, by why (idle_timeout, max_age, the bounds, shutdown).",
            "reason",
            dict(assembly["emitted"]),
        )
        yield counter(
            "traces_late_total",
            "Emitted traces that got late spans: emitted again, or forgotten early to respect max_live_spans.",
            "outcome",
            {"reemitted": assembly["reemitted"], "forgotten_early": assembly["forgotten_early"]},
        )
        yield counter(
            "traces_completed_total",
            "Emitted traces by their completeness verdict.",
            "completeness",
            {"complete": assembly["complete"], "partial": assembly["partial"]},
        )
        yield counter(
            "traces_partial_reasons_total",
            "Partial traces by each reason found in them.",
            "reason",
            dict(assembly["partial_reasons"]),
        )
        sampled = CounterMetricFamily(
            metric_name("traces_sampled_total"),
            "Tail-sampling decisions by outcome and the policy that made them.",
            labels=["decision", "policy"],
        )
        for (decision, policy), value in assembly["sampled"]:
            sampled.add_metric([decision, policy], value)
        yield sampled
        yield counter(
            "traces_stored_total",
            "Sampled traces handed to the store, by outcome.",
            "outcome",
            {"stored": counts.traces_stored, "failed": counts.traces_not_stored},
        )
