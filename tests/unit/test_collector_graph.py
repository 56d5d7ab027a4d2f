"""The service graph across the mesh, virtual nodes, and Tempo-named graph and RED metrics."""

from __future__ import annotations

import orjson
import pytest
from prometheus_client import CollectorRegistry

from observer.collector.graph import GraphMetrics, edges_of, find_calls
from observer.collector.intake import unpack_resource_spans
from observer.collector.model import Edge, Span, SpanKind, Trace
from observer.collector.reconstruct import SpanTree, reconstruct
from observer.protocols import zipkin
from tests.unit.collector_spans import MS, TRACE, span

SERVER = SpanKind.SERVER
CLIENT = SpanKind.CLIENT
US = 1_000
T0_US = 1_700_000_000_000_000


def rebuilt(spans: list[Span], trace_id: str = TRACE) -> tuple[Trace, SpanTree]:
    trace = Trace(trace_id, spans)
    tree = reconstruct(trace, max_skew_ns=60_000 * MS)
    return trace, tree


def edges(spans: list[Span]) -> list[Edge]:
    _, tree = rebuilt(spans)
    calls, _ = find_calls(tree)
    return edges_of(calls)


def zipkin_span(
    span_id: str,
    parent: str | None,
    service: str,
    kind: str,
    start_us: int,
    duration_us: int,
    **extra: object,
) -> dict[str, object]:
    body: dict[str, object] = {
        "traceId": "5af7183fb1d4cf5f",
        "id": span_id,
        "kind": kind,
        "name": f"{service} {kind.lower()}",
        "timestamp": T0_US + start_us,
        "duration": duration_us,
        "localEndpoint": {"serviceName": service, "ipv4": f"10.0.0.{len(service)}"},
    }
    if parent is not None:
        body["parentId"] = parent
    body.update(extra)
    return body


# An Envoy mesh reporting Zipkin with shared span contexts (Envoy's default), user →
# ingress gateway → webapp → backend, each app behind a sidecar and itself instrumented:
#
#   ingress gateway SERVER a…1 (root)
#   webapp sidecar SERVER a…1 shared  ── joined the gateway's span: same id
#     webapp app   SERVER c…1, parent a…1
#       webapp app CLIENT d…1            ── the app's call, through its sidecar:
#         webapp sidecar CLIENT b…1      ── client → client, one service
#           backend sidecar SERVER b…1 shared
#             backend app SERVER e…1, parent b…1   ── server → server, one service
ENVOY_BATCH = [
    zipkin_span("a000000000000001", None, "ingress", "SERVER", 0, 1000,
                remoteEndpoint={"ipv4": "203.0.113.7"}),
    zipkin_span("a000000000000001", None, "webapp", "SERVER", 50, 900, shared=True,
                remoteEndpoint={"ipv4": "10.0.0.7"}),
    zipkin_span("c000000000000001", "a000000000000001", "webapp", "SERVER", 100, 800),
    zipkin_span("d000000000000001", "c000000000000001", "webapp", "CLIENT", 200, 600,
                remoteEndpoint={"serviceName": "backend"}),
    zipkin_span("b000000000000001", "d000000000000001", "webapp", "CLIENT", 210, 580),
    zipkin_span("b000000000000001", "d000000000000001", "backend", "SERVER", 250, 500,
                shared=True, tags={"error": "true"}),
    zipkin_span("e000000000000001", "b000000000000001", "backend", "SERVER", 260, 450),
]  # fmt: skip


def envoy_trace() -> tuple[Trace, SpanTree]:
    checked = zipkin.decode_json(orjson.dumps(ENVOY_BATCH))
    spans = unpack_resource_spans(checked.resource_spans).spans
    return rebuilt(spans, spans[0].trace_id)


def test_an_envoy_mesh_with_shared_ids_and_an_ingress_hop_gives_each_hop_once() -> None:
    """The Envoy batch yields ingress → webapp and webapp → backend: no self-loop, no gap."""
    _, tree = envoy_trace()
    calls, unpaired = find_calls(tree)
    assert [(e.caller, e.callee, e.calls, e.errors, e.virtual) for e in edges_of(calls)] == [
        ("ingress", "webapp", 1, 0, False),
        ("webapp", "backend", 1, 1, False),
    ]
    assert unpaired == []


def test_the_envoy_mesh_trace_is_one_complete_tree() -> None:
    """After the split every span hangs from the gateway's root span."""
    trace, tree = envoy_trace()
    assert [root.service for root in tree.roots] == ["ingress"]
    assert tree.orphans == []
    assert trace.verdict.reasons == {}


def test_zipkin_shared_client_and_server_halves_make_one_call() -> None:
    """A client and the server that joined its span id are one call, failed if either failed."""
    found = edges(
        [
            span("1", service="web", kind=SERVER, end_ms=100),
            span("2", "1", service="web", kind=CLIENT, start_ms=10, end_ms=90, error=True),
            span("2", "1", service="app", kind=SERVER, start_ms=20, end_ms=80,
                 attributes={"observer.zipkin.shared": True}),
        ]
    )  # fmt: skip
    assert found == [Edge("web", "app", calls=1, errors=1)]


def test_errors_count_on_the_edge_where_the_call_failed() -> None:
    """A failed payment marks checkout → payments, not frontend → checkout that answered."""
    found = edges(
        [
            span("1", service="frontend", kind=CLIENT, end_ms=100),
            span("2", "1", service="checkout", kind=SERVER, start_ms=5, end_ms=95),
            span("3", "2", service="checkout", kind=CLIENT, start_ms=10, end_ms=90, error=True),
            span("4", "3", service="payments", kind=SERVER, start_ms=20, end_ms=80, error=True),
        ]
    )
    assert found == [
        Edge("frontend", "checkout", calls=1, errors=0),
        Edge("checkout", "payments", calls=1, errors=1),
    ]


def test_a_call_to_its_own_service_is_not_an_edge() -> None:
    """Client and server of one service (a hop inside it) make no self-loop."""
    found = edges(
        [
            span("1", service="web", kind=CLIENT, end_ms=100),
            span("2", "1", service="web", kind=SERVER, start_ms=10, end_ms=90),
        ]
    )
    assert found == []


@pytest.mark.parametrize(
    ("kind", "attributes", "callee", "connection_type"),
    [
        (CLIENT, {"peer.service": "stripe", "server.address": "api.stripe.test"}, "stripe", "virtual_node"),
        (CLIENT, {"server.address": "api.stripe.test"}, "api.stripe.test", "virtual_node"),
        (CLIENT, {"db.system": "postgresql"}, "postgresql", "database"),
        (CLIENT, {"db.system": "postgresql", "server.address": "pg-main"}, "pg-main", "database"),
        (SpanKind.PRODUCER, {"peer.service": "kafka"}, "kafka", "messaging_system"),
    ],
)  # fmt: skip
def test_a_client_of_a_peer_that_sends_no_spans_calls_a_virtual_node(
    kind: SpanKind, attributes: dict[str, str], callee: str, connection_type: str
) -> None:
    """The callee is named by peer.service, server.address or db.system, marked virtual."""
    _, tree = rebuilt(
        [
            span("1", service="shop", kind=SERVER, end_ms=100),
            span(
                "2", "1", service="shop", kind=kind, start_ms=10, end_ms=30, attributes=attributes
            ),
        ]
    )
    calls, _ = find_calls(tree)
    assert [(c.caller, c.callee, c.connection_type, c.virtual) for c in calls] == [
        ("shop", callee, connection_type, True)
    ]


def test_a_root_server_span_naming_its_caller_gets_a_virtual_caller() -> None:
    """A server span whose peer.service names an uninstrumented caller has an edge from it."""
    found = edges([span("1", service="app", kind=SERVER, attributes={"peer.service": "cron"})])
    assert found == [Edge("cron", "app", calls=1, virtual=True)]


def test_unpaired_client_and_server_sides_are_reported() -> None:
    """A client with no server side, and a server whose caller never came, are unpaired."""
    _, tree = rebuilt(
        [
            span("1", service="web", kind=CLIENT, end_ms=100),
            span("3", "2", service="db-proxy", kind=SERVER, start_ms=20, end_ms=80),
        ]
    )
    calls, unpaired = find_calls(tree)
    assert calls == []
    assert sorted((u.client, u.server) for u in unpaired) == [("", "db-proxy"), ("web", "")]


# --- metrics ------------------------------------------------------------------------------


def observed(*traces: Trace, max_series: int = 100) -> CollectorRegistry:
    registry = CollectorRegistry()
    metrics = GraphMetrics(registry=registry, max_series=max_series)
    for trace in traces:
        tree = reconstruct(trace, max_skew_ns=60_000 * MS)
        calls, unpaired = find_calls(tree)
        metrics.observe(trace, calls, unpaired)
    return registry


def checkout_trace(trace_id: str = TRACE, failed: bool = True) -> Trace:
    return Trace(
        trace_id,
        [
            span("1", service="checkout", kind=CLIENT, end_ms=300, trace_id=trace_id, error=failed),
            span("2", "1", service="payments", kind=SERVER, start_ms=10, end_ms=260,
                 trace_id=trace_id, error=failed, name="POST /pay"),
        ],
    )  # fmt: skip


def test_calls_are_exported_under_tempo_service_graph_names_and_labels() -> None:
    """Request, failure and both latency histograms carry client, server and connection_type."""
    registry = observed(checkout_trace())
    labels = {"client": "checkout", "server": "payments", "connection_type": ""}
    assert registry.get_sample_value("traces_service_graph_request_total", labels) == 1
    assert registry.get_sample_value("traces_service_graph_request_failed_total", labels) == 1
    server_le = {**labels, "le": "0.4"}
    assert (
        registry.get_sample_value("traces_service_graph_request_server_seconds_bucket", server_le)
        == 1
    )
    assert (
        registry.get_sample_value(
            "traces_service_graph_request_server_seconds_bucket", {**labels, "le": "0.2"}
        )
        == 0
    )
    assert registry.get_sample_value(
        "traces_service_graph_request_client_seconds_sum", labels
    ) == pytest.approx(0.3)


def test_span_red_figures_are_exported_under_tempo_span_metric_names_and_values() -> None:
    """Every span counts in traces_spanmetrics_* with Tempo's kind and status values."""
    registry = observed(checkout_trace())
    labels = {
        "service": "payments",
        "span_name": "POST /pay",
        "span_kind": "SPAN_KIND_SERVER",
        "status_code": "STATUS_CODE_ERROR",
    }
    assert registry.get_sample_value("traces_spanmetrics_calls_total", labels) == 1
    assert registry.get_sample_value("traces_spanmetrics_latency_count", labels) == 1
    assert registry.get_sample_value("traces_spanmetrics_latency_sum", labels) == pytest.approx(
        0.25
    )


def test_unpaired_spans_are_counted_under_tempo_name() -> None:
    """A client span without a server side counts in traces_service_graph_unpaired_spans_total."""
    registry = observed(Trace(TRACE, [span("1", service="web", kind=CLIENT)]))
    labels = {"client": "web", "server": "", "connection_type": ""}
    assert registry.get_sample_value("traces_service_graph_unpaired_spans_total", labels) == 1


def test_a_late_re_emission_counts_only_what_its_new_spans_bring() -> None:
    """A trace emitted again with a new call adds that call and its spans, nothing twice."""
    first = checkout_trace(failed=False)
    again = Trace(
        TRACE,
        [
            *first.spans,
            span("3", "2", service="payments", kind=CLIENT, start_ms=20, end_ms=30,
                 attributes={"db.system": "redis"}),
        ],
        late=True,
        already_emitted=2,
    )  # fmt: skip
    registry = observed(first, again)
    assert (
        registry.get_sample_value(
            "traces_service_graph_request_total",
            {"client": "checkout", "server": "payments", "connection_type": ""},
        )
        == 1
    )
    assert (
        registry.get_sample_value(
            "traces_service_graph_request_total",
            {"client": "payments", "server": "redis", "connection_type": "database"},
        )
        == 1
    )
    assert registry.get_sample_value(
        "traces_spanmetrics_calls_total",
        {"service": "payments", "span_name": "POST /pay", "span_kind": "SPAN_KIND_SERVER", "status_code": "STATUS_CODE_UNSET"},
    ) == 1  # fmt: skip


def test_a_late_server_span_for_a_client_that_named_its_peer_counts_the_request_once() -> None:
    """The client span named its peer (peer.service) and was emitted alone, counted as a
    call to that virtual node; the server span that comes late completes the same request,
    which must not be counted a second time."""
    client = span(
        "1", service="checkout", kind=CLIENT, end_ms=300, attributes={"peer.service": "payments"}
    )
    server = span("2", "1", service="payments", kind=SERVER, start_ms=10, end_ms=260)
    first = Trace(TRACE, [client])
    again = Trace(TRACE, [client, server], late=True, already_emitted=1)
    registry = observed(first, again)

    requests = registry.get_sample_value(
        "traces_service_graph_request_total",
        {"client": "checkout", "server": "payments", "connection_type": "virtual_node"},
    )
    paired = registry.get_sample_value(
        "traces_service_graph_request_total",
        {"client": "checkout", "server": "payments", "connection_type": ""},
    )
    assert (requests, paired) == (1, None)


def test_a_late_client_span_for_a_server_that_named_its_caller_counts_the_request_once() -> None:
    """The mirror case: a server span naming its caller (Zipkin's remoteEndpoint) was
    counted as a call from a virtual node; its client span arrives late."""
    client = span("1", service="web", kind=CLIENT, end_ms=300)
    server = span(
        "2",
        "1",
        service="api",
        kind=SERVER,
        start_ms=10,
        end_ms=260,
        attributes={"peer.service": "web"},
    )
    first = Trace(TRACE, [server])
    again = Trace(TRACE, [server, client], late=True, already_emitted=1)
    registry = observed(first, again)

    total = sum(
        registry.get_sample_value(
            "traces_service_graph_request_total",
            {"client": "web", "server": "api", "connection_type": connection_type},
        )
        or 0
        for connection_type in ("", "virtual_node")
    )
    assert total == 1


def test_a_late_server_span_for_an_unpaired_client_counts_the_request_then() -> None:
    """A client span that named no peer was counted unpaired, not as a request: when its
    server side comes late, the request is counted, once."""
    client = span("1", service="checkout", kind=CLIENT, end_ms=300)
    server = span("2", "1", service="payments", kind=SERVER, start_ms=10, end_ms=260)
    first = Trace(TRACE, [client])
    again = Trace(TRACE, [client, server], late=True, already_emitted=1)
    registry = observed(first, again)

    labels = {"client": "checkout", "server": "payments", "connection_type": ""}
    assert registry.get_sample_value("traces_service_graph_request_total", labels) == 1
    unpaired = {"client": "checkout", "server": "", "connection_type": ""}
    assert registry.get_sample_value("traces_service_graph_unpaired_spans_total", unpaired) == 1


def test_label_sets_beyond_max_series_are_counted_as_overflow() -> None:
    """At the series bound a new edge is not exported but counted."""
    other = Trace(
        "f" * 32,
        [
            span("1", service="web", kind=CLIENT, trace_id="f" * 32, end_ms=100),
            span("2", "1", service="app", kind=SERVER, trace_id="f" * 32, start_ms=1, end_ms=99),
        ],
    )
    registry = observed(checkout_trace(), other, max_series=1)
    assert (
        registry.get_sample_value(
            "traces_service_graph_request_total",
            {"client": "web", "server": "app", "connection_type": ""},
        )
        is None
    )
    assert (
        registry.get_sample_value(
            "observer_trace_metric_series_overflow_total", {"metric": "traces_service_graph"}
        )
        == 1
    )
