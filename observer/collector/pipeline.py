"""The collector's trace path, chained: intake → assemble → reconstruct → graph → sample → store.

```
 receivers ─ accept(batch) ─► bounded queue ─► worker task:
   (False when full:           (spans)          unpack_resource_spans   intake.py
    answer retryably)                           Assembler.add/expire    assemble.py
                                                reconstruct             reconstruct.py
                                                find_calls, edges_of,   graph.py
                                                  GraphMetrics.observe
                                                Sampler.sample          sample.py
                                                await write(kept)       a TraceStore
```

`accept` never blocks: the queue is bounded by spans (`assembly.max_queued_spans`) and a
batch that does not fit is refused, so the receiver answers the protocol's retryable
"slow down" and the sender keeps the spans. The one worker task owns the assembler;
traces are emitted when they go quiet (checked after every batch and every
`CHECK_INTERVAL` when idle), reconstructed, counted into the service graph and RED
metrics (every trace, sampled or not), sampled, and handed to `write`. A slow store
makes the worker wait, the queue fill, and receivers push back.

Ownership: `accept` takes the batch (the caller must not touch it after True); the
traces handed to `write` are the store's to read during the call.

`stop()` refuses new batches, assembles what is queued, emits every live trace and
writes it: at shutdown nothing accepted is lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence

from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from observer.collector.assemble import Assembler, Clock
from observer.collector.graph import GraphMetrics, edges_of, find_calls
from observer.collector.intake import unpack_resource_spans
from observer.collector.model import Completeness, Trace
from observer.collector.reconstruct import reconstruct
from observer.collector.sample import Sampler
from observer.config import CollectorConfig
from observer.telemetry import metric_name

log = logging.getLogger(__name__)

WriteTraces = Callable[[Sequence[Trace]], Awaitable[None]]

# How often an idle worker looks for traces that went quiet.
CHECK_INTERVAL = 0.25
# Traces reconstructed and written at a time. A burst of traffic goes quiet all at once;
# in slices, what the store builds for one write stays small (10,000 traces in one write
# took the embedded store's process from 320 to 840 MB) and receivers are served between.
WRITE_CHUNK = 256


def count_spans(batch: Sequence[ResourceSpans]) -> int:
    return sum(len(scope.spans) for resource in batch for scope in resource.scope_spans)


class TracePipeline:
    def __init__(
        self,
        config: CollectorConfig,
        write: WriteTraces,
        *,
        registry: CollectorRegistry | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        assembly = config.assembly
        self.assembler = Assembler(
            idle_timeout=assembly.idle_timeout,
            max_age=assembly.max_age,
            late_window=assembly.late_window,
            max_live_traces=assembly.max_live_traces,
            max_live_spans=assembly.max_live_spans,
            clock=clock,
        )
        self.max_queued_spans = assembly.max_queued_spans
        self.max_skew_ns = int(config.reconstruction.max_clock_skew * 1e9)
        self.graph = GraphMetrics(
            request_buckets=config.graph.request_buckets,
            latency_buckets=config.graph.latency_buckets,
            max_series=config.graph.max_series,
            registry=registry,
        )
        sampling = config.sampling
        self.sampler = Sampler(
            keep_errors=sampling.keep_errors,
            latency_threshold=sampling.latency_threshold,
            probabilistic_share=sampling.probabilistic_share,
        )
        self._write = write
        self._queue: asyncio.Queue[tuple[list[ResourceSpans], int]] = asyncio.Queue()
        self.queued_spans = 0
        self._closing = False
        self._worker: asyncio.Task[None] | None = None
        self.counts = PipelineCounts()
        if registry is not None:
            registry.register(PipelineMetrics(self))

    # --- the receivers' side ----------------------------------------------------------

    def accept(self, batch: list[ResourceSpans], span_count: int | None = None) -> bool:
        """Queue a batch for assembly; False when the queue is full (or closing), and the
        caller should answer retryably. `span_count` saves counting when known."""
        spans = count_spans(batch) if span_count is None else span_count
        if self._closing or (
            self.queued_spans and self.queued_spans + spans > self.max_queued_spans
        ):
            # An empty queue takes any batch: one larger than the bound must not be
            # refused forever.
            self.counts.spans_refused += spans
            return False
        self.queued_spans += spans
        self._queue.put_nowait((batch, spans))
        return True

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> asyncio.Task[None]:
        """Start the worker; returned for the caller to watch: it ends only by `stop` or a
        failure, which the pipeline does not handle itself."""
        self._worker = asyncio.create_task(self._run(), name="trace-pipeline")
        return self._worker

    async def stop(self) -> None:
        """Refuse new batches, assemble and write everything accepted, then end."""
        self._closing = True
        if self._worker is not None:
            self._queue.put_nowait(([], 0))  # wakes the worker; it drains and ends
            await self._worker
            self._worker = None

    async def _run(self) -> None:
        next_check = 0.0
        while True:
            try:
                batch, spans = await asyncio.wait_for(self._queue.get(), CHECK_INTERVAL)
            except TimeoutError:
                await self._emit(self.assembler.expire())
                continue
            await self._process(batch, spans)
            if self._closing and self._queue.empty():
                await self._emit(self.assembler.drain())
                return
            now = time.monotonic()
            if now >= next_check:
                next_check = now + CHECK_INTERVAL
                await self._emit(self.assembler.expire())

    # --- the work ---------------------------------------------------------------------

    async def process_queued(self) -> None:
        """Assemble every batch queued now, without waiting for more (for tests and tools
        that drive the pipeline without its worker)."""
        while not self._queue.empty():
            await self._process(*self._queue.get_nowait())

    async def _process(self, batch: list[ResourceSpans], spans: int) -> None:
        try:
            intake = unpack_resource_spans(batch)
        except Exception:
            # A decoder bug must not stop the collector: the batch is lost, said and counted.
            log.exception("A span batch could not be unpacked; its spans are dropped.")
            self.counts.spans_rejected["unpack_error"] += spans
            return
        finally:
            self.queued_spans -= spans
        if intake.rejected:
            self.counts.spans_rejected.update(intake.rejected)
            log.warning(
                "Spans with invalid ids were dropped.",
                extra={"rejected": dict(intake.rejected)},
            )
        await self._emit(self.assembler.add(intake.spans))

    async def flush_due(self) -> None:
        """Emit the traces that are due by the clock (what the worker does when idle)."""
        await self._emit(self.assembler.expire())

    async def _emit(self, traces: list[Trace]) -> None:
        for start in range(0, len(traces), WRITE_CHUNK):
            await self._emit_chunk(traces[start : start + WRITE_CHUNK])

    async def _emit_chunk(self, traces: list[Trace]) -> None:
        counts = self.counts
        for trace in traces:
            tree = reconstruct(trace, max_skew_ns=self.max_skew_ns)
            calls, unpaired = find_calls(tree)
            trace.edges = edges_of(calls)
            self.graph.observe(trace, calls, unpaired)
            counts.traces[trace.verdict.completeness.value] += 1
            if trace.verdict.completeness is Completeness.PARTIAL:
                counts.partial_reasons.update(trace.verdict.reasons.keys())
        kept = self.sampler.sample(traces)
        if not kept:
            return
        try:
            await self._write(kept)
        except Exception:
            # Stores retry what can be retried; what reaches here is lost, said and counted.
            log.exception("Traces could not be stored.", extra={"traces": len(kept)})
            counts.traces_not_stored += len(kept)
        else:
            counts.traces_stored += len(kept)


class PipelineCounts:
    def __init__(self) -> None:
        self.spans_refused = 0
        self.spans_rejected: Counter[str] = Counter()
        # completeness value → traces emitted (a late re-emission counts again)
        self.traces: Counter[str] = Counter()
        self.partial_reasons: Counter[str] = Counter()
        self.traces_stored = 0
        self.traces_not_stored = 0


class PipelineMetrics(Collector):
    """The trace path's own health, read from its counters at scrape time."""

    def __init__(self, pipeline: TracePipeline) -> None:
        self.pipeline = pipeline

    def collect(self) -> Iterator[Metric]:
        pipeline = self.pipeline
        assembler = pipeline.assembler
        assembly = assembler.counts
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
        yield gauge("traces_live", "Traces being assembled.", assembler.live_traces)
        yield gauge("trace_spans_live", "Spans of traces being assembled.", assembler.live_spans)
        yield gauge(
            "traces_retained",
            "Emitted traces kept to merge late spans into.",
            assembler.retained_traces,
        )
        yield gauge(
            "trace_spans_retained", "Spans of emitted traces kept.", assembler.retained_spans
        )
        yield counter(
            "trace_spans_total",
            "Spans by what became of them at intake and assembly.",
            "outcome",
            {
                "assembled": assembly.spans_in - assembly.duplicate_spans,
                "duplicate": assembly.duplicate_spans,
                "refused_queue_full": pipeline.counts.spans_refused,
                **{f"rejected_{reason}": n for reason, n in counts.spans_rejected.items()},
            },
        )
        late_spans = CounterMetricFamily(
            metric_name("trace_late_spans_total"),
            "Spans merged into a trace that had already been emitted.",
        )
        late_spans.add_metric([], assembly.late_spans)
        yield late_spans
        yield counter(
            "traces_emitted_total",
            "Traces emitted by assembly, by why (idle_timeout, max_age, the bounds, shutdown).",
            "reason",
            dict(assembly.emitted),
        )
        yield counter(
            "traces_late_total",
            "Emitted traces that got late spans: emitted again, or forgotten early to respect max_live_spans.",
            "outcome",
            {"reemitted": assembly.reemitted, "forgotten_early": assembly.forgotten_early},
        )
        yield counter(
            "traces_completed_total",
            "Emitted traces by their completeness verdict.",
            "completeness",
            {c.value: counts.traces.get(c.value, 0) for c in Completeness},
        )
        yield counter(
            "traces_partial_reasons_total",
            "Partial traces by each reason found in them.",
            "reason",
            dict(counts.partial_reasons),
        )
        sampled = CounterMetricFamily(
            metric_name("traces_sampled_total"),
            "Tail-sampling decisions by outcome and the policy that made them.",
            labels=["decision", "policy"],
        )
        for (decision, policy), value in sorted(pipeline.sampler.counts.items()):
            sampled.add_metric([decision, policy], value)
        yield sampled
        yield counter(
            "traces_stored_total",
            "Sampled traces handed to the store, by outcome.",
            "outcome",
            {"stored": counts.traces_stored, "failed": counts.traces_not_stored},
        )
