"""The service graph and RED figures as Prometheus metrics, read from the trace core.

How calls are found (client/server and producer/consumer pairs walked through the tree,
proxy hops of one service skipped, virtual nodes for peers that send no spans, late spans
counted once) is `native/src/graph.rs`; the core aggregates, and this collector exports
what it holds at scrape time.

**Metrics** use Tempo's metrics-generator names and labels, so Grafana's service graph and
span-metric panels work unchanged: `traces_service_graph_request_total`,
`..._request_failed_total`, `..._request_server_seconds`, `..._request_client_seconds`,
`..._unpaired_spans_total` (labels `client`, `server`, `connection_type`) and
`traces_spanmetrics_calls_total` / `traces_spanmetrics_latency` (labels `service`,
`span_name`, `span_kind`, `status_code`, valued as Tempo values them: `SPAN_KIND_SERVER`,
`STATUS_CODE_ERROR`). Series are bounded by `max_series` per metric; what falls beyond is
counted in `observer_trace_metric_series_overflow_total` and logged once. A trace emitted
again with late spans adds only what its new spans bring: a late span that completes a
call whose known side was already counted (as a call to a virtual node it named) adds
nothing to the graph; one whose known side was counted unpaired adds the call, the
request's first count.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from observer.collector._core import TraceCore
from observer.telemetry import metric_name

_GRAPH_LABELS = ("client", "server", "connection_type")
_RED_LABELS = ("service", "span_name", "span_kind", "status_code")

_Histogram = tuple[list[float], list[tuple[list[str], list[int], float]]]


def _histogram_family(
    name: str, documentation: str, labels: Sequence[str], histogram: _Histogram
) -> Metric:
    bounds, series = histogram
    family = HistogramMetricFamily(name, documentation, labels=labels)
    for key, counts, total in series:
        buckets: list[tuple[str, float]] = []
        cumulative = 0
        for bound, count in zip(bounds, counts, strict=False):
            cumulative += count
            buckets.append((_float_text(bound), cumulative))
        cumulative += counts[len(bounds)]
        buckets.append(("+Inf", cumulative))
        family.add_metric(list(key), buckets, total)
    return family


def _float_text(value: float) -> str:
    return repr(round(value, 9))


class GraphMetrics(Collector):
    """Service-graph and RED metrics of a trace core, exported at scrape time."""

    def __init__(self, core: TraceCore) -> None:
        self.core = core

    def collect(self) -> Iterator[Metric]:
        (
            requests_series,
            server_seconds,
            client_seconds,
            unpaired_series,
            calls_series,
            latency,
            overflow_counts,
        ) = self.core.graph_snapshot()
        requests = CounterMetricFamily(
            "traces_service_graph_request_total",
            "Requests between two services (or a service and a virtual node).",
            labels=_GRAPH_LABELS,
        )
        failed = CounterMetricFamily(
            "traces_service_graph_request_failed_total",
            "Failed requests between two services (either side has an error status).",
            labels=_GRAPH_LABELS,
        )
        for key, total, errors in requests_series:
            requests.add_metric(list(key), total)
            failed.add_metric(list(key), errors)
        yield requests
        yield failed
        yield _histogram_family(
            "traces_service_graph_request_server_seconds",
            "Request time between two services as the server saw it.",
            _GRAPH_LABELS,
            server_seconds,
        )
        yield _histogram_family(
            "traces_service_graph_request_client_seconds",
            "Request time between two services as the client saw it.",
            _GRAPH_LABELS,
            client_seconds,
        )
        unpaired = CounterMetricFamily(
            "traces_service_graph_unpaired_spans_total",
            "Client spans with no server side and no peer attribute, and server spans whose "
            "caller's span never arrived.",
            labels=_GRAPH_LABELS,
        )
        for key, count in unpaired_series:
            unpaired.add_metric(list(key), count)
        yield unpaired
        calls = CounterMetricFamily(
            "traces_spanmetrics_calls_total",
            "Spans by service, operation, kind and status.",
            labels=_RED_LABELS,
        )
        for red_key, count in calls_series:
            calls.add_metric(list(red_key), count)
        yield calls
        yield _histogram_family(
            "traces_spanmetrics_latency",
            "Span durations by service, operation, kind and status.",
            _RED_LABELS,
            latency,
        )
        overflow = CounterMetricFamily(
            metric_name("trace_metric_series_overflow_total"),
            "Observations left out because their metric reached graph.max_series label sets.",
            labels=("metric",),
        )
        for metric, count in overflow_counts:
            overflow.add_metric([metric], count)
        yield overflow
