"""The agent's /metrics stays bounded while pods come and go: 1,000 pods, each of its own
workload, created on the agent's node through the real kube-apiserver, logging, some failing
their readiness probe or OOM-killed, then deleted with their log directories, as the kubelet
does. Once their grace has passed, no series names any of them, and the series count after
1,000 pods is what it was after 100."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Awaitable, Iterable
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from observer.config import AgentConfig
from observer.kube.client import KubeApi
from observer.testing import PodLogTree
from tests.integration.test_kube_events import kubelet_event
from tests.integration.test_pod_metadata import (
    MERGE_PATCH,
    create,
    following,
    pod_body,
    set_running,
    until,
)
from tests.services.kubernetes import KubeCluster

CONCURRENT_REQUESTS = 20
PROBE_FAILING_EVERY = 10
OOM_KILLED_EVERY = 10


def agent_config(tmp_path: Path, node: str, kube: KubeCluster) -> AgentConfig:
    return AgentConfig.model_validate(
        {
            "node_name": node,
            "state_dir": str(tmp_path / "state"),
            "telemetry": {"listen": "127.0.0.1:0"},
            "kubernetes": {"kubeconfig": str(kube.kubeconfig), "deleted_pod_grace": "1s"},
            "sources": {"pod_logs": {"root": str(tmp_path / "pods"), "poll_interval": "20ms"}},
            "sinks": {"elasticsearch": None, "file": {"path": str(tmp_path / "out.jsonl")}},
        }
    )


def series(registry: CollectorRegistry) -> list[tuple[str, dict[str, str]]]:
    """Every sample /metrics shows: (name, labels)."""
    text = generate_latest(registry).decode()
    return [
        (sample.name, sample.labels)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def naming(samples: Iterable[tuple[str, dict[str, str]]], word: str) -> list[str]:
    return [
        f"{name}{labels}"
        for name, labels in samples
        if any(word in value for value in labels.values())
    ]


async def in_batches(calls: Iterable[Awaitable[Any]]) -> None:
    pending = list(calls)
    for start in range(0, len(pending), CONCURRENT_REQUESTS):
        await asyncio.gather(*pending[start : start + CONCURRENT_REQUESTS])


class Pods:
    """Pods of this test's own StatefulSets (one each, so every pod is a new workload)."""

    def __init__(self, api: KubeApi, namespace: str, node: str, tree: PodLogTree) -> None:
        self.api = api
        self.namespace = namespace
        self.node = node
        self.tree = tree
        self.created: dict[int, dict[str, Any]] = {}

    async def start(self, number: int) -> None:
        name = f"db-{number}-0"
        owner = {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "name": f"db-{number}",
            "uid": str(uuid.uuid4()),
            "controller": True,
        }
        path = f"/api/v1/namespaces/{self.namespace}/pods"
        pod = await create(self.api, path, pod_body(name, self.node, {"app": "db"}, owner))
        self.created[number] = pod
        await set_running(self.api, self.namespace, name, f"10.245.{number // 250}.{number % 250}")
        log = self.tree.container(self.namespace, name, "app", pod["metadata"]["uid"])
        log.write([orjson.dumps({"level": "info", "msg": "ready"}).decode(), "plain"])
        log.write([orjson.dumps({"level": "error", "msg": "oops"}).decode()], stream="stderr")
        if number % PROBE_FAILING_EVERY == 0:
            event = kubelet_event(self.namespace, pod, self.node, f"{name}.{number:016x}")
            await create(self.api, f"/api/v1/namespaces/{self.namespace}/events", event)
        if number % OOM_KILLED_EVERY == 0:
            await self.oom_killed(name)

    async def oom_killed(self, name: str) -> None:
        """The status the kubelet writes after the container's first run was OOM-killed."""
        await self.api.request(
            "patch",
            "PATCH",
            f"/api/v1/namespaces/{self.namespace}/pods/{name}/status",
            body={
                "status": {
                    "containerStatuses": [
                        {
                            "name": "app",
                            "ready": True,
                            "restartCount": 1,
                            "image": "registry.example/shop/web:1.4",
                            "imageID": "",
                            "containerID": f"containerd://app{'cd' * 20}",
                            "state": {"running": {"startedAt": "2026-01-01T00:01:00Z"}},
                            "lastState": {
                                "terminated": {
                                    "reason": "OOMKilled",
                                    "exitCode": 137,
                                    "startedAt": "2026-01-01T00:00:00Z",
                                    "finishedAt": "2026-01-01T00:00:59Z",
                                    "containerID": f"containerd://app{'ab' * 20}",
                                }
                            },
                        }
                    ]
                }
            },
            content_type=MERGE_PATCH,
        )

    async def stop(self, number: int) -> None:
        """Delete the pod, then its log directory, as the kubelet does once it is gone."""
        pod = self.created.pop(number)
        name = pod["metadata"]["name"]
        await self.api.request(
            "delete",
            "DELETE",
            f"/api/v1/namespaces/{self.namespace}/pods/{name}",
            params={"gracePeriodSeconds": "0"},
        )
        directory = self.tree.root / f"{self.namespace}_{name}_{pod['metadata']['uid']}"
        shutil.rmtree(directory)


async def test_series_stay_bounded_when_a_thousand_pods_come_and_go(
    tmp_path: Path,
    tree: PodLogTree,
    api: KubeApi,
    kube: KubeCluster,
    kube_namespace: str,
    node: str,
) -> None:
    """After 100 and after 1,000 short-lived pods, each of its own workload, /metrics shows
    the same number of series and none naming a pod or workload that is gone."""
    pods = Pods(api, kube_namespace, node, tree)
    registry = CollectorRegistry()
    lines_per_pod = 3
    seen: dict[int, int] = {}

    async def come_and_go(numbers: range) -> None:
        await in_batches(pods.start(number) for number in numbers)
        expected_lines = lines_per_pod * numbers.stop
        await until(
            lambda: registry.get_sample_value("observer_log_lines_read_total") == expected_lines,
            within=120,
        )
        live = series(registry)
        seen[numbers.stop] = len(live)
        assert naming(live, f"db-{numbers.stop - 1}"), "the live pods' series never showed"
        await in_batches(pods.stop(number) for number in numbers)
        await until(lambda: not naming(series(registry), "db-"), within=60)

    async with following(agent_config(tmp_path, node, kube), registry):
        await come_and_go(range(100))
        after_hundred = series(registry)
        await come_and_go(range(100, 1000))
        after_thousand = series(registry)

    def shown(samples: list[tuple[str, dict[str, str]]]) -> set[str]:
        return {f"{name}{sorted(labels.items())}" for name, labels in samples}

    assert len(after_thousand) == len(after_hundred), (
        f"new: {shown(after_thousand) - shown(after_hundred)}, "
        f"gone: {shown(after_hundred) - shown(after_thousand)}"
    )
    assert naming(after_thousand, "db-") == []
    assert seen[1000] > len(after_thousand)  # 900 workloads were on /metrics while they lived
