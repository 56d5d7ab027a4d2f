"""What the agent's /metrics says about the logs it ships: records by workload and level,
from a Deployment pod known to the real kube-apiserver, and checkpoint lag while the real
Elasticsearch is cut off and after it is back."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from urllib.parse import urlsplit

import orjson
from prometheus_client import CollectorRegistry

from observer.config import AgentConfig
from observer.kube.client import KubeApi
from observer.testing import PodLogTree
from tests.integration.polling import until
from tests.integration.test_pod_metadata import agent_config, deployment_pod, following
from tests.services.elasticsearch import Node
from tests.services.kubernetes import KubeCluster
from tests.services.network import TcpRelay

RECORDS = "observer_log_records_total"


def json_line(level: str, message: str) -> str:
    return orjson.dumps({"level": level, "msg": message}).decode()


async def test_records_are_counted_by_namespace_workload_stream_and_level(
    tmp_path: Path,
    tree: PodLogTree,
    api: KubeApi,
    kube: KubeCluster,
    kube_namespace: str,
    node: str,
) -> None:
    """Lines of a Deployment's pod are counted under its workload, per stream, with their
    levels folded into the fixed set (WARNING → warn, an unknown word → other, none → unknown)."""
    pod = await deployment_pod(api, kube_namespace, node)
    log = tree.container(kube_namespace, "web-5d8f7-x2b9q", "app", pod["metadata"]["uid"])
    log.write([json_line("info", f"served {i}") for i in range(3)])
    log.write([json_line("WARNING", "slow"), json_line("warn", "slower")])
    log.write([json_line("verbose", "chatty"), "plain text", "more plain text"])
    log.write([json_line("error", "failed")], stream="stderr")
    registry = CollectorRegistry()

    def records(stream: str, level: str) -> float | None:
        labels = {"namespace": kube_namespace, "workload": "deployment/web"}
        return registry.get_sample_value(RECORDS, {**labels, "stream": stream, "level": level})

    async with following(agent_config(tmp_path, node, kube.kubeconfig), registry):
        await until(lambda: records("stderr", "error") == 1)
        counted = {
            (stream, level): records(stream, level)
            for stream in ("stdout", "stderr")
            for level in ("info", "warn", "error", "other", "unknown")
        }

    assert {key: value for key, value in counted.items() if value is not None} == {
        ("stdout", "info"): 3,
        ("stdout", "warn"): 2,
        ("stdout", "other"): 1,
        ("stdout", "unknown"): 2,
        ("stderr", "error"): 1,
    }


def relayed_config(tmp_path: Path, relay: TcpRelay) -> AgentConfig:
    return AgentConfig.model_validate(
        {
            "node_name": "node-a",
            "state_dir": str(tmp_path / "state"),
            "telemetry": {"listen": "127.0.0.1:0"},
            "sources": {"pod_logs": {"root": str(tmp_path / "pods"), "poll_interval": "20ms"}},
            "sinks": {
                "file": None,
                "elasticsearch": {
                    "hosts": [f"http://127.0.0.1:{relay.port}"],
                    "request_timeout": "2s",
                    "retry": {"initial_backoff": "50ms", "max_backoff": "500ms"},
                    "setup": {"number_of_replicas": 0},
                },
            },
        }
    )


async def test_checkpoint_lag_counts_what_waits_for_elasticsearch(
    tmp_path: Path, tree: PodLogTree, es: Node
) -> None:
    """Cut from Elasticsearch, the lag is exactly the bytes written since and as old as they
    are; once it is back, everything is delivered and the lag returns to 0."""
    relay = TcpRelay(urlsplit(es.url).port or 9200)
    await relay.start()
    registry = CollectorRegistry()

    def lag() -> tuple[float | None, float | None]:
        return (
            registry.get_sample_value("observer_checkpoint_lag_bytes"),
            registry.get_sample_value("observer_checkpoint_lag_seconds"),
        )

    log = tree.container("shop", "web-1", "app")
    log.write([f"before {i}" for i in range(100)])
    live_file = log.directory / "0.log"
    try:
        async with following(relayed_config(tmp_path, relay), registry):
            await until(lambda: lag() == (0, 0) and _lines_read(registry) == 100, within=30)

            await relay.cut()
            delivered_size = live_file.stat().st_size
            log.write([f"during {i}" for i in range(200)])
            cut_at = time.monotonic()
            waiting = live_file.stat().st_size - delivered_size
            await until(lambda: _lines_read(registry) == 300)
            await asyncio.sleep(2.0)
            lag_bytes, lag_seconds = lag()
            waited = time.monotonic() - cut_at

            await relay.start()
            await until(lambda: lag() == (0, 0), within=30)
    finally:
        await relay.cut()

    assert lag_bytes == waiting
    assert lag_seconds is not None
    assert 2.0 <= lag_seconds <= waited + 1.0


def _lines_read(registry: CollectorRegistry) -> float | None:
    return registry.get_sample_value("observer_log_lines_read_total")
