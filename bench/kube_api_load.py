"""What the agents ask of the Kubernetes API server: at start, and per minute after.

A real kube-apiserver (tests/services, on Debian's etcd) holds a node's worth of pods:
`--pods` pods on the agent's node, owned by ReplicaSets of Deployments (so owners are
fetched), and as many on other nodes. The agent runs as `observer agent` does (app.run,
following), and the requests it makes are read from its own counters
(`observer_kubernetes_api_requests_total{verb}`, every request KubeApi sends, failed
ones included). Meanwhile the cluster lives: every 5 s the test plays the kubelet and
posts an Event on this node and one on another node, every 15 s a label changes on one
of this node's pods, and every minute a pod of a new ReplicaSet is bound to the node.

    ~/.cache/observer/venv/bin/python bench/kube_api_load.py --minutes 6

With ``--scope cluster`` two agents run, one on each node, with the Helm chart's
``sources.kube_events.scope: cluster`` and its Lease timings (30 s, renewed every 10 s):
one is elected to watch every node's kubelet Events, and each agent's requests are
reported apart (``leader`` and ``follower``).

The report goes to bench/results/kube-api-load[-cluster]-<date>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from observer.agent import app  # noqa: E402
from observer.config import AgentConfig, KubernetesConfig  # noqa: E402
from observer.kube.client import KubeApi  # noqa: E402
from tests.services import kubernetes  # noqa: E402

NODE = "bench-node"
NAMESPACE = "shop"
MERGE_PATCH = "application/merge-patch+json"


def verbs(registry: CollectorRegistry) -> dict[str, float]:
    return {
        sample.labels["verb"]: sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == "observer_kubernetes_api_requests_total"
    }


def cache_size(registry: CollectorRegistry, resource: str) -> float:
    return (
        registry.get_sample_value("observer_kubernetes_cache_objects", {"resource": resource}) or 0
    )


async def deployment_with_pods(api: KubeApi, name: str, pods: int, node: str) -> None:
    """A Deployment, its ReplicaSet, and `pods` running pods bound to `node`."""
    base = f"/apis/apps/v1/namespaces/{NAMESPACE}"
    selector = {"matchLabels": {"app": name}}
    template = {
        "metadata": {"labels": {"app": name}},
        "spec": {"containers": [{"name": "app", "image": f"registry.example/{name}:1"}]},
    }
    deployment = await api.request(
        "create",
        "POST",
        f"{base}/deployments",
        body={"metadata": {"name": name}, "spec": {"selector": selector, "template": template}},
    )
    replica_set = await api.request(
        "create",
        "POST",
        f"{base}/replicasets",
        body={
            "metadata": {
                "name": f"{name}-rs",
                "ownerReferences": [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "name": name,
                        "uid": deployment["metadata"]["uid"],
                        "controller": True,
                    }
                ],
            },
            "spec": {"selector": selector, "template": template},
        },
    )
    for index in range(pods):
        pod_name = f"{name}-{node}-{index}"
        await api.request(
            "create",
            "POST",
            f"/api/v1/namespaces/{NAMESPACE}/pods",
            body={
                "metadata": {
                    "name": pod_name,
                    "labels": {"app": name, "app.kubernetes.io/name": name},
                    "ownerReferences": [
                        {
                            "apiVersion": "apps/v1",
                            "kind": "ReplicaSet",
                            "name": f"{name}-rs",
                            "uid": replica_set["metadata"]["uid"],
                            "controller": True,
                        }
                    ],
                },
                "spec": {"nodeName": node, "containers": template["spec"]["containers"]},
            },
        )


def kubelet_event(pod: str, uid: str, node: str, serial: int) -> dict[str, Any]:
    return {
        "metadata": {"name": f"{pod}.{serial:016x}", "namespace": NAMESPACE},
        "involvedObject": {
            "apiVersion": "v1",
            "kind": "Pod",
            "namespace": NAMESPACE,
            "name": pod,
            "uid": uid,
            "fieldPath": "spec.containers{app}",
        },
        "reason": "Unhealthy",
        "message": "Readiness probe failed: HTTP probe failed with statuscode: 503",
        "type": "Warning",
        "count": 1,
        "firstTimestamp": "2026-01-01T00:00:00Z",
        "lastTimestamp": "2026-01-01T00:00:00Z",
        "source": {"component": "kubelet", "host": node},
        "reportingComponent": "kubelet",
        "reportingInstance": node,
    }


async def churn(api: KubeApi, pods: int, stop: asyncio.Event, stats: dict[str, Any]) -> None:
    tick = 0
    while not stop.is_set():
        await asyncio.sleep(5)
        tick += 1
        for node, workload in ((NODE, "web0"), ("other-node", "far0")):
            pod = f"{workload}-{node}-{tick % pods}"
            found = await api.get(f"/api/v1/namespaces/{NAMESPACE}/pods/{pod}")
            event = await api.request(
                "create",
                "POST",
                f"/api/v1/namespaces/{NAMESPACE}/events",
                body=kubelet_event(pod, found["metadata"]["uid"], node, tick),
            )
            stats["event_bytes"].append(len(orjson.dumps(event)))
            stats["events_posted"][node] += 1
        if tick % 3 == 0:
            await api.request(
                "patch",
                "PATCH",
                f"/api/v1/namespaces/{NAMESPACE}/pods/web0-{NODE}-{tick % pods}",
                body={"metadata": {"labels": {"tick": str(tick)}}},
                content_type=MERGE_PATCH,
            )
        if tick % 12 == 0:
            await deployment_with_pods(api, f"new{tick}", 1, NODE)


def agent_config(node: str, scope: str, kubeconfig: Path, workdir: Path) -> AgentConfig:
    return AgentConfig.model_validate(
        {
            "node_name": node,
            "state_dir": str(workdir / node / "state"),
            "telemetry": {"listen": "127.0.0.1:0"},
            "kubernetes": {"kubeconfig": str(kubeconfig)},
            "sources": {
                "pod_logs": {"root": str(workdir / node / "pods")},
                "kube_events": {"scope": scope, "leader_election": {"namespace": NAMESPACE}},
            },
            "sinks": {"elasticsearch": None, "file": {"path": str(workdir / node / "out.jsonl")}},
        }
    )


def leading(registry: CollectorRegistry) -> bool:
    return registry.get_sample_value("observer_kubernetes_events_leader") == 1


def events_listed(registries: list[CollectorRegistry]) -> bool:
    return any(
        registry.get_sample_value("observer_kubernetes_relists_total", {"resource": "events"})
        for registry in registries
    )


async def measure(minutes: float, pods: int, scope: str, workdir: Path) -> dict[str, Any]:
    cluster = kubernetes.start(workdir / "kubernetes")
    try:
        api = KubeApi.connect(KubernetesConfig(kubeconfig=cluster.kubeconfig))
        await api.request(
            "create", "POST", "/api/v1/namespaces", body={"metadata": {"name": NAMESPACE}}
        )
        deployments = max(1, pods // 10)
        for index in range(deployments):
            await deployment_with_pods(api, f"web{index}", pods // deployments, NODE)
        for index in range(deployments):
            await deployment_with_pods(api, f"far{index}", pods // deployments, "other-node")
        nodes = [NODE] if scope == "node" else [NODE, "other-node"]
        registries = [CollectorRegistry() for _ in nodes]
        stop = asyncio.Event()
        agents = [
            asyncio.create_task(
                app.run(
                    agent_config(node, scope, cluster.kubeconfig, workdir),
                    once=False,
                    stop=stop,
                    registry=registry,
                )
            )
            for node, registry in zip(nodes, registries, strict=True)
        ]
        loop = asyncio.get_running_loop()
        started = loop.time()
        while not (  # noqa: ASYNC110 - polled as a scrape would read the agent's counters
            all(cache_size(registry, "pods") >= pods for registry in registries)
            and all(cache_size(registry, "owners") >= deployments for registry in registries)
            and events_listed(registries)
        ):
            await asyncio.sleep(0.1)
        synced_after = loop.time() - started
        roles = ["agent"] if scope == "node" else ["follower", "follower"]
        if scope == "cluster":
            roles[[leading(registry) for registry in registries].index(True)] = "leader"
        at_start = [verbs(registry) for registry in registries]
        stats: dict[str, Any] = {"event_bytes": [], "events_posted": {NODE: 0, "other-node": 0}}
        churning = asyncio.create_task(churn(api, pods // deployments, stop, stats))
        per_minute: list[list[dict[str, float]]] = [[] for _ in nodes]
        previous = at_start
        for _ in range(int(minutes)):
            await asyncio.sleep(60)
            now = [verbs(registry) for registry in registries]
            for index, (before, after) in enumerate(zip(previous, now, strict=True)):
                per_minute[index].append(
                    {verb: after.get(verb, 0) - before.get(verb, 0) for verb in after}
                )
            previous = now
        still_leading = [leading(registry) for registry in registries]
        stop.set()
        await churning
        await asyncio.gather(*agents)
        await api.close()
    finally:
        cluster.stop()
    event_bytes = stats["event_bytes"]
    return {
        "scope": scope,
        "pods_on_node": pods,
        "owners_on_node": deployments,
        "synced_after_s": round(synced_after, 2),
        "agents": [
            {
                "node": node,
                "role": role,
                "leading_at_the_end": leads,
                "requests_at_start": start,
                "requests_per_minute": minutes_of_agent,
            }
            for node, role, leads, start, minutes_of_agent in zip(
                nodes, roles, still_leading, at_start, per_minute, strict=True
            )
        ],
        "events_posted": stats["events_posted"],
        "mean_event_bytes": round(sum(event_bytes) / max(1, len(event_bytes))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=6)
    parser.add_argument("--pods", type=int, default=100)
    parser.add_argument("--scope", choices=("node", "cluster"), default="node")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        result = asyncio.run(measure(args.minutes, args.pods, args.scope, Path(temporary)))
    result["command"] = (
        f"bench/kube_api_load.py --minutes {args.minutes:g} --pods {args.pods} --scope {args.scope}"
    )
    date = datetime.date.today().isoformat()
    suffix = "-cluster" if args.scope == "cluster" else ""
    out = REPO / "bench" / "results" / f"kube-api-load{suffix}-{date}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
