"""The alert rules name only metrics the agent exposes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from observer.agent.app import TailMetrics, build_sinks
from observer.agent.tail import TailCounts
from observer.config import AgentConfig
from observer.telemetry import build_info

RULES = Path(__file__).resolve().parents[2] / "dashboards" / "alerts" / "observer.rules.yaml"
METRIC = re.compile(r"\bobserver_[a-z0-9_]+\b")

# What each metric type puts on /metrics besides its family name (prometheus_client).
SAMPLE_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum"),
    "info": ("_info",),
}


async def agent_metric_names(tmp_path: Path) -> tuple[set[str], set[str]]:
    """(sample names, family names) of an agent wired with its default sinks, as in `run`."""
    registry = CollectorRegistry()
    sinks = build_sinks(AgentConfig(state_dir=tmp_path), registry)
    build_info(registry, "agent")
    registry.register(TailMetrics(TailCounts(), lambda: 0, lambda: 0))
    for sink in sinks:
        await sink.stop()
    families = list(registry.collect())
    samples = {
        family.name + suffix for family in families for suffix in SAMPLE_SUFFIXES[family.type]
    }
    return samples, {family.name for family in families}


def rules() -> list[dict[str, object]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


@pytest.mark.parametrize("rule", rules(), ids=lambda rule: str(rule["alert"]))
async def test_rule_expressions_use_exposed_metric_names(
    rule: dict[str, object], tmp_path: Path
) -> None:
    """Every observer_* series in a rule's expression is one the agent's registry exposes."""
    samples, _ = await agent_metric_names(tmp_path)

    assert set(METRIC.findall(str(rule["expr"]))) - samples == set()


@pytest.mark.parametrize("rule", rules(), ids=lambda rule: str(rule["alert"]))
async def test_rule_descriptions_name_exposed_metrics(
    rule: dict[str, object], tmp_path: Path
) -> None:
    """Every observer_* name a rule's annotations point the reader to exists, as a series or a family."""
    samples, families = await agent_metric_names(tmp_path)

    named = set(METRIC.findall(str(rule["annotations"])))

    assert named - samples - families == set()
