"""dashboards/alerts/observer.rules.yaml, checked by promtool and evaluated by a real Prometheus."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from observer.agent.app import TailMetrics, build_sinks
from observer.agent.tail import TailCounts
from observer.config import AgentConfig
from observer.sinks.elasticsearch import ElasticsearchSink
from observer.telemetry import TelemetryServer, build_info
from tests.services.plugin import http_get
from tests.services.prometheus import Prometheus

ALERTS = Path(__file__).resolve().parents[2] / "dashboards" / "alerts"
RULES = ALERTS / "observer.rules.yaml"
RULE_TESTS = ALERTS / "tests" / "observer.rules.test.yaml"
SEVERITIES = {"critical", "warning", "info"}
# Alerts about what observer watches, summed over the processes that count it (a service's
# spans over the collector replicas, a workload's pods over the agents of their nodes):
# no instance is left to name, so they name these labels instead.
NAMED_INSTEAD_OF_INSTANCE = {
    "ObserverServiceErrorRatioHigh": ("service",),
    "ObserverReadinessProbeFailing": ("namespace", "workload"),
    "ObserverKubeEventsLeaderMissing": ("job",),  # about the agents together: none leads
}


def _rules() -> list[dict[str, Any]]:
    return [
        rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
    ]


def _promtool(promtool: Path, *args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *map(str, args)], capture_output=True, text=True, timeout=60)


def test_promtool_check_rules_passes(promtool: Path) -> None:
    """promtool accepts the rules file as it is shipped."""
    checked = _promtool(promtool, "check", "rules", RULES)

    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_promtool_unit_tests_pass(promtool: Path) -> None:
    """Every case of the rules' promtool unit tests passes: alerts fire when they should, and only then."""
    tested = _promtool(promtool, "test", "rules", RULE_TESTS)

    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_promtool_unit_tests_catch_an_alert_that_fires_too_soon(
    promtool: Path, tmp_path: Path
) -> None:
    """The unit tests fail when a rule loses its `for` (a blip would then page)."""
    rules = RULES.read_text()
    mutated = rules.replace(
        'expr: up{job=~".*observer-agent.*"} == 0\n        for: 5m',
        'expr: up{job=~".*observer-agent.*"} == 0\n        for: 0m',
    )
    assert mutated != rules
    (tmp_path / "observer.rules.yaml").write_text(mutated)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / RULE_TESTS.name).write_text(RULE_TESTS.read_text())

    tested = _promtool(promtool, "test", "rules", tmp_path / "tests" / RULE_TESTS.name)

    assert tested.returncode != 0
    assert "ObserverAgentDown" in tested.stdout + tested.stderr


@pytest.mark.parametrize("rule", _rules(), ids=lambda rule: str(rule["alert"]))
def test_every_alert_is_unit_tested_firing_and_not_firing(rule: dict[str, Any]) -> None:
    """Each alert has a promtool case where it fires and one where it must stay silent."""
    cases = [
        case
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case["alertname"] == rule["alert"]
    ]

    assert any(case["exp_alerts"] for case in cases), "no case where it fires"
    assert any(not case["exp_alerts"] for case in cases), "no case where it stays silent"


@pytest.mark.parametrize("rule", _rules(), ids=lambda rule: str(rule["alert"]))
def test_every_alert_says_what_to_look_at(rule: dict[str, Any]) -> None:
    """Each alert has a known severity, a summary, and a description naming the target it is about."""
    assert rule["labels"]["severity"] in SEVERITIES
    assert rule["annotations"]["summary"]
    description = rule["annotations"]["description"]
    if rule["alert"] in NAMED_INSTEAD_OF_INSTANCE:
        assert "instance" not in rule["expr"]
        for label in NAMED_INSTEAD_OF_INSTANCE[rule["alert"]]:
            assert f"$labels.{label}" in description
    elif "absent(" not in rule["expr"]:  # absent() has no target to name
        assert "{{ $labels.instance }}" in description


# --- a real Prometheus evaluating the rules over a real observer /metrics ------------------


@pytest.fixture
async def agent_telemetry(
    tmp_path: Path,
) -> AsyncIterator[tuple[TelemetryServer, ElasticsearchSink]]:
    """The agent's metrics as `observer.agent.app.run` registers them, served on loopback."""
    registry = CollectorRegistry()
    (sink,) = build_sinks(AgentConfig(state_dir=tmp_path), registry)
    assert isinstance(sink, ElasticsearchSink)
    build_info(registry, "agent")
    registry.register(TailMetrics(TailCounts(), lambda: 0, lambda: 0))
    server = TelemetryServer(registry, "127.0.0.1:0")
    await server.start()
    yield server, sink
    await server.stop()
    await sink.stop()


async def _alerts(prometheus: Prometheus, instance: str) -> list[dict[str, Any]]:
    answer = json.loads(await asyncio.to_thread(http_get, f"{prometheus.url}/api/v1/alerts"))
    return [a for a in answer["data"]["alerts"] if a["labels"].get("instance") == instance]


async def test_first_dead_letter_fires_in_a_real_prometheus(
    agent_telemetry: tuple[TelemetryServer, ElasticsearchSink], prometheus_instance: Prometheus
) -> None:
    """Prometheus fires ObserverRecordsDeadLettered at the agent's first dead letter, and not before."""
    server, sink = agent_telemetry
    instance = f"127.0.0.1:{server.port}"
    prometheus_instance.configure(targets=[instance], rule_files=[RULES])
    assert await prometheus_instance.wait_for(
        f'observer_elasticsearch_unavailable_seconds{{instance="{instance}"}}'
    )
    await asyncio.sleep(3)  # a few evaluations over a healthy, idle agent
    assert await _alerts(prometheus_instance, instance) == []

    sink.metrics.dead_lettered.labels("mapper_parsing_exception", "elasticsearch").inc()
    deadline = time.monotonic() + 20
    firing: list[dict[str, Any]] = []
    while not firing and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        firing = [a for a in await _alerts(prometheus_instance, instance) if a["state"] == "firing"]

    (alert,) = firing
    assert alert["labels"] == {
        "alertname": "ObserverRecordsDeadLettered",
        "severity": "warning",
        "job": "observer",
        "instance": instance,
        "reason": "mapper_parsing_exception",
        "store": "elasticsearch",
    }
    assert alert["annotations"]["summary"] == (
        f"observer agent {instance} dead-lettered documents: mapper_parsing_exception"
    )
    assert "kept in the elasticsearch dead-letter store" in alert["annotations"]["description"]
