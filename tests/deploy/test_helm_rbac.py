"""The Helm chart's RBAC, for real: its roles grant exactly the calls the agent makes, its
ServiceAccount's token is allowed each of them and refused the rest by the real
kube-apiserver, and the real agent runs with that token and the chart's agent.yaml.

There is no kubelet and no controller-manager: nothing runs the DaemonSet. The tests play
the pod instead, taking a token for the chart's ServiceAccount (conftest.py) and running
the agent with it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from observer.config import AgentConfig, parse
from observer.kube.client import KubeApi
from observer.testing import PodLogTree
from tests.deploy.helm_support import POD_ENV, Manifest, call, config_text, one, render, sets
from tests.integration.polling import until
from tests.integration.test_kube_events import kubelet_event
from tests.integration.test_pod_metadata import create, deployment_pod, following, pod_body
from tests.services.kubernetes import KubeCluster

# (API group, resource, verb) the agent uses: observer/kube/metadata.py (pods of its node,
# namespaces, owners), observer/kube/events.py (kubelet Events), and with scope: cluster
# the Lease and pods of other nodes.
AGENT_CALLS = {
    ("", "pods", "get"),
    ("", "pods", "list"),
    ("", "pods", "watch"),
    ("", "namespaces", "get"),
    ("", "namespaces", "list"),
    ("", "namespaces", "watch"),
    ("", "events", "list"),
    ("", "events", "watch"),
    ("apps", "replicasets", "get"),
    ("batch", "jobs", "get"),
}
LEASE_CALLS = {("coordination.k8s.io", "leases", verb) for verb in ("get", "create", "update")}


def granted(role: Manifest) -> set[tuple[str, str, str]]:
    assert all(set(rule) <= {"apiGroups", "resources", "verbs"} for rule in role["rules"])
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_roles_grant_exactly_what_the_agent_calls(helm: Path) -> None:
    """The ClusterRole grants the agent's reads and nothing else (no wildcard, no
    resourceNames games); the Role only the Lease; without the Events watch, less."""
    manifests = render(helm, "obs", "observer")
    assert granted(one(manifests, "ClusterRole")) == AGENT_CALLS
    assert granted(one(manifests, "Role")) == LEASE_CALLS

    per_node = render(
        helm, "obs", "observer", "--set", "agent.config.sources.kube_events.scope=node"
    )
    assert granted(one(per_node, "ClusterRole")) == AGENT_CALLS
    assert "Role" not in {m["kind"] for m in per_node}
    without = render(
        helm, "obs", "observer", "--set", "agent.config.sources.kube_events.enabled=false"
    )
    assert granted(one(without, "ClusterRole")) == {c for c in AGENT_CALLS if c[1] != "events"}
    assert not {"Role", "RoleBinding"} & {m["kind"] for m in without}
    moved = render(
        helm,
        "obs",
        "observer",
        *sets("agent.config.sources.kube_events.leader_election.namespace=elsewhere"),
    )
    assert one(moved, "Role")["metadata"]["namespace"] == "elsewhere"
    assert one(moved, "RoleBinding")["subjects"][0]["namespace"] == "observer"


def test_agent_token_can_do_everything_the_agent_does(
    kube: KubeCluster, kube_namespace: str, workloads: str, agent_token: str
) -> None:
    """As the chart's ServiceAccount: list and watch this node's pods, the namespaces and
    the kubelet's Events; get a pod, ReplicaSet and Job anywhere; get, create and update
    the Events Lease in the release's namespace."""
    template: dict[str, Any] = {
        "metadata": {"labels": {"app": "web"}},
        "spec": {"containers": [{"name": "c", "image": "web"}]},
    }
    for path, body in (
        (
            f"/api/v1/namespaces/{workloads}/pods",
            {"metadata": {"name": "web-0"}, "spec": template["spec"] | {"nodeName": "node-a"}},
        ),
        (
            f"/apis/apps/v1/namespaces/{workloads}/replicasets",
            {
                "metadata": {"name": "web-5d8f7"},
                "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": template},
            },
        ),
        (
            f"/apis/batch/v1/namespaces/{workloads}/jobs",
            {
                "metadata": {"name": "report-28"},
                "spec": {"template": {"spec": template["spec"] | {"restartPolicy": "Never"}}},
            },
        ),
    ):
        status, answer = call(kube, kube.token, "POST", path, body)
        assert status == 201, answer

    lease = f"/apis/coordination.k8s.io/v1/namespaces/{kube_namespace}/leases"
    allowed = [
        ("GET", "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a"),
        ("GET", "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a&watch=1&timeoutSeconds=5"),
        ("GET", "/api/v1/namespaces"),
        ("GET", "/api/v1/namespaces?watch=1&timeoutSeconds=5"),
        ("GET", "/api/v1/events?fieldSelector=source%3Dkubelet"),
        ("GET", "/api/v1/events?fieldSelector=source%3Dkubelet&watch=1&timeoutSeconds=5"),
        ("GET", f"/api/v1/namespaces/{workloads}/pods/web-0"),
        ("GET", f"/apis/apps/v1/namespaces/{workloads}/replicasets/web-5d8f7"),
        ("GET", f"/apis/batch/v1/namespaces/{workloads}/jobs/report-28"),
    ]
    for method, path in allowed:
        status, answer = call(kube, agent_token, method, path)
        assert status == 200, (method, path, answer)

    # The Lease as the elected agent handles it: not there yet, created, renewed.
    status, _ = call(kube, agent_token, "GET", f"{lease}/observer-kube-events")
    assert status == 404  # authorized, and absent
    body = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "observer-kube-events"},
        "spec": {"holderIdentity": "agent-1", "leaseDurationSeconds": 30},
    }
    status, created = call(kube, agent_token, "POST", lease, body)
    assert status == 201, created
    status, current = call(kube, agent_token, "GET", f"{lease}/observer-kube-events")
    assert status == 200, current
    current["spec"]["holderIdentity"] = "agent-2"
    status, updated = call(kube, agent_token, "PUT", f"{lease}/observer-kube-events", current)
    assert status == 200, updated
    assert updated["spec"]["holderIdentity"] == "agent-2"


def test_agent_token_can_do_nothing_else(
    kube: KubeCluster,
    kube_namespace: str,
    workloads: str,
    agent_token: str,
    installed: list[Manifest],
) -> None:
    """As the chart's ServiceAccount, reading Secrets or ConfigMaps, changing or deleting
    pods, writing Events, Leases in another namespace or deleting one, listing
    ReplicaSets, reading nodes and minting tokens are all refused (403)."""
    status, _ = call(
        kube,
        kube.token,
        "POST",
        f"/api/v1/namespaces/{workloads}/pods",
        {"metadata": {"name": "web-0"}, "spec": {"containers": [{"name": "c", "image": "web"}]}},
    )
    assert status == 201
    account = one(installed, "ServiceAccount")["metadata"]["name"]
    merge = "application/merge-patch+json"
    lease = {"metadata": {"name": "x"}, "spec": {"holderIdentity": "agent-1"}}
    refused: list[tuple[str, str, object]] = [
        ("GET", "/api/v1/secrets", None),
        ("GET", f"/api/v1/namespaces/{kube_namespace}/secrets", None),
        ("GET", f"/api/v1/namespaces/{kube_namespace}/configmaps", None),
        ("GET", "/api/v1/nodes", None),
        ("DELETE", f"/api/v1/namespaces/{workloads}/pods/web-0", None),
        (
            "PATCH",
            f"/api/v1/namespaces/{workloads}/pods/web-0",
            {"metadata": {"labels": {"x": "y"}}},
        ),
        ("POST", f"/api/v1/namespaces/{workloads}/pods", {"metadata": {"name": "evil"}}),
        ("POST", f"/api/v1/namespaces/{workloads}/events", {"metadata": {"name": "e"}}),
        ("GET", f"/api/v1/namespaces/{workloads}/events/e", None),
        ("GET", "/apis/apps/v1/replicasets", None),
        ("GET", "/apis/coordination.k8s.io/v1/leases", None),
        ("GET", f"/apis/coordination.k8s.io/v1/namespaces/{workloads}/leases/x", None),
        ("POST", f"/apis/coordination.k8s.io/v1/namespaces/{workloads}/leases", lease),
        ("DELETE", f"/apis/coordination.k8s.io/v1/namespaces/{kube_namespace}/leases/x", None),
        (
            "POST",
            f"/api/v1/namespaces/{kube_namespace}/serviceaccounts/{account}/token",
            {"spec": {}},
        ),
        ("GET", "/apis/rbac.authorization.k8s.io/v1/clusterroles", None),
    ]
    for method, path, body in refused:
        content_type = merge if method == "PATCH" else "application/json"
        status, answer = call(kube, agent_token, method, path, body, content_type)
        assert status == 403, (method, path, status, answer)
    status, _ = call(kube, kube.token, "GET", f"/api/v1/namespaces/{workloads}/pods/web-0")
    assert status == 200


async def test_agent_runs_under_the_charts_identity_and_config(
    kube: KubeCluster,
    kube_namespace: str,
    workloads: str,
    installed: list[Manifest],
    agent_kubeconfig: Path,
    api: KubeApi,
    tree: PodLogTree,
    node: str,
    tmp_path: Path,
) -> None:
    """The real agent, with the chart's agent.yaml and its ServiceAccount's token: ships its
    node's pod's lines with the pod's labels and Deployment (pods and namespaces listed and
    watched, the ReplicaSet read), is elected through the chart's Lease, and ships a kubelet
    Event about a pod of another node with that pod's labels (Events watched, the pod read)."""
    pod = await deployment_pod(api, workloads, node)
    tree.container(workloads, pod["metadata"]["name"], "app", pod["metadata"]["uid"]).write(
        ["hello from web"]
    )
    elsewhere = await create(
        api,
        f"/api/v1/namespaces/{workloads}/pods",
        pod_body("pay-0", f"{node}-b", {"app": "pay"}),
    )

    settings = yaml.safe_load(config_text(installed, "agent"))
    assert settings["sources"]["kube_events"]["scope"] == "cluster"
    # The chart's config, with the pod's paths moved under tmp_path and a file sink in
    # place of Elasticsearch (what is checked here is the API access, not shipping).
    settings |= {"state_dir": str(tmp_path / "state"), "telemetry": {"listen": "127.0.0.1:0"}}
    settings["kubernetes"] = {"kubeconfig": str(agent_kubeconfig)}
    settings["sources"]["pod_logs"] = {"root": str(tree.root), "poll_interval": "20ms"}
    settings["sources"]["spans"]["enabled"] = False  # no collector runs here
    settings["sinks"] = {"file": {"path": str(tmp_path / "out.jsonl")}, "elasticsearch": None}
    config = parse(AgentConfig, yaml.safe_dump(settings), env=POD_ENV | {"NODE_NAME": node})
    election = config.sources.kube_events.leader_election
    lease = (
        f"/apis/coordination.k8s.io/v1/namespaces/{election.namespace}/leases/{election.lease_name}"
    )
    assert election.namespace == kube_namespace

    def shipped() -> list[dict[str, Any]]:
        out = tmp_path / "out.jsonl"
        return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []

    def event_records() -> list[dict[str, Any]]:
        return [d for d in shipped() if d.get("event", {}).get("provider") == "kubelet"]

    registry = CollectorRegistry()

    def sample(name: str, labels: dict[str, str] | None = None) -> float:
        return registry.get_sample_value(name, labels or {}) or 0.0

    async with following(config, registry):
        await until(lambda: any(d["message"] == "hello from web" for d in shipped()))
        await until(lambda: sample("observer_kubernetes_events_leader") == 1)
        # Pods, namespaces, then the Events watch the leader opens after its list: an Event
        # created from now on comes through the watch, which reads its pod.
        await until(
            lambda: sample("observer_kubernetes_api_requests_total", {"verb": "watch"}) >= 3
        )
        holder = call(kube, kube.token, "GET", lease)[1]["spec"]["holderIdentity"]
        name = "pay-0.17f3a9c2b1d4e5f6"
        await create(
            api,
            f"/api/v1/namespaces/{workloads}/events",
            kubelet_event(workloads, elsewhere, f"{node}-b", name),
        )
        await until(lambda: bool(event_records()))
    released = call(kube, kube.token, "GET", lease)[1]["spec"]

    line = next(d for d in shipped() if d["message"] == "hello from web")
    assert line["kubernetes"]["labels"] == {"app": "web", "app_kubernetes_io/name": "shop-web"}
    assert line["kubernetes"]["deployment"] == {"name": "web"}
    assert "metadata_missing" not in line["kubernetes"]
    (record,) = event_records()
    assert record["event"]["reason"] == "Unhealthy"
    assert record["kubernetes"]["pod"]["name"] == "pay-0"
    assert record["kubernetes"]["labels"] == {"app": "pay"}
    assert "metadata_missing" not in record["kubernetes"]
    assert holder.startswith(node)
    assert released["holderIdentity"] in ("", None)  # handed over at the stop (an update)
