"""The Jaeger-compatible query API over a real HTTP server on 127.0.0.1, backed by the
embedded store: the requests Grafana's Jaeger data source and Jaeger's UI make, and the
response shapes they parse."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from observer.collector.model import SpanKind, Trace
from observer.collector.query import QueryServer
from observer.collector.store import NS_PER_S
from observer.collector.store.sqlite import SqliteTraceStore
from tests.integration.stored_traces import (
    BASE_NS,
    MS,
    encoded,
    make_span,
    rich_trace,
    shop_trace,
    span_id,
    trace_id,
)

NOW_S = BASE_NS / NS_PER_S + 3600  # the API's clock: an hour after the traces
US = 1_000


@dataclass
class Api:
    url: str
    http: aiohttp.ClientSession
    store: SqliteTraceStore
    registry: CollectorRegistry

    async def get(self, path: str, **params: Any) -> tuple[int, Any]:
        async with self.http.get(f"{self.url}{path}", params=params) as response:
            assert response.content_type == "application/json"
            return response.status, await response.json()

    async def ok(self, path: str, **params: Any) -> Any:
        status, body = await self.get(path, **params)
        assert status == 200, body
        assert body["errors"] is None
        return body


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    registry = CollectorRegistry()
    store = await SqliteTraceStore.open(tmp_path / "traces.sqlite")
    server = QueryServer(store, "127.0.0.1:0", registry, clock=lambda: NOW_S)
    await server.start()
    async with aiohttp.ClientSession() as http:
        yield Api(f"http://127.0.0.1:{server.port}", http, store, registry)
    await server.stop()
    await store.close()


def trace_ids(body: dict[str, Any]) -> list[str]:
    return [trace["traceID"] for trace in body["data"]]


def window(start_ms: float = -1000, end_ms: float = 60_000) -> dict[str, int]:
    """start and end parameters (microseconds), as Grafana and Jaeger's UI send them."""
    return {
        "start": (BASE_NS + int(start_ms * MS)) // US,
        "end": (BASE_NS + int(end_ms * MS)) // US,
    }


def t(key: str, kind: str, value: Any) -> dict[str, Any]:
    return {"key": key, "type": kind, "value": value}


async def test_services_come_in_jaegers_envelope(api: Api) -> None:
    """/api/services lists the services, sorted, in {data, total, limit, offset, errors}."""
    await api.store.write(encoded(api.store.span_documents, shop_trace(1)))
    body = await api.ok("/api/services")
    assert body == {
        "data": ["checkout", "frontend", "payments"],
        "total": 3,
        "limit": 0,
        "offset": 0,
        "errors": None,
    }


async def test_the_ui_operations_call_lists_names(api: Api) -> None:
    """/api/services/{service}/operations lists each operation name once."""
    await api.store.write(encoded(api.store.span_documents, shop_trace(1)))
    body = await api.ok("/api/services/checkout/operations")
    assert body["data"] == ["POST", "POST /orders", "SELECT orders"]
    assert body["total"] == 3


async def test_operations_come_with_span_kinds_and_filter_by_kind(api: Api) -> None:
    """/api/operations gives {name, spanKind} and honours spanKind."""
    await api.store.write(encoded(api.store.span_documents, shop_trace(1)))
    every = await api.ok("/api/operations", service="checkout")
    servers = await api.ok("/api/operations", service="checkout", spanKind="server")
    assert every["data"] == [
        {"name": "POST", "spanKind": "client"},
        {"name": "POST /orders", "spanKind": "server"},
        {"name": "SELECT orders", "spanKind": "client"},
    ]
    assert servers["data"] == [{"name": "POST /orders", "spanKind": "server"}]


async def test_a_trace_by_id_has_jaegers_shape_with_observers_marks(api: Api) -> None:
    """/api/traces/{id}: processes p1…, references, typed tags, logs, µs times, verdict and skew marks."""
    await api.store.write(encoded(api.store.span_documents, rich_trace(1)))
    body = await api.ok(f"/api/traces/{trace_id(1)}")
    start = BASE_NS // US
    assert body == {
        "data": [
            {
                "traceID": trace_id(1),
                "spans": [
                    {
                        "traceID": trace_id(1),
                        "spanID": span_id(1),
                        "flags": 1,
                        "operationName": "GET /items",
                        "references": [
                            {
                                "refType": "FOLLOWS_FROM",
                                "traceID": trace_id(2),
                                "spanID": span_id(7),
                            }
                        ],
                        "startTime": start,
                        "duration": 10_000,
                        "tags": [
                            t("http.status_code", "int64", 200),
                            t("ratio", "float64", 0.25),
                            t("cached", "bool", False),
                            t("tags", "string", '["a","b"]'),
                            t("sizes", "string", "[1,2]"),
                            t("span.kind", "string", "server"),
                            t("observer.trace.completeness", "string", "partial"),
                            t("observer.trace.partial_reasons", "string", "missing_parent,orphan"),
                        ],
                        "logs": [
                            {
                                "timestamp": start + 2000,
                                "fields": [t("event", "string", "retry"), t("attempt", "int64", 2)],
                            }
                        ],
                        "processID": "p1",
                        "warnings": None,
                    },
                    {
                        "traceID": trace_id(1),
                        "spanID": span_id(2),
                        "flags": 1,
                        "operationName": "load",
                        "references": [
                            {"refType": "CHILD_OF", "traceID": trace_id(1), "spanID": span_id(1)}
                        ],
                        "startTime": start,
                        "duration": 12_000,
                        "tags": [
                            t("otel.status_code", "string", "ERROR"),
                            t("error", "bool", True),
                            t("otel.status_description", "string", "boom"),
                            t("observer.clock_skew.adjustment_us", "int64", 1500),
                        ],
                        "logs": [],
                        "processID": "p2",
                        "warnings": [
                            "observer: clock skew adjusted by +1.500 ms to fit inside the parent span"
                        ],
                    },
                    {
                        "traceID": trace_id(1),
                        "spanID": span_id(3),
                        "flags": 1,
                        "operationName": "GET",
                        "references": [
                            {"refType": "CHILD_OF", "traceID": trace_id(1), "spanID": span_id(9)}
                        ],
                        "startTime": start + 5000,
                        "duration": 10_000,
                        "tags": [
                            t("peer.service", "string", "inventory"),
                            t("span.kind", "string", "client"),
                            t("observer.partial_reason", "string", "orphan"),
                        ],
                        "logs": [],
                        "processID": "p2",
                        "warnings": ["observer: this span makes the trace partial: orphan"],
                    },
                ],
                "processes": {
                    "p1": {"serviceName": "gateway", "tags": [t("host.name", "string", "node-a")]},
                    "p2": {"serviceName": "items", "tags": []},
                },
                "warnings": [
                    "observer: partial trace: missing_parent (1 span)",
                    "observer: partial trace: orphan (1 span)",
                ],
            }
        ],
        "total": 0,
        "limit": 0,
        "offset": 0,
        "errors": None,
    }


async def test_a_64_bit_trace_id_finds_its_zero_padded_trace(api: Api) -> None:
    """A trace id of 16 hex digits (Zipkin's 64-bit ids) finds the trace stored left-padded."""
    await api.store.write(encoded(api.store.span_documents, shop_trace(0xABC)))
    body = await api.ok(f"/api/traces/{0xABC:016x}")
    assert trace_ids(body) == [trace_id(0xABC)]


async def test_an_unknown_trace_is_404_in_jaegers_error_shape(api: Api) -> None:
    """Asking for a trace never stored answers 404 with errors [{code, msg}]."""
    status, body = await api.get(f"/api/traces/{trace_id(7)}")
    assert status == 404
    assert body == {
        "data": None,
        "total": 0,
        "limit": 0,
        "offset": 0,
        "errors": [{"code": 404, "msg": "trace not found"}],
    }


async def test_search_by_service_gives_whole_traces_latest_first(api: Api) -> None:
    """/api/traces?service= returns up to `limit` whole traces, the latest first."""
    await api.store.write(
        encoded(api.store.span_documents, *(shop_trace(n, start_ms=n * 1000) for n in range(1, 5)))
    )
    body = await api.ok("/api/traces", service="payments", limit=3, **window())
    assert trace_ids(body) == [trace_id(4), trace_id(3), trace_id(2)]
    assert [len(trace["spans"]) for trace in body["data"]] == [6, 6, 6]


async def test_search_by_tags_as_grafana_sends_them(api: Api) -> None:
    """`tags` as a JSON object (Grafana, Jaeger's UI) and `tag=key:value` both filter by tag."""
    await api.store.write(
        encoded(
            api.store.span_documents, shop_trace(1), shop_trace(2, start_ms=10, payments_fail=False)
        )
    )
    as_json = await api.ok(
        "/api/traces", service="payments", tags='{"error":"true"}', lookback="custom", **window()
    )
    as_pairs = await api.ok(
        "/api/traces", service="payments", tag="http.status_code:200", **window()
    )
    assert trace_ids(as_json) == [trace_id(1)]
    assert trace_ids(as_pairs) == [trace_id(2)]


async def test_search_by_operation_and_duration(api: Api) -> None:
    """operation, minDuration and maxDuration (Go durations) narrow the search."""
    slow = shop_trace(2, start_ms=10)
    slow.spans[5].end_ns = slow.spans[5].start_ns + 1500 * MS
    await api.store.write(encoded(api.store.span_documents, shop_trace(1), slow))
    slower = await api.ok(
        "/api/traces", service="payments", operation="POST /pay", minDuration="1.2s", **window()
    )
    quicker = await api.ok("/api/traces", service="payments", maxDuration="100ms", **window())
    assert trace_ids(slower) == [trace_id(2)]
    assert trace_ids(quicker) == [trace_id(1)]


async def test_search_without_a_window_covers_the_two_days_before_now(api: Api) -> None:
    """With no start and end, the search looks back two days from the clock, as Jaeger does."""
    await api.store.write(
        encoded(api.store.span_documents, shop_trace(1), shop_trace(2, start_ms=-3 * 86400 * 1000))
    )
    body = await api.ok("/api/traces", service="frontend")
    assert trace_ids(body) == [trace_id(1)]


async def test_search_by_trace_ids_names_the_missing_ones_in_errors(api: Api) -> None:
    """traceID= parameters fetch those traces; one not stored is named in errors, the rest served."""
    await api.store.write(encoded(api.store.span_documents, shop_trace(1)))
    async with api.http.get(
        f"{api.url}/api/traces", params=[("traceID", trace_id(1)), ("traceID", trace_id(9))]
    ) as response:
        body = await response.json()
    assert response.status == 200
    assert trace_ids(body) == [trace_id(1)]
    assert body["errors"] == [{"msg": "trace not found", "traceID": trace_id(9)}]


async def test_dependencies_give_call_and_error_counts(api: Api) -> None:
    """/api/dependencies sums the edges of traces in (endTs - lookback, endTs], with errors."""
    await api.store.write(
        encoded(
            api.store.span_documents,
            shop_trace(1),
            shop_trace(2, payments_fail=False),
            shop_trace(3, start_ms=-7200_000),
        )
    )
    body = await api.ok("/api/dependencies", endTs=(BASE_NS + 60_000 * MS) // MS, lookback=3600_000)
    assert body["data"] == [
        {"parent": "checkout", "child": "payments", "callCount": 2, "errorCount": 1},
        {"parent": "checkout", "child": "postgresql", "callCount": 2, "errorCount": 0},
        {"parent": "frontend", "child": "checkout", "callCount": 2, "errorCount": 0},
    ]


async def test_dependencies_can_be_narrowed_to_one_service(api: Api) -> None:
    """service= keeps the edges that service is a caller or callee of."""
    await api.store.write(encoded(api.store.span_documents, shop_trace(1)))
    body = await api.ok("/api/dependencies", service="frontend")
    assert [(link["parent"], link["child"]) for link in body["data"]] == [("frontend", "checkout")]


async def test_a_shared_span_id_is_split_as_jaeger_does(api: Api) -> None:
    """Client and server halves sharing an id: the server half gets the next id, its children follow it."""
    client = make_span(1, 5, 4, "webapp", "GET", SpanKind.CLIENT)
    server = make_span(1, 5, 4, "backend", "GET /api", SpanKind.SERVER, start_ms=1, duration_ms=8)
    child = make_span(1, 8, 5, "backend", "query", SpanKind.INTERNAL, start_ms=2, duration_ms=5)
    await api.store.write(
        encoded(api.store.span_documents, Trace(trace_id(1), [client, server, child]))
    )
    body = await api.ok(f"/api/traces/{trace_id(1)}")
    links = [
        (span["spanID"], [ref["spanID"] for ref in span["references"]])
        for span in body["data"][0]["spans"]
    ]
    assert links == [
        (span_id(5), [span_id(4)]),
        (span_id(6), [span_id(5)]),
        (span_id(8), [span_id(6)]),
    ]


@pytest.mark.parametrize(
    ("path", "params", "message"),
    [
        ("/api/traces", {}, "parameter 'service' is required"),
        ("/api/traces", {"service": "a", "start": "yesterday"}, "unable to parse param 'start'"),
        ("/api/traces", {"service": "a", "limit": "0"}, "unable to parse param 'limit'"),
        (
            "/api/traces",
            {"service": "a", "minDuration": "5"},
            "unable to parse param 'minDuration'",
        ),
        (
            "/api/traces",
            {"service": "a", "minDuration": "2s", "maxDuration": "1s"},
            "'maxDuration' should be greater than 'minDuration'",
        ),
        ("/api/traces", {"service": "a", "tags": "{bad"}, "malformed 'tags' parameter"),
        ("/api/traces", {"service": "a", "tags": '{"k": [1]}'}, "malformed 'tags' parameter"),
        ("/api/traces", {"service": "a", "tag": "novalue"}, "malformed 'tag' parameter"),
        ("/api/traces", {"traceID": "xyz"}, "cannot parse traceID param"),
        ("/api/traces/not-a-trace-id", {}, "cannot parse traceID param"),
        ("/api/operations", {}, "parameter 'service' is required"),
        ("/api/operations", {"service": "a", "spanKind": "sideways"}, "unsupported span kind"),
        ("/api/dependencies", {"endTs": "noon"}, "unable to parse param 'endTs'"),
        ("/api/dependencies", {"lookback": "-5"}, "unable to parse param 'lookback'"),
        ("/api/dependencies", {"endTs": "99999999999999"}, "unable to parse param 'endTs'"),
        (
            "/api/traces",
            {"service": "a", "end": "99999999999999999"},
            "unable to parse param 'end'",
        ),
        ("/api/traces", {"service": "a", "minDuration": "9999999h"}, "unable to parse param"),
    ],
)
async def test_bad_parameters_get_400_in_jaegers_error_shape(
    api: Api, path: str, params: dict[str, str], message: str
) -> None:
    """A parameter the API cannot use is a 400 with errors [{code: 400, msg}], and counted."""
    status, body = await api.get(path, **params)
    assert status == 400
    assert body["data"] is None
    [error] = body["errors"]
    assert error["code"] == 400
    assert error["msg"].startswith(message), error["msg"]
    assert (
        sum(
            sample.value
            for metric in api.registry.collect()
            for sample in metric.samples
            if sample.name == "observer_query_requests_total" and sample.labels["code"] == "400"
        )
        == 1
    )


async def test_a_failing_store_is_a_500_in_jaegers_error_shape(api: Api) -> None:
    """When the store cannot answer (here: closed), the API says so with 500 and the reason."""
    await api.store.close()
    status, body = await api.get("/api/services")
    assert status == 500
    assert body["data"] is None
    assert body["errors"][0]["code"] == 500
