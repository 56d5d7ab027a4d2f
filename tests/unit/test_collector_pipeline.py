"""The trace pipeline: bounded intake with backpressure, and traces chained through to storage."""

from __future__ import annotations

from collections.abc import Sequence

import orjson
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans
from opentelemetry.proto.trace.v1.trace_pb2 import Span as OtlpSpan
from prometheus_client import CollectorRegistry

from observer.collector._core import EncodedTrace
from observer.collector.pipeline import TracePipeline
from observer.config import CollectorConfig, parse
from tests.unit.collector_spans import MS, T0, FakeClock, otlp_span, resource_spans

TRACE_ID = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")


def config(share: float = 1.0, max_queued_spans: int = 100) -> CollectorConfig:
    return parse(
        CollectorConfig,
        f"""
        assembly: {{idle_timeout: 5s, max_queued_spans: {max_queued_spans}}}
        sampling: {{probabilistic_share: {share}, latency_threshold: null}}
        """,
        env={},
    )


class Written:
    """What the pipeline handed to its store."""

    def __init__(self) -> None:
        self.traces: list[EncodedTrace] = []

    async def __call__(self, traces: Sequence[EncodedTrace]) -> None:
        self.traces.extend(traces)


def call_batch(trace_id: bytes = TRACE_ID) -> list[ResourceSpans]:
    """web calls app: a client span in web, the server span in app."""
    return [
        resource_spans(
            "web",
            [otlp_span(trace_id, b"\x01" * 8, kind=OtlpSpan.SPAN_KIND_CLIENT, end_ns=T0 + 50 * MS)],
        ),
        resource_spans(
            "app",
            [
                otlp_span(
                    trace_id,
                    b"\x02" * 8,
                    b"\x01" * 8,
                    kind=OtlpSpan.SPAN_KIND_SERVER,
                    start_ns=T0 + 5 * MS,
                    end_ns=T0 + 45 * MS,
                )
            ],
        ),
    ]


def test_a_batch_that_does_not_fit_the_queue_is_refused_and_counted() -> None:
    """Past max_queued_spans accept answers False (retry later) and counts the spans."""
    pipeline = TracePipeline(config(max_queued_spans=3), Written())
    assert pipeline.accept(call_batch())
    assert not pipeline.accept(call_batch())
    assert pipeline.queued_spans == 2
    assert pipeline.queue.refused_spans == 2


def test_an_empty_queue_takes_a_batch_larger_than_its_bound() -> None:
    """A single batch over the bound is taken when nothing is queued, or it could never pass."""
    pipeline = TracePipeline(config(max_queued_spans=1), Written())
    assert pipeline.accept(call_batch())


async def test_a_quiet_trace_is_reconstructed_and_written_with_its_edges_and_verdict() -> None:
    """Spans in, idle timeout passes, and the store gets the whole trace with its findings."""
    clock = FakeClock()
    written = Written()
    pipeline = TracePipeline(config(), written, clock=clock)
    pipeline.accept(call_batch())
    await pipeline.process_queued()
    await pipeline.flush_due()
    assert written.traces == []
    clock.advance(5)
    await pipeline.flush_due()
    (trace,) = written.traces
    assert trace.trace_id == TRACE_ID.hex()
    assert trace.span_count == 2
    assert trace.edges == [("web", "app", 1, 0, False)]
    assert orjson.loads(trace.verdict)["completeness"] == "complete"
    assert pipeline.queued_spans == 0


async def test_sampled_out_traces_are_not_written_but_still_counted_in_the_graph() -> None:
    """A dropped trace feeds the service graph metrics; only the store does not see it."""
    clock = FakeClock()
    registry = CollectorRegistry()
    written = Written()
    pipeline = TracePipeline(config(share=0.0), written, registry=registry, clock=clock)
    pipeline.accept(call_batch())
    await pipeline.process_queued()
    clock.advance(5)
    await pipeline.flush_due()
    assert written.traces == []
    labels = {"client": "web", "server": "app", "connection_type": ""}
    assert registry.get_sample_value("traces_service_graph_request_total", labels) == 1
    assert (
        registry.get_sample_value(
            "observer_traces_sampled_total", {"decision": "dropped", "policy": "probabilistic"}
        )
        == 1
    )


async def test_stop_writes_every_accepted_span_before_returning() -> None:
    """At shutdown queued batches are assembled and live traces written, nothing lost."""
    written = Written()
    pipeline = TracePipeline(config(), written)
    await pipeline.start()
    assert pipeline.accept(call_batch())
    assert pipeline.accept(call_batch(bytes.fromhex("ab" * 16)))
    await pipeline.stop()
    assert sorted(trace.trace_id for trace in written.traces) == [
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "ab" * 16,
    ]
    assert not pipeline.accept(call_batch())


async def test_the_pipeline_reports_its_health_in_observer_metrics() -> None:
    """Live traces, spans by outcome and completeness verdicts are exported."""
    clock = FakeClock()
    registry = CollectorRegistry()
    pipeline = TracePipeline(config(), Written(), registry=registry, clock=clock)
    pipeline.accept(call_batch())
    await pipeline.process_queued()
    assert registry.get_sample_value("observer_traces_live") == 1
    assert registry.get_sample_value("observer_trace_spans_total", {"outcome": "assembled"}) == 2
    clock.advance(5)
    await pipeline.flush_due()
    assert registry.get_sample_value("observer_traces_live") == 0
    assert (
        registry.get_sample_value("observer_traces_completed_total", {"completeness": "complete"})
        == 1
    )
    assert (
        registry.get_sample_value("observer_traces_emitted_total", {"reason": "idle_timeout"}) == 1
    )
