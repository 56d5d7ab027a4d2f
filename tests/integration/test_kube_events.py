"""The kubelet's Events as records in Elasticsearch: the real API server, the real node.

The tests play the kubelet: they post Events the way its recorder does (``source.component:
kubelet``, ``source.host: <node>``, a name ``<pod>.<hex>``) and raise their ``count``
with patches, as client-go's EventCorrelator does for repeats.
"""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from observer.agent import app
from observer.agent.events import STATE_FILE
from observer.config import AgentConfig
from observer.kube.client import KubeApi
from tests.integration.test_pod_metadata import (
    MERGE_PATCH,
    create,
    following,
    pod_body,
    set_running,
    until,
)
from tests.services.elasticsearch import Node
from tests.services.kubernetes import KubeCluster

EVENTS = "logs-kubernetes.event-default"
PROBE_MESSAGE = "Readiness probe failed: HTTP probe failed with statuscode: 500"


def agent_config(tmp_path: Path, node: str, kube: KubeCluster, es: Node) -> AgentConfig:
    return AgentConfig.model_validate(
        {
            "node_name": node,
            "state_dir": str(tmp_path / "state"),
            "telemetry": {"listen": "127.0.0.1:0"},
            "kubernetes": {"kubeconfig": str(kube.kubeconfig)},
            "sources": {"pod_logs": {"root": str(tmp_path / "pods")}},
            "sinks": {
                "elasticsearch": {
                    "hosts": [es.url],
                    "setup": {"number_of_replicas": 0},
                    "bulk": {"flush_interval": "50ms"},
                }
            },
        }
    )


def stored(es: Node) -> list[dict[str, Any]]:
    """Every event record, oldest count first (empty until the data stream exists)."""
    try:
        es.request("POST", f"/{EVENTS}/_refresh")
        response = es.request(
            "POST",
            f"/{EVENTS}/_search",
            {"size": 1000, "sort": [{"kubernetes.event.count": "asc"}, {"@timestamp": "asc"}]},
        )
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return []
        raise
    hits: list[dict[str, Any]] = response["hits"]["hits"]
    return hits


def kubelet_event(namespace: str, pod: dict[str, Any], node: str, name: str) -> dict[str, Any]:
    """An Event as the kubelet's recorder creates it for a container of `pod`."""
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": namespace},
        "involvedObject": {
            "apiVersion": "v1",
            "kind": "Pod",
            "namespace": namespace,
            "name": pod["metadata"]["name"],
            "uid": pod["metadata"]["uid"],
            "resourceVersion": pod["metadata"]["resourceVersion"],
            "fieldPath": "spec.containers{app}",
        },
        "reason": "Unhealthy",
        "message": PROBE_MESSAGE,
        "type": "Warning",
        "count": 1,
        "firstTimestamp": "2026-01-01T00:00:00Z",
        "lastTimestamp": "2026-01-01T00:00:00Z",
        "source": {"component": "kubelet", "host": node},
        "reportingComponent": "kubelet",
        "reportingInstance": node,
    }


async def repeat(api: KubeApi, namespace: str, name: str, count: int) -> None:
    """What the kubelet does when the same Event happens again: a higher count, a later time."""
    await api.request(
        "patch",
        "PATCH",
        f"/api/v1/namespaces/{namespace}/events/{name}",
        body={"count": count, "lastTimestamp": f"2026-01-01T00:00:{count:02d}Z"},
        content_type=MERGE_PATCH,
    )


async def running_pod(api: KubeApi, namespace: str, node: str) -> dict[str, Any]:
    pod = await create(
        api,
        f"/api/v1/namespaces/{namespace}/pods",
        pod_body("web-0", node, {"app": "web", "tier": "front"}),
    )
    await set_running(api, namespace, "web-0", "10.244.1.40")
    return pod


def compact_etcd(kube: KubeCluster) -> None:
    """Compact etcd to its current revision, as the API server does every five minutes."""

    def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(  # noqa: S310 - the test's loopback etcd
            f"{kube.etcd_endpoint}{path}", data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            answer: dict[str, Any] = json.loads(response.read())
            return answer

    key = base64.b64encode(b"/registry/namespaces").decode()
    revision = post("/v3/kv/range", {"key": key, "limits": 1})["header"]["revision"]
    post("/v3/kv/compaction", {"revision": revision, "physical": True})


async def test_probe_failure_events_are_stored_once_per_occurrence_across_restarts(
    tmp_path: Path, api: KubeApi, kube: KubeCluster, kube_namespace: str, node: str, es: Node
) -> None:
    """An Unhealthy Event whose count rises 1→3, then to 4 while the agent restarts, is four
    records with the parsed probe and the pod's labels; an update that adds no occurrence,
    and another node's Event, are none; the restarted agent resumes without listing."""
    pod = await running_pod(api, kube_namespace, node)
    name = "web-0.17f3a9c2b1d4e5f6"
    config = agent_config(tmp_path, node, kube, es)
    registry = CollectorRegistry()
    async with following(config, registry):
        await until(lambda: (tmp_path / "state" / STATE_FILE).exists())
        await create(
            api,
            f"/api/v1/namespaces/{kube_namespace}/events",
            kubelet_event(kube_namespace, pod, node, name),
        )
        other = kubelet_event(kube_namespace, pod, "some-other-node", "web-0.00aa")
        await create(api, f"/api/v1/namespaces/{kube_namespace}/events", other)
        for count in (2, 3):
            await repeat(api, kube_namespace, name, count)
        # An update that is not an occurrence: same count.
        await api.request(
            "patch",
            "PATCH",
            f"/api/v1/namespaces/{kube_namespace}/events/{name}",
            body={"metadata": {"labels": {"touched": "yes"}}},
            content_type=MERGE_PATCH,
        )
        await until(lambda: len(stored(es)) == 3, within=30)
        probe_failures = registry.get_sample_value(
            "observer_probe_failures_total",
            {
                "namespace": kube_namespace,
                "workload": "",
                "pod": "web-0",
                "probe": "readiness",
            },
        )
    await repeat(api, kube_namespace, name, 4)  # while no agent runs

    registry = CollectorRegistry()
    async with following(config, registry):
        await until(lambda: len(stored(es)) == 4, within=30)
        await asyncio.sleep(1.0)  # time for anything that would be a duplicate
        event_lists = registry.get_sample_value(
            "observer_kubernetes_relists_total", {"resource": "events"}
        )

    hits = stored(es)
    assert [hit["_source"]["kubernetes"]["event"]["count"] for hit in hits] == [1, 2, 3, 4]
    assert len({hit["_id"] for hit in hits}) == 4
    record = hits[1]["_source"]
    assert record["event"]["reason"] == "Unhealthy"
    assert record["event"]["action"] == "probe_failed"
    assert record["probe"] == {"kind": "readiness", "result": "failed", "type": "http"}
    assert record["http"]["response"]["status_code"] == 500
    assert record["message"] == PROBE_MESSAGE
    assert record["kubernetes"]["labels"] == {"app": "web", "tier": "front"}
    assert record["kubernetes"]["pod"]["uid"] == pod["metadata"]["uid"]
    assert record["kubernetes"]["container"] == {"name": "app"}
    assert record["container"]["image"] == {"name": "registry.example/shop/web:1.4"}
    assert record["@timestamp"].startswith("2026-01-01T00:00:02")
    assert {hit["_source"]["kubernetes"]["event"]["source"]["host"] for hit in hits} == {node}
    assert probe_failures == 3
    assert event_lists == 0


async def test_compacted_resume_point_lists_once_and_stores_nothing_twice(
    tmp_path: Path, api: KubeApi, kube: KubeCluster, kube_namespace: str, node: str, es: Node
) -> None:
    """A saved resourceVersion compacted out of etcd meets 410 Gone: the agent lists the
    Events once; the occurrence it had stored comes again and is a 409, not a copy."""
    pod = await running_pod(api, kube_namespace, node)
    name = "web-0.17f3a9c2b1d4e600"
    config = agent_config(tmp_path, node, kube, es)
    async with following(config):
        await create(
            api,
            f"/api/v1/namespaces/{kube_namespace}/events",
            kubelet_event(kube_namespace, pod, node, name),
        )
        await until(lambda: len(stored(es)) == 1, within=30)
    # Writes after the saved version, then compaction: the version is gone from etcd.
    for index in range(3):
        await create(
            api,
            f"/api/v1/namespaces/{kube_namespace}/configmaps",
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"churn-{index}"}},
        )
    compact_etcd(kube)

    registry = CollectorRegistry()
    async with following(config, registry):
        duplicate = {"outcome": "duplicate", "status": "409"}
        await until(
            lambda: (
                registry.get_sample_value("observer_elasticsearch_items_total", duplicate)
                is not None
            ),
            within=30,
        )
        await repeat(api, kube_namespace, name, 2)
        await until(lambda: len(stored(es)) == 2, within=30)
        event_lists = registry.get_sample_value(
            "observer_kubernetes_relists_total", {"resource": "events"}
        )
        duplicates = registry.get_sample_value("observer_elasticsearch_items_total", duplicate)

    assert [hit["_source"]["event"]["id"].rpartition("/")[2] for hit in stored(es)] == ["1", "2"]
    assert event_lists == 1
    assert duplicates == 1


class Agent:
    """An agent process's run, in this event loop, stopped gracefully on demand."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.registry = CollectorRegistry()
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(
            app.run(config, once=False, stop=self._stop, registry=self.registry)
        )

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.registry.get_sample_value(name, labels or {}) or 0.0

    @property
    def leading(self) -> bool:
        return self.sample("observer_kubernetes_events_leader") == 1

    async def stop(self) -> None:
        if not self._task.done():
            self._stop.set()
            await asyncio.wait_for(self._task, 15)


def cluster_scope_config(
    tmp_path: Path, node: str, kube: KubeCluster, es: Node, lease_namespace: str
) -> AgentConfig:
    base = agent_config(tmp_path / node, node, kube, es).model_dump(mode="json")
    base["sources"]["kube_events"].update(
        scope="cluster",
        leader_election={
            "namespace": lease_namespace,
            "lease_name": "observer-kube-events",
            "lease_duration": "3s",
            "renew_interval": "1s",
        },
    )
    return AgentConfig.model_validate(base)


async def test_cluster_scope_one_elected_agent_ships_every_nodes_events_and_a_successor_resumes(
    tmp_path: Path, api: KubeApi, kube: KubeCluster, kube_namespace: str, node: str, es: Node
) -> None:
    """Two agents on two nodes, scope cluster: exactly one watches Events, and ships both
    nodes' kubelet Events once each, each with its own pod's labels (the other node's pod
    read with a GET). Stopped, it hands over: the other resumes from the Lease's annotation
    without listing, and the Events that happen meanwhile are stored once each."""
    nodes = [f"{node}-a", f"{node}-b"]
    pods = []
    for index, (host, app_label) in enumerate(zip(nodes, ("web", "pay"), strict=True)):
        pods.append(
            await create(
                api,
                f"/api/v1/namespaces/{kube_namespace}/pods",
                pod_body(f"{app_label}-0", host, {"app": app_label}),
            )
        )
        await set_running(api, kube_namespace, f"{app_label}-0", f"10.244.9.{index + 1}")
    agents = [
        Agent(cluster_scope_config(tmp_path, host, kube, es, kube_namespace)) for host in nodes
    ]
    events_path = f"/api/v1/namespaces/{kube_namespace}/events"

    def ours() -> list[dict[str, Any]]:
        return [
            hit
            for hit in stored(es)
            if hit["_source"]["kubernetes"]["event"]["namespace"] == kube_namespace
        ]

    try:
        await until(lambda: sum(agent.leading for agent in agents) == 1, within=15)
        (leader,) = [agent for agent in agents if agent.leading]
        (follower,) = [agent for agent in agents if not agent.leading]
        for pod, host in zip(pods, nodes, strict=True):
            name = f"{pod['metadata']['name']}.17f3a9c2b1d4e5f6"
            await create(api, events_path, kubelet_event(kube_namespace, pod, host, name))
        await until(lambda: len(ours()) == 2, within=30)
        other_node_pod = {
            "namespace": kube_namespace,
            "workload": "",
            "pod": "pay-0" if leader is agents[0] else "web-0",
            "probe": "readiness",
        }
        other_node_failures = leader.sample("observer_probe_failures_total", other_node_pod)
        assert follower.sample("observer_kubernetes_api_requests_total", {"verb": "watch"}) == 2
        await asyncio.sleep(1.5)  # a save of the resume point into the Lease's annotations

        await leader.stop()
        await repeat(api, kube_namespace, "pay-0.17f3a9c2b1d4e5f6", 2)
        await create(
            api,
            events_path,
            kubelet_event(kube_namespace, pods[0], nodes[0], "web-0.17f3a9c2b1d4e700"),
        )
        await until(lambda: len(ours()) == 4, within=30)
        await asyncio.sleep(1.0)  # time for anything that would be a duplicate
        assert follower.leading
        successor_lists = follower.sample(
            "observer_kubernetes_relists_total", {"resource": "events"}
        )
    finally:
        for agent in agents:
            await agent.stop()

    hits = ours()
    assert len({hit["_id"] for hit in hits}) == 4
    by_pod: dict[str, list[dict[str, Any]]] = {}
    for hit in hits:
        by_pod.setdefault(hit["_source"]["kubernetes"]["pod"]["name"], []).append(hit["_source"])
    for name, host, app_label in (("web-0", nodes[0], "web"), ("pay-0", nodes[1], "pay")):
        records = by_pod[name]
        assert len(records) == 2
        for record in records:
            assert record["kubernetes"]["labels"] == {"app": app_label}
            assert record["kubernetes"]["node"]["name"] == host
            assert record["kubernetes"]["pod"]["ip"].startswith("10.244.9.")
            assert "metadata_missing" not in record["kubernetes"]
    assert sorted(r["kubernetes"]["event"]["count"] for r in by_pod["pay-0"]) == [1, 2]
    assert other_node_failures == 1
    assert successor_lists == 0, "the successor resumes from the Lease, without a list"
