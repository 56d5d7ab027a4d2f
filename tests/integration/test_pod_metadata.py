"""Pod metadata on log records, from the real kube-apiserver (the tests play the kubelet)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import yaml
from prometheus_client import CollectorRegistry

from observer.agent import app
from observer.agent.checkpoint import CheckpointStore
from observer.agent.tail import Batch, Tailer
from observer.config import AgentConfig
from observer.kube.client import KubeApi
from observer.kube.metadata import PodMetadataCache
from observer.testing import PodLogTree
from tests.integration.polling import until
from tests.services.kubernetes import KubeCluster
from tests.services.process import free_port

Documents = list[dict[str, Any]]
MERGE_PATCH = "application/merge-patch+json"


def agent_config(tmp_path: Path, node: str, kubeconfig: Path, **kubernetes: object) -> AgentConfig:
    return AgentConfig.model_validate(
        {
            "node_name": node,
            "state_dir": str(tmp_path / "state"),
            "telemetry": {"listen": "127.0.0.1:0"},
            "kubernetes": {"kubeconfig": str(kubeconfig), **kubernetes},
            "sources": {"pod_logs": {"root": str(tmp_path / "pods"), "poll_interval": "20ms"}},
            "sinks": {"elasticsearch": None, "file": {"path": str(tmp_path / "out.jsonl")}},
        }
    )


def delivered(tmp_path: Path) -> Documents:
    out = tmp_path / "out.jsonl"
    return [orjson.loads(line) for line in out.read_bytes().splitlines()] if out.exists() else []


def by_message(documents: Documents) -> dict[str, dict[str, Any]]:
    return {document["message"]: document for document in documents}


@contextlib.asynccontextmanager
async def following(
    config: AgentConfig, registry: CollectorRegistry | None = None
) -> AsyncIterator[None]:
    stop = asyncio.Event()
    agent = asyncio.create_task(app.run(config, once=False, stop=stop, registry=registry))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(agent, 15)


def pod_body(
    name: str,
    node: str | None,
    labels: dict[str, str] | None = None,
    owner: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "labels": labels or {}}
    if owner is not None:
        metadata["ownerReferences"] = [owner]
    if annotations is not None:
        metadata["annotations"] = annotations
    spec: dict[str, Any] = {
        "containers": [
            {"name": "app", "image": "registry.example/shop/web:1.4"},
            {"name": "sidecar", "image": "envoyproxy/envoy:v1.31"},
        ]
    }
    if node is not None:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


async def create(api: KubeApi, path: str, body: dict[str, Any]) -> dict[str, Any]:
    return await api.request("create", "POST", path, body=body)


async def set_running(api: KubeApi, namespace: str, name: str, ip: str) -> None:
    """Write the status the kubelet writes once the containers run."""
    statuses = [
        {
            "name": container,
            "ready": True,
            "restartCount": 0,
            "image": image,
            "imageID": f"{image}@sha256:{'0' * 64}",
            "containerID": f"containerd://{container}{'ab' * 20}",
            "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
        }
        for container, image in (
            ("app", "registry.example/shop/web:1.4"),
            ("sidecar", "envoyproxy/envoy:v1.31"),
        )
    ]
    await api.request(
        "patch",
        "PATCH",
        f"/api/v1/namespaces/{namespace}/pods/{name}/status",
        body={
            "status": {
                "phase": "Running",
                "podIP": ip,
                "podIPs": [{"ip": ip}],
                "containerStatuses": statuses,
            }
        },
        content_type=MERGE_PATCH,
    )


async def deployment_pod(api: KubeApi, namespace: str, node: str) -> dict[str, Any]:
    """A pod owned by a ReplicaSet owned by a Deployment, as the controllers would leave it."""
    selector = {"matchLabels": {"app": "web"}}
    template = {
        "metadata": {"labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "image": "registry.example/shop/web:1.4"}]},
    }
    deployment = await create(
        api,
        f"/apis/apps/v1/namespaces/{namespace}/deployments",
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {"selector": selector, "template": template},
        },
    )
    replica_set = await create(
        api,
        f"/apis/apps/v1/namespaces/{namespace}/replicasets",
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": "web-5d8f7",
                "ownerReferences": [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "name": "web",
                        "uid": deployment["metadata"]["uid"],
                        "controller": True,
                    }
                ],
            },
            "spec": {"selector": selector, "template": template},
        },
    )
    owner = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "name": "web-5d8f7",
        "uid": replica_set["metadata"]["uid"],
        "controller": True,
    }
    pod = await create(
        api,
        f"/api/v1/namespaces/{namespace}/pods",
        pod_body(
            "web-5d8f7-x2b9q",
            node,
            {"app": "web", "app.kubernetes.io/name": "shop-web"},
            owner,
            {"team.example/owner": "checkout", "not.copied": "x"},
        ),
    )
    await set_running(api, namespace, "web-5d8f7-x2b9q", "10.244.1.17")
    return pod


async def test_records_carry_the_pods_metadata_and_workload(
    tmp_path: Path,
    tree: PodLogTree,
    api: KubeApi,
    kube: KubeCluster,
    kube_namespace: str,
    node: str,
) -> None:
    """A running Deployment pod's lines carry labels (dedotted), namespace labels, node, IP,
    image, container id, allowed annotations, and the Deployment found through its ReplicaSet."""
    await api.request(
        "patch",
        "PATCH",
        f"/api/v1/namespaces/{kube_namespace}",
        body={"metadata": {"labels": {"team.example/name": "shop"}}},
        content_type=MERGE_PATCH,
    )
    pod = await deployment_pod(api, kube_namespace, node)
    uid = pod["metadata"]["uid"]
    tree.container(kube_namespace, "web-5d8f7-x2b9q", "app", uid).write(["hello", "world"])

    config = agent_config(
        tmp_path, node, kube.kubeconfig, annotations=["team.example/owner", "absent"]
    )
    await app.run(config, once=True)

    documents = delivered(tmp_path)
    assert [d["message"] for d in documents] == ["hello", "world"]
    assert documents[0]["kubernetes"] == {
        "namespace": kube_namespace,
        "pod": {"name": "web-5d8f7-x2b9q", "uid": uid, "ip": "10.244.1.17"},
        "container": {"name": "app"},
        "node": {"name": node},
        "labels": {"app": "web", "app_kubernetes_io/name": "shop-web"},
        "annotations": {"team_example/owner": "checkout"},
        "namespace_labels": {
            "team_example/name": "shop",
            "kubernetes_io/metadata_name": kube_namespace,
        },
        "replicaset": {"name": "web-5d8f7"},
        "deployment": {"name": "web"},
    }
    assert documents[0]["container"] == {
        "restart_count": 0,
        "image": {"name": "registry.example/shop/web:1.4"},
        "id": "app" + "ab" * 20,
    }


async def test_pod_that_shows_up_after_its_log_file_enriches_later_lines(
    tmp_path: Path,
    tree: PodLogTree,
    api: KubeApi,
    kube: KubeCluster,
    kube_namespace: str,
    node: str,
) -> None:
    """Lines read before the pod reaches the cache are marked and counted; once the pod is
    bound to the node, the same file's new lines carry its metadata."""
    # Created unscheduled: not on this node yet, so not in the agent's watch.
    pod = await create(
        api, f"/api/v1/namespaces/{kube_namespace}/pods", pod_body("late", None, {"app": "late"})
    )
    uid = pod["metadata"]["uid"]
    log = tree.container(kube_namespace, "late", "app", uid)
    log.write(["before"])
    registry = CollectorRegistry()
    async with following(agent_config(tmp_path, node, kube.kubeconfig), registry):
        await until(lambda: "before" in by_message(delivered(tmp_path)))
        # What the scheduler does: bind the pod to the node.
        await create(
            api,
            f"/api/v1/namespaces/{kube_namespace}/pods/late/binding",
            {
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": {"name": "late"},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node},
            },
        )
        await set_running(api, kube_namespace, "late", "10.244.1.30")

        def after_is_enriched() -> bool:
            log.write(["after"])
            found = [d for d in delivered(tmp_path) if d["message"] == "after"]
            return any(d["kubernetes"].get("labels") == {"app": "late"} for d in found)

        await until(after_is_enriched)
        without = registry.get_sample_value("observer_kubernetes_records_without_metadata_total")

    before = by_message(delivered(tmp_path))["before"]
    assert before["kubernetes"]["metadata_missing"] is True
    assert before["kubernetes"]["pod"] == {"name": "late", "uid": uid}
    assert without is not None
    assert without >= 1
    enriched = next(
        d for d in delivered(tmp_path) if d["kubernetes"].get("labels") == {"app": "late"}
    )
    assert "metadata_missing" not in enriched["kubernetes"]
    assert enriched["kubernetes"]["node"] == {"name": node}


async def test_deleted_pod_is_enriched_during_its_grace_period(
    tmp_path: Path, tree: PodLogTree, api: KubeApi, kube_namespace: str, node: str
) -> None:
    """A log file first read after its pod was deleted gets the pod's metadata until the
    grace period ends; then the pod is forgotten."""
    now = [1000.0]
    cache = PodMetadataCache(api, node, deleted_pod_grace=60.0, clock=lambda: now[0])
    running = asyncio.create_task(cache.run())
    try:
        pod = await create(
            api,
            f"/api/v1/namespaces/{kube_namespace}/pods",
            pod_body("gone", node, {"app": "gone"}),
        )
        uid = pod["metadata"]["uid"]
        await asyncio.wait_for(cache.synced.wait(), 10)
        await until(lambda: cache.pod(uid) is not None)
        await api.request(
            "delete",
            "DELETE",
            f"/api/v1/namespaces/{kube_namespace}/pods/gone",
            params={"gracePeriodSeconds": "0"},
        )
        await until(lambda: (entry := cache.pod(uid)) is not None and entry.deleted_at is not None)

        # The sidecar's file is seen only now: its lines are read after the deletion.
        tree.container(kube_namespace, "gone", "sidecar", uid).write(["late line"])
        settings = agent_config(tmp_path, node, tmp_path / "unused").sources.pod_logs
        queue: asyncio.Queue[Batch] = asyncio.Queue()
        tailer = Tailer(settings, CheckpointStore(tmp_path / "state"), queue, metadata=cache)
        await tailer.run(once=True)
        (document,) = queue.get_nowait().documents
        assert document["kubernetes"]["labels"] == {"app": "gone"}
        assert document["container"]["image"] == {"name": "envoyproxy/envoy:v1.31"}
        assert tailer.counts.records_without_metadata == 0

        now[0] += 61.0
        cache.prune()
        assert cache.pod(uid) is None
        assert cache.fields(uid, "sidecar", 0) is None
    finally:
        running.cancel()
        await asyncio.wait({running})


async def test_unreachable_api_server_never_stops_the_logs(
    tmp_path: Path, tree: PodLogTree, kube: KubeCluster
) -> None:
    """With the API server unreachable, records are delivered with the path's fields,
    marked metadata_missing, and counted."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "closed",
                        "cluster": {
                            "server": f"https://127.0.0.1:{free_port()}",
                            "certificate-authority": str(kube.ca_file),
                        },
                    }
                ],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "closed", "context": {"cluster": "closed", "user": "u"}}],
                "current-context": "closed",
            }
        )
    )
    log = tree.container("shop", "web-1", "app", "0b1c2d3e-uid")
    log.write([f"line {i}" for i in range(50)])
    registry = CollectorRegistry()
    async with following(agent_config(tmp_path, "node-x", kubeconfig), registry):
        await until(lambda: len(delivered(tmp_path)) == 50)
        without = registry.get_sample_value("observer_kubernetes_records_without_metadata_total")

    documents = delivered(tmp_path)
    assert [d["message"] for d in documents] == [f"line {i}" for i in range(50)]
    assert documents[0]["kubernetes"] == {
        "namespace": "shop",
        "pod": {"name": "web-1", "uid": "0b1c2d3e-uid"},
        "container": {"name": "app"},
        "metadata_missing": True,
    }
    assert without == 50
