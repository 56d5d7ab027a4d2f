"""Rendering the Helm chart (helm/observer) with real Helm, reading what it renders as the
pods would, and creating it in the real kube-apiserver: the helpers of the chart's tests
(test_helm_values.py, test_helm_objects.py, test_helm_rbac.py; their fixtures are in
conftest.py).
"""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from observer.config import AgentConfig, parse
from tests.services.kubernetes import KubeCluster

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "observer"

Manifest = dict[str, Any]

# What the kubelet gives the pod through the downward API (the DaemonSet's env).
POD_ENV = {"NODE_NAME": "node-a", "POD_NAME": "observer-agent-x7k2p", "POD_NAMESPACE": "observer"}

# Secrets named by the values below, and the keys each holds.
SECRET_KEYS = {
    "es-credentials": ["username", "password"],
    "es-api-key": ["api_key"],
    "es-ca": ["ca.crt"],
    "collector-tls": ["tls.crt", "tls.key", "ca.crt"],
}


def sets(*assignments: str) -> list[str]:
    """`--set` options for helm."""
    return [option for assignment in assignments for option in ("--set", assignment)]


WITH_SECRETS = sets(
    "elasticsearch.hosts[0]=https://logs-es-http:9200",
    "elasticsearch.existingSecret=es-credentials",
    "elasticsearch.caSecret=es-ca",
)

# Value sets a user is likely to install with; each must lint clean and be accepted.
VARIANTS = {
    "defaults": [],
    "collector-disabled": sets("collector.enabled=false"),
    "collector-persistence": sets(
        "collector.persistence.enabled=true", "collector.persistence.storageClass=fast"
    ),
    "secrets-and-collector-replicas-on-elasticsearch": [
        *WITH_SECRETS,
        *sets("collector.elasticsearch.enabled=true", "collector.replicas=3"),
    ],
    "api-key": sets("elasticsearch.existingSecret=es-api-key", "elasticsearch.auth=api_key"),
    "no-rbac-existing-service-account": sets(
        "rbac.create=false", "serviceAccount.create=false", "serviceAccount.name=observer"
    ),
    "events-per-node": sets("agent.config.sources.kube_events.scope=node"),
    "file-sink-only": sets(
        "elasticsearch.enabled=false", "agent.config.sinks.file.path=/var/lib/observer/out.jsonl"
    ),
    "collector-tls": sets("collector.tls.secretName=collector-tls"),
    "prometheus-operator": sets(
        "serviceMonitor.enabled=true",
        "prometheusRule.enabled=true",
        "prometheus.podAnnotations=false",
    ),
}

# Where each kind the chart renders is created: (API prefix, resource, namespaced).
RESOURCES = {
    "ConfigMap": ("/api/v1", "configmaps", True),
    "Service": ("/api/v1", "services", True),
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims", True),
    "DaemonSet": ("/apis/apps/v1", "daemonsets", True),
    "Deployment": ("/apis/apps/v1", "deployments", True),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles", True),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
    "ClusterRole": ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
}
PROMETHEUS_OPERATOR = "monitoring.coreos.com/v1"
"""Custom resources the test API server does not know; checked by shape instead."""


def render(helm: Path, release: str, namespace: str, *options: str) -> list[Manifest]:
    """`helm template` of the chart, as parsed manifests."""
    result = subprocess.run(
        [helm, "template", release, CHART, "--namespace", namespace, *options],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def one(manifests: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [m for m in manifests if m["kind"] == kind and name in (None, m["metadata"]["name"])]
    assert len(found) == 1, f"{len(found)} {kind} named {name}"
    return found[0]


def kinds(manifests: list[Manifest]) -> list[tuple[str, str]]:
    return sorted((m["kind"], m["metadata"]["name"]) for m in manifests)


def config_text(manifests: list[Manifest], component: str) -> str:
    config_map = one(manifests, "ConfigMap", f"{fullname(manifests)}-{component}")
    text: str = config_map["data"][f"{component}.yaml"]
    return text


def fullname(manifests: list[Manifest]) -> str:
    name: str = one(manifests, "DaemonSet")["metadata"]["name"]
    return name.removesuffix("-agent")


def pod_spec(manifests: list[Manifest], kind: str) -> dict[str, Any]:
    spec: dict[str, Any] = one(manifests, kind)["spec"]["template"]["spec"]
    return spec


def agent_config(manifests: list[Manifest], **read: str) -> AgentConfig:
    """The rendered agent.yaml, loaded as the agent loads it inside the pod."""
    return parse(
        AgentConfig, config_text(manifests, "agent"), "agent.yaml", POD_ENV, read.__getitem__
    )


def secret_files(manifests: list[Manifest], kind: str) -> dict[str, str]:
    """The files a pod's container sees from Secret volumes: path → "<secret>/<key>"."""
    spec = pod_spec(manifests, kind)
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    files = {}
    for mount in spec["containers"][0].get("volumeMounts", []):
        secret = volumes[mount["name"]].get("secret")
        if secret is None:
            continue
        assert mount.get("readOnly") is True
        projected = {item["key"]: item["path"] for item in secret.get("items", [])}
        for key in SECRET_KEYS[secret["secretName"]]:
            if projected and key not in projected:
                continue
            path = projected.get(key, key)
            files[f"{mount['mountPath']}/{path}"] = f"{secret['secretName']}/{key}"
    return files


def api_path(manifest: Manifest, dry_run: bool = False) -> str:
    prefix, resource, namespaced = RESOURCES[manifest["kind"]]
    where = f"/namespaces/{manifest['metadata']['namespace']}" if namespaced else ""
    return f"{prefix}{where}/{resource}" + ("?dryRun=All" if dry_run else "")


def call(
    kube: KubeCluster,
    token: str,
    method: str,
    path: str,
    body: object = None,
    content_type: str = "application/json",
) -> tuple[int, dict[str, Any]]:
    """A request as the holder of `token`: the status and the answer (a Status when refused).

    A watch is answered once the server accepts it; its stream is not read."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{kube.server}{path}", data=data, method=method)  # noqa: S310 - the test API server
    request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Content-Type", content_type)
    context = ssl.create_default_context(cafile=str(kube.ca_file))
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:  # noqa: S310
            if "watch=1" in path:
                return response.status, {}
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def create_all(kube: KubeCluster, manifests: list[Manifest], dry_run: bool = False) -> None:
    for manifest in manifests:
        if manifest["apiVersion"] == PROMETHEUS_OPERATOR:
            continue
        status, answer = call(kube, kube.token, "POST", api_path(manifest, dry_run), manifest)
        assert status == 201, (manifest["kind"], manifest["metadata"]["name"], answer)
