"""The service graph and RED figures, from reconstructed traces.

**Calls.** Zipkin's DependencyLinker walks the tree; Tempo's service graphs pair a client
span with the server span whose parent it is. We walk the tree, which is what lets the
mesh's extra hops fall into place. From every server (or consumer) span, look up through
local spans to the nearest span that crossed a process boundary:

- a client (or producer) of another service: that is the call, caller → callee;
- a server of another service (an ingress proxy that forwarded without a client span of
  its own, as Envoy does with shared span ids): the proxy called this service;
- a span of the same service (the sidecar's server span above the app's, the app's
  client span above ... itself): a hop inside one service, not an edge — the graph has
  no self-loops;
- nothing (a root, or a parent that never arrived): the caller is the span's
  `peer.service` when it names one (Zipkin's remoteEndpoint of a server span), an edge
  from a *virtual* node; otherwise, for a missing parent, an unpaired server span.

From every client (or producer) span with no server side below it and no client hop of
its own service (the app's call through its sidecar): the callee is a virtual node named
by `peer.service`, `server.address` or `db.system` (see `reconstruct.PEER_ATTRIBUTES`),
or else the span is unpaired.

A call failed when either side has an error status. Its latency is measured from both
sides, as Tempo's metrics are; a virtual node's side is the known side's duration.

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

import logging
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from observer.collector.model import Edge, Span, SpanKind, Trace
from observer.collector.reconstruct import (
    CALLEE_KINDS,
    CALLER_KINDS,
    SpanTree,
    first_remote_ancestor,
    peer_of,
    remote_descendants,
)
from observer.telemetry import metric_name

log = logging.getLogger(__name__)

NS_PER_S = 1e9

# Tempo's connection_type values (modules/generator/processor/servicegraphs/store/edge.go).
UNKNOWN = ""
DATABASE = "database"
MESSAGING_SYSTEM = "messaging_system"
VIRTUAL_NODE = "virtual_node"

# Tempo's defaults: service graphs prometheus.ExponentialBuckets(0.1, 2, 8), span metrics
# prometheus.ExponentialBuckets(0.002, 2, 14).
DEFAULT_REQUEST_BUCKETS = tuple(0.1 * 2**i for i in range(8))
DEFAULT_LATENCY_BUCKETS = tuple(0.002 * 2**i for i in range(14))

_KIND_LABELS = {kind: f"SPAN_KIND_{kind.value.upper()}" for kind in SpanKind}
_STATUS_LABELS = {
    "unset": "STATUS_CODE_UNSET",
    "ok": "STATUS_CODE_OK",
    "error": "STATUS_CODE_ERROR",
}


@dataclass(slots=True)
class Call:
    """One request from a caller service to a callee, as one trace shows it."""

    caller: str
    callee: str
    connection_type: str
    failed: bool
    client_seconds: float
    server_seconds: float
    virtual: bool
    # The spans it was read from: a late re-emission counts a call again only when one
    # of them is new.
    spans: tuple[Span, ...]


@dataclass(slots=True)
class Unpaired:
    """A span that should be one side of a call whose other side is unknown."""

    client: str
    server: str
    connection_type: str
    span: Span


def _counted_as_virtual_before(call: Call, new: set[int]) -> bool:
    """A late span paired an already-emitted span that had, alone, been counted as a call
    to or from a virtual node (a client naming its peer, a server naming its caller): that
    request is counted already, under the name the known side gave its peer. Counters
    cannot be taken back; counting it again would count one request twice."""
    if call.virtual:
        return False
    caller, callee = call.spans
    if id(caller) not in new and id(callee) in new:
        peer = peer_of(caller)
        return bool(peer) and peer != caller.service
    if id(callee) not in new and id(caller) in new:
        named = callee.attributes.get("peer.service")
        return isinstance(named, str) and bool(named) and named != callee.service
    return False


def find_calls(tree: SpanTree) -> tuple[list[Call], list[Unpaired]]:
    """Every call in a reconstructed trace, and the spans that could not be paired."""
    calls: list[Call] = []
    unpaired: list[Unpaired] = []
    for span in tree.by_id.values():
        kind = span.kind
        if kind in CALLEE_KINDS:
            _callee_side(tree, span, calls, unpaired)
        elif kind in CALLER_KINDS:
            _caller_side(tree, span, calls, unpaired)
    return calls, unpaired


def _seconds(span: Span) -> float:
    return max(span.end_ns - span.start_ns, 0) / NS_PER_S


def _callee_side(tree: SpanTree, span: Span, calls: list[Call], unpaired: list[Unpaired]) -> None:
    service = span.service
    messaging = span.kind is SpanKind.CONSUMER
    caller = first_remote_ancestor(tree, span)
    if caller is not None:
        if caller.service == service:
            return  # a hop inside one service (sidecar → app)
        connection_type = (
            MESSAGING_SYSTEM if messaging or caller.kind is SpanKind.PRODUCER else UNKNOWN
        )
        calls.append(
            Call(
                caller=caller.service,
                callee=service,
                connection_type=connection_type,
                failed=caller.is_error or span.is_error,
                client_seconds=_seconds(caller),
                server_seconds=_seconds(span),
                virtual=False,
                spans=(caller, span),
            )
        )
        return
    peer = span.attributes.get("peer.service")
    if isinstance(peer, str) and peer and peer != service:
        seconds = _seconds(span)
        calls.append(
            Call(
                caller=peer,
                callee=service,
                connection_type=MESSAGING_SYSTEM if messaging else VIRTUAL_NODE,
                failed=span.is_error,
                client_seconds=seconds,
                server_seconds=seconds,
                virtual=True,
                spans=(span,),
            )
        )
    elif span.parent_span_id:
        # A parent id that never arrived: the caller is unknown. (A root is an entry
        # point, where the request came from outside; not a finding.)
        unpaired.append(Unpaired("", service, MESSAGING_SYSTEM if messaging else UNKNOWN, span))


def _caller_side(tree: SpanTree, span: Span, calls: list[Call], unpaired: list[Unpaired]) -> None:
    service = span.service
    for below in remote_descendants(tree, span):
        if below.kind in CALLEE_KINDS:
            return  # the callee's side records the call
        if below.kind in CALLER_KINDS and below.service == service:
            return  # a hop through this service's own proxy; the inner span pairs
    messaging = span.kind is SpanKind.PRODUCER
    peer = peer_of(span)
    if not peer:
        unpaired.append(Unpaired(service, "", MESSAGING_SYSTEM if messaging else UNKNOWN, span))
        return
    if peer == service:
        return
    if messaging:
        connection_type = MESSAGING_SYSTEM
    elif "db.system" in span.attributes:
        connection_type = DATABASE
    else:
        connection_type = VIRTUAL_NODE
    seconds = _seconds(span)
    calls.append(
        Call(
            caller=service,
            callee=peer,
            connection_type=connection_type,
            failed=span.is_error,
            client_seconds=seconds,
            server_seconds=seconds,
            virtual=True,
            spans=(span,),
        )
    )


def edges_of(calls: Iterable[Call]) -> list[Edge]:
    """Calls summed per caller → callee pair, in the order first seen."""
    edges: dict[tuple[str, str, bool], Edge] = {}
    for call in calls:
        key = (call.caller, call.callee, call.virtual)
        edge = edges.get(key)
        if edge is None:
            edge = edges[key] = Edge(call.caller, call.callee, virtual=call.virtual)
        edge.calls += 1
        if call.failed:
            edge.errors += 1
    return list(edges.values())


# --- metrics ----------------------------------------------------------------------------


class _Series:
    """Counters and histograms by label values, bounded in how many label sets they hold."""

    def __init__(self, metric: str, max_series: int, overflow: dict[str, int]) -> None:
        self.metric = metric
        self.max_series = max_series
        self.overflow = overflow
        self.overflow.setdefault(metric, 0)

    def admit(self, table: dict[tuple[str, ...], list[float]], key: tuple[str, ...]) -> bool:
        if key in table:
            return True
        if len(table) < self.max_series:
            return True
        if self.overflow[self.metric] == 0:
            log.warning(
                "A trace metric reached its series bound; new label sets are counted as "
                "overflow, not exported. Raise graph.max_series if this is expected.",
                extra={"metric": self.metric, "max_series": self.max_series},
            )
        self.overflow[self.metric] += 1
        return False


class _Histograms:
    """Prometheus histograms with the buckets counted here: one bisect per value."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        # label values → [count in bucket 0 … count above the last bound, sum]
        self.series: dict[tuple[str, ...], list[float]] = {}

    def observe(self, key: tuple[str, ...], value: float) -> None:
        entry = self.series.get(key)
        if entry is None:
            entry = self.series[key] = [0.0] * (len(self.bounds) + 2)
        entry[bisect_left(self.bounds, value)] += 1
        entry[-1] += value

    def family(self, name: str, documentation: str, labels: Sequence[str]) -> Metric:
        family = HistogramMetricFamily(name, documentation, labels=labels)
        for key, entry in self.series.items():
            buckets: list[tuple[str, float]] = []
            cumulative = 0.0
            for bound, count in zip(self.bounds, entry, strict=False):
                cumulative += count
                buckets.append((_float_text(bound), cumulative))
            cumulative += entry[len(self.bounds)]
            buckets.append(("+Inf", cumulative))
            family.add_metric(list(key), buckets, entry[-1])
        return family


def _float_text(value: float) -> str:
    return repr(round(value, 9))


_GRAPH_LABELS = ("client", "server", "connection_type")
_RED_LABELS = ("service", "span_name", "span_kind", "status_code")


class GraphMetrics(Collector):
    """Service-graph and RED metrics, aggregated here and exported at scrape time."""

    def __init__(
        self,
        *,
        request_buckets: Sequence[float] = DEFAULT_REQUEST_BUCKETS,
        latency_buckets: Sequence[float] = DEFAULT_LATENCY_BUCKETS,
        max_series: int = 10_000,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.overflow: dict[str, int] = {}
        self._graph_bound = _Series("traces_service_graph", max_series, self.overflow)
        self._red_bound = _Series("traces_spanmetrics", max_series, self.overflow)
        self._unpaired_bound = _Series("traces_service_graph_unpaired", max_series, self.overflow)
        # label values → [requests, failed]
        self._requests: dict[tuple[str, ...], list[float]] = {}
        self._server_seconds = _Histograms(request_buckets)
        self._client_seconds = _Histograms(request_buckets)
        self._unpaired: dict[tuple[str, ...], list[float]] = {}
        # label values → [calls]
        self._calls: dict[tuple[str, ...], list[float]] = {}
        self._latency = _Histograms(latency_buckets)
        if registry is not None:
            registry.register(self)

    def observe(self, trace: Trace, calls: Iterable[Call], unpaired: Iterable[Unpaired]) -> None:
        """Count a reconstructed trace: its calls, unpaired spans and every span's RED."""
        new_spans = trace.spans[trace.already_emitted :]
        new = {id(span) for span in new_spans} if trace.already_emitted else None
        for call in calls:
            if new is not None and (
                not any(id(span) in new for span in call.spans)
                or _counted_as_virtual_before(call, new)
            ):
                continue
            key = (call.caller, call.callee, call.connection_type)
            entry = self._requests.get(key)
            if entry is None:
                if not self._graph_bound.admit(self._requests, key):
                    continue
                entry = self._requests[key] = [0.0, 0.0]
            entry[0] += 1
            if call.failed:
                entry[1] += 1
            self._server_seconds.observe(key, call.server_seconds)
            self._client_seconds.observe(key, call.client_seconds)
        for side in unpaired:
            if new is not None and id(side.span) not in new:
                continue
            key = (side.client, side.server, side.connection_type)
            if key not in self._unpaired:
                if not self._unpaired_bound.admit(self._unpaired, key):
                    continue
                self._unpaired[key] = [0.0]
            self._unpaired[key][0] += 1
        calls_table = self._calls
        latency = self._latency
        for span in new_spans:
            red_key = (
                span.service,
                span.name,
                _KIND_LABELS[span.kind],
                _STATUS_LABELS[span.status],
            )
            entry = calls_table.get(red_key)
            if entry is None:
                if not self._red_bound.admit(calls_table, red_key):
                    continue
                entry = calls_table[red_key] = [0.0]
            entry[0] += 1
            latency.observe(red_key, max(span.end_ns - span.start_ns, 0) / NS_PER_S)

    def collect(self) -> Iterator[Metric]:
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
        for key, (total, errors) in self._requests.items():
            requests.add_metric(list(key), total)
            failed.add_metric(list(key), errors)
        yield requests
        yield failed
        yield self._server_seconds.family(
            "traces_service_graph_request_server_seconds",
            "Request time between two services as the server saw it.",
            _GRAPH_LABELS,
        )
        yield self._client_seconds.family(
            "traces_service_graph_request_client_seconds",
            "Request time between two services as the client saw it.",
            _GRAPH_LABELS,
        )
        unpaired = CounterMetricFamily(
            "traces_service_graph_unpaired_spans_total",
            "Client spans with no server side and no peer attribute, and server spans whose "
            "caller's span never arrived.",
            labels=_GRAPH_LABELS,
        )
        for key, (count,) in self._unpaired.items():
            unpaired.add_metric(list(key), count)
        yield unpaired
        calls = CounterMetricFamily(
            "traces_spanmetrics_calls_total",
            "Spans by service, operation, kind and status.",
            labels=_RED_LABELS,
        )
        for key, (count,) in self._calls.items():
            calls.add_metric(list(key), count)
        yield calls
        yield self._latency.family(
            "traces_spanmetrics_latency",
            "Span durations by service, operation, kind and status.",
            _RED_LABELS,
        )
        overflow = CounterMetricFamily(
            metric_name("trace_metric_series_overflow_total"),
            "Observations left out because their metric reached graph.max_series label sets.",
            labels=("metric",),
        )
        for metric, count in self.overflow.items():
            overflow.add_metric([metric], count)
        yield overflow
