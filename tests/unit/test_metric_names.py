"""The alert rules name only metrics the agent and the collector expose."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from prometheus_client import CollectorRegistry

from observer.agent.app import TailMetrics, build_sinks
from observer.agent.checkpoint import CheckpointStore
from observer.agent.events import KubeletEventMetrics, KubeletEventSource, event_sinks
from observer.agent.log_metrics import LogPathMetrics
from observer.agent.spans import SpanPipeline
from observer.agent.tail import Tailer
from observer.collector.pipeline import TracePipeline
from observer.collector.query import QueryServer
from observer.collector.store import open_store
from observer.config import AgentConfig, CollectorConfig, CollectorStorage, EmbeddedStoreConfig
from observer.kube.client import KubeApi
from observer.kube.metadata import KubeMetrics, PodMetadataCache
from observer.receivers import IntakeCounts, IntakeMetrics
from observer.telemetry import build_info

RULES = Path(__file__).resolve().parents[2] / "dashboards" / "alerts" / "observer.rules.yaml"
# observer's own names, and the names of Tempo's metrics-generator the collector reuses.
METRIC = re.compile(r"\b(?:observer|traces)_[a-z0-9_]+\b")

# What each metric type puts on /metrics besides its family name (prometheus_client).
SAMPLE_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum"),
    "info": ("_info",),
}

Names = tuple[set[str], set[str]]
"""(sample names, family names) of a registry."""


def names(registry: CollectorRegistry) -> Names:
    families = list(registry.collect())
    samples = {
        family.name + suffix for family in families for suffix in SAMPLE_SUFFIXES[family.type]
    }
    return samples, {family.name for family in families}


async def agent_metric_names(tmp_path: Path) -> Names:
    """The metrics `observer.agent.app.run` registers while following, with every source on."""
    config = AgentConfig.model_validate(
        {
            "state_dir": str(tmp_path),
            "node_name": "node-a",
            "sources": {"kube_events": {"scope": "cluster"}},  # its leader gauge too
        }
    )
    registry = CollectorRegistry()
    sinks = build_sinks(config, registry)
    # Never connected: the registry is only read.
    metadata = PodMetadataCache(KubeApi(cast(Any, None)), config.node_name)
    event_sink_list, events_own_sinks = event_sinks(config, registry, sinks)
    events = KubeletEventSource(
        config.sources.kube_events, metadata, event_sink_list, config.state_dir
    )
    SpanPipeline(config.sources.spans, config.sinks.collector, metadata, registry)
    tailer = Tailer(
        config.sources.pod_logs, CheckpointStore(tmp_path), asyncio.Queue(), metadata=metadata
    )
    build_info(registry, "agent")
    registry.register(TailMetrics(tailer.counts, lambda: 0, lambda: 0))
    registry.register(LogPathMetrics(tailer, config.kubernetes.deleted_pod_grace))
    registry.register(KubeMetrics(metadata, {"events": events.watch.reflector}))
    registry.register(KubeletEventMetrics(events))
    try:
        return names(registry)
    finally:
        for sink in [*sinks, *events_own_sinks]:
            await sink.stop()


async def collector_metric_names(tmp_path: Path) -> Names:
    """The metrics `observer.collector.app.run` registers, with the embedded store."""
    config = CollectorConfig(
        storage=CollectorStorage(embedded=EmbeddedStoreConfig(path=tmp_path / "traces.sqlite"))
    )
    registry = CollectorRegistry()
    build_info(registry, "collector")
    store = await open_store(config.storage, registry)
    try:
        TracePipeline(config, store.write, registry=registry)
        registry.register(IntakeMetrics(IntakeCounts()))
        QueryServer(store, config.query.listen, registry)
        return names(registry)
    finally:
        await store.close()


GROUP_DEPLOYABLES = {"observer-agent": "agent", "observer-collector": "collector"}
"""Which process exposes what the rules of a group read."""


def rules() -> list[tuple[str, dict[str, Any]]]:
    document = yaml.safe_load(RULES.read_text())
    return [
        (GROUP_DEPLOYABLES[group["name"]], rule)
        for group in document["groups"]
        for rule in group["rules"]
    ]


@pytest.fixture
async def exposed(tmp_path: Path) -> dict[str, Names]:
    return {
        "agent": await agent_metric_names(tmp_path / "agent"),
        "collector": await collector_metric_names(tmp_path),
    }


def rule_id(case: tuple[str, dict[str, Any]]) -> str:
    return str(case[1]["alert"])


@pytest.mark.parametrize("case", rules(), ids=rule_id)
async def test_rule_expressions_use_exposed_metric_names(
    case: tuple[str, dict[str, Any]], exposed: dict[str, Names]
) -> None:
    """Every observer_* and traces_* series in a rule's expression is one its deployable's registry exposes."""
    deployable, rule = case
    samples, _ = exposed[deployable]

    assert set(METRIC.findall(str(rule["expr"]))) - samples == set()


@pytest.mark.parametrize("case", rules(), ids=rule_id)
async def test_rule_descriptions_name_exposed_metrics(
    case: tuple[str, dict[str, Any]], exposed: dict[str, Names]
) -> None:
    """Every metric a rule's annotations point the reader to exists, as a series or a family, on the agent or the collector."""
    _, rule = case
    known = set().union(*(samples | families for samples, families in exposed.values()))

    named = set(METRIC.findall(str(rule["annotations"])))

    assert named - known == set()


LEGACY_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


async def test_every_name_is_in_the_legacy_character_set(exposed: dict[str, Names]) -> None:
    """`telemetry.Exposition` writes names as they are, unquoted: only legacy names are
    valid there (and in every Prometheus version)."""
    for samples, families in exposed.values():
        assert {name for name in samples | families if not LEGACY_NAME.fullmatch(name)} == set()
