"""observer's /metrics text is byte for byte what prometheus_client's generate_latest writes."""

from __future__ import annotations

import math
from collections.abc import Iterator

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    Info,
    Summary,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    Metric,
)

from observer.telemetry import Exposition


def every_kind() -> CollectorRegistry:
    registry = CollectorRegistry()
    plain = Counter("observer_plain", "A counter without labels.", registry=registry)
    plain.inc(3)
    requests = Counter(
        "observer_requests", 'Help with a \\ backslash,\na newline and "quotes".',
        ["outcome", "status"], registry=registry,
    )  # fmt: skip
    requests.labels("ok", "200").inc(12_345_678)
    requests.labels('quoted "value"', "back\\slash").inc()
    requests.labels("new\nline", "ünïcødé ✓").inc(0.5)
    depth = Gauge("observer_depth", "A gauge.", ["queue"], registry=registry)
    depth.labels("a").set(math.inf)
    depth.labels("b").set(-math.inf)
    depth.labels("c").set(math.nan)
    depth.labels("d").set(-0.000_001)
    depth.labels("e").set(1e22)
    Histogram("observer_latency_seconds", "A histogram.", ["sink"], registry=registry).labels(
        "es"
    ).observe(0.3)
    Summary("observer_sizes_bytes", "A summary.", registry=registry).observe(1234)
    Info("observer_build", "An info.", registry=registry).info({"version": "1.2.3"})
    Enum("observer_state", "An enum (a stateset).", states=["up", "down"], registry=registry).state(
        "down"
    )

    class Custom:
        def collect(self) -> Iterator[Metric]:
            records = CounterMetricFamily(
                "observer_log_records", "Per workload.", labels=["namespace", "workload"]
            )
            records.add_metric(["default", "Deployment/web"], 7)
            records.add_metric(["kube-system", "DaemonSet/agent"], 1e7, timestamp=1_700_000_000.5)
            yield records
            lag = GaugeMetricFamily("observer_lag_seconds", "No samples this time.", labels=["x"])
            yield lag
            live = GaugeHistogramMetricFamily(
                "observer_live",
                "A gauge histogram.",
                buckets=[("1.0", 4), ("+Inf", 5)],
                gsum_value=9,
            )
            yield live

    registry.register(Custom())
    return registry


def test_every_metric_kind_renders_as_prometheus_client_does() -> None:
    registry = every_kind()
    exposition = Exposition(registry)

    first = exposition.render()
    second = exposition.render()  # from the label-set cache

    assert first == generate_latest(registry)
    assert second == first
    assert (
        b'observer_requests_total{outcome="quoted \\"value\\"",status="back\\\\slash"} 1.0' in first
    )


label_values = st.text(st.characters(codec="utf-8"), max_size=12)
values = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**60), 2**60)


@given(st.lists(st.tuples(label_values, label_values, values), max_size=8))
def test_any_label_values_and_numbers_render_as_prometheus_client_does(
    series: list[tuple[str, str, float]],
) -> None:
    class Custom:
        def collect(self) -> Iterator[Metric]:
            family = GaugeMetricFamily("observer_any", "Any series.", labels=["pod", "reason"])
            for pod, reason, value in series:
                family.add_metric([pod, reason], value)
            yield family

    registry = CollectorRegistry()
    registry.register(Custom())
    exposition = Exposition(registry)

    assert exposition.render() == generate_latest(registry)
    assert exposition.render() == generate_latest(registry)


def test_series_that_come_and_go_past_the_cache_still_render_exactly() -> None:
    """Pods come and go: more label sets than the cache keeps, scrape after scrape."""
    registry = CollectorRegistry()
    pods = Gauge("observer_pod_thing", "Per pod.", ["pod"], registry=registry)
    exposition = Exposition(registry)
    for generation in range(3):
        pods.clear()
        for number in range(3000):
            pods.labels(f"web-{generation}-{number}").set(number)
        assert exposition.render() == generate_latest(registry)
