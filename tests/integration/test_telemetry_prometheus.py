"""observer's /metrics endpoint, scraped by the real Prometheus."""

from __future__ import annotations

import asyncio
import gzip
import urllib.request
from collections.abc import AsyncIterator
from urllib.error import HTTPError

import pytest
from prometheus_client import CollectorRegistry, Counter

from observer.telemetry import TelemetryServer, build_info, metric_name
from tests.services.plugin import http_get
from tests.services.prometheus import Prometheus


@pytest.fixture
async def telemetry() -> AsyncIterator[TelemetryServer]:
    registry = CollectorRegistry()
    build_info(registry, "agent")
    server = TelemetryServer(registry, "127.0.0.1:0")
    await server.start()
    yield server
    await server.stop()


async def test_prometheus_scrapes_observer_metrics(
    telemetry: TelemetryServer, prometheus_instance: Prometheus
) -> None:
    """A counter observer increments is what PromQL returns after Prometheus scrapes it."""
    lines = Counter(
        metric_name("test_lines"), "Lines seen by this test.", registry=telemetry.registry
    )
    lines.inc(42)
    prometheus_instance.configure(targets=[f"127.0.0.1:{telemetry.port}"])

    result = await prometheus_instance.wait_for('observer_test_lines_total{job="observer"}')

    assert [float(sample["value"][1]) for sample in result] == [42.0]
    (info,) = prometheus_instance.query("observer_build_info")
    assert info["metric"]["deployable"] == "agent"


async def test_readyz_names_the_failing_check(telemetry: TelemetryServer) -> None:
    """/readyz answers 503 with each failing check's reason, and 200 once they pass."""
    reason: list[str | None] = ["elasticsearch unreachable"]

    async def sink_check() -> str | None:
        return reason[0]

    telemetry.readiness_checks["elasticsearch"] = sink_check
    url = f"http://127.0.0.1:{telemetry.port}"
    with pytest.raises(HTTPError, match="503") as refused:
        await asyncio.to_thread(http_get, f"{url}/readyz")
    assert refused.value.read() == b"elasticsearch: elasticsearch unreachable\n"
    reason[0] = None
    assert await asyncio.to_thread(http_get, f"{url}/readyz") == b"ok\n"
    assert await asyncio.to_thread(http_get, f"{url}/healthz") == b"ok\n"


async def test_metrics_are_gzipped_when_the_scraper_asks(telemetry: TelemetryServer) -> None:
    """Prometheus sends `Accept-Encoding: gzip`; the same exposition comes back gzipped,
    and uncompressed to a client that does not ask."""
    url = f"http://127.0.0.1:{telemetry.port}/metrics"

    def get(headers: dict[str, str]) -> tuple[str | None, bytes]:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers)) as response:
            return response.headers.get("Content-Encoding"), response.read()

    encoding, compressed = await asyncio.to_thread(get, {"Accept-Encoding": "gzip"})
    plain_encoding, plain = await asyncio.to_thread(get, {})

    assert encoding == "gzip"
    assert plain_encoding is None
    assert gzip.decompress(compressed) == plain
    assert b'observer_build_info{deployable="agent"' in plain
