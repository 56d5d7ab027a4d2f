"""The Helm chart users install observer with (helm/observer), checked against real Helm and
the real kube-apiserver: it lints clean, every object it renders is accepted, the agent.yaml
and collector.yaml it renders are accepted by observer's own loader, and its RBAC lets the
agent do what it does, as the agent, and nothing else.

There is no kubelet and no controller-manager: nothing runs the DaemonSet. The tests play
the pod instead, taking a token for the chart's ServiceAccount and running the agent with it.
"""

from __future__ import annotations

import json
import re
import secrets
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from observer.config import AgentConfig, CollectorConfig, parse
from observer.kube.client import KubeApi
from observer.testing import PodLogTree
from tests.integration.test_kube_events import kubelet_event
from tests.integration.test_pod_metadata import create, deployment_pod, following, pod_body, until
from tests.services import kubernetes
from tests.services.kubernetes import KubeCluster, admin_request

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "observer"
RULES = REPO / "dashboards" / "alerts" / "observer.rules.yaml"

Manifest = dict[str, Any]

# What the kubelet gives the pod through the downward API (the DaemonSet's env).
POD_ENV = {"NODE_NAME": "node-a", "POD_NAME": "observer-agent-x7k2p", "POD_NAMESPACE": "observer"}

# Secrets named by the values below, and the keys each holds.
SECRET_KEYS = {
    "es-credentials": ["username", "password"],
    "es-api-key": ["api_key"],
    "es-ca": ["ca.crt"],
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


# --- helpers -----------------------------------------------------------------------------


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
        for key in SECRET_KEYS[secret["secretName"]]:
            files[f"{mount['mountPath']}/{key}"] = f"{secret['secretName']}/{key}"
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


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture
def release(kube: KubeCluster) -> Iterator[str]:
    """A release name of the test's own; its cluster-scoped objects are deleted after it."""
    name = f"t{secrets.token_hex(4)}"
    yield name
    kube.ensure_running()
    for resource in ("clusterrolebindings", "clusterroles"):
        admin_request(
            kube, "DELETE", f"/apis/rbac.authorization.k8s.io/v1/{resource}/{name}-observer-agent"
        )


@pytest.fixture
def workloads(kube: KubeCluster, kube_namespace: str) -> Iterator[str]:
    """A namespace for the workloads the agent watches, apart from the release's."""
    name = kubernetes.create_namespace(kube, f"apps-{kube_namespace}")
    yield name
    kube.ensure_running()
    kubernetes.delete_namespace(kube, name)


@pytest.fixture
def installed(helm: Path, kube: KubeCluster, kube_namespace: str, release: str) -> list[Manifest]:
    """The default render, every object created in the API server."""
    manifests = render(helm, release, kube_namespace)
    create_all(kube, manifests)
    return manifests


@pytest.fixture
def agent_token(kube: KubeCluster, installed: list[Manifest]) -> str:
    """A token of the chart's ServiceAccount (TokenRequest, what the kubelet mounts in the
    pod), once the chart's bindings apply to it."""
    account = one(installed, "ServiceAccount")["metadata"]
    status, answer = call(
        kube,
        kube.token,
        "POST",
        f"/api/v1/namespaces/{account['namespace']}/serviceaccounts/{account['name']}/token",
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600},
        },
    )
    assert status == 201, answer
    token: str = answer["status"]["token"]
    # The RBAC authorizer learns of new bindings through its informers: shortly.
    for _ in range(100):
        if call(kube, token, "GET", "/api/v1/namespaces?limit=1")[0] == 200:
            return token
        time.sleep(0.1)
    raise AssertionError("the chart's ClusterRoleBinding never applied to its ServiceAccount")


@pytest.fixture
def agent_kubeconfig(kube: KubeCluster, agent_token: str, tmp_path: Path) -> Path:
    """A kubeconfig with the ServiceAccount's token, the API server's address and CA."""
    path = tmp_path / "agent-kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "test",
                        "cluster": {
                            "server": kube.server,
                            "certificate-authority": str(kube.ca_file),
                        },
                    }
                ],
                "users": [{"name": "agent", "user": {"token": agent_token}}],
                "contexts": [{"name": "agent", "context": {"cluster": "test", "user": "agent"}}],
                "current-context": "agent",
            }
        )
    )
    return path


# --- lint and values ---------------------------------------------------------------------


@pytest.mark.parametrize("options", VARIANTS.values(), ids=VARIANTS.keys())
def test_chart_lints_clean_in_strict_mode(helm: Path, options: list[str]) -> None:
    """`helm lint --strict` finds nothing to warn about, with each likely set of values."""
    result = subprocess.run(
        [helm, "lint", "--strict", CHART, *options], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout
    assert "[ERROR]" not in result.stdout


def test_every_value_is_documented() -> None:
    """Each value in values.yaml has a `# --` comment above it (sections need none, and
    what is inside a documented value, like resources' requests, is its example)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    documented_at: list[int] = []  # indents of the documented values enclosing this line
    for number, line in enumerate(lines):
        key = re.match(r"^( *)([A-Za-z][\w.-]*):", line)
        if key is None:
            continue
        indent = len(key[1])
        documented_at = [level for level in documented_at if level < indent]
        if documented_at:
            continue
        following = next((text for text in lines[number + 1 :] if text.strip()), "")
        # A section: nothing after the colon, more-indented keys (or their comments) below.
        section = line.rstrip().endswith(":") and re.match(
            rf"^ {{{indent + 1},}}[#A-Za-z]", following
        )
        comment = number
        while comment > 0 and lines[comment - 1].lstrip().startswith("#"):
            comment -= 1
        documented = any(text.lstrip().startswith("# --") for text in lines[comment:number])
        if documented:
            documented_at.append(indent)
        elif not section:
            undocumented.append(f"line {number + 1}: {line.strip()}")
    assert undocumented == []


def test_chart_version_follows_the_package(helm: Path) -> None:
    """The chart's appVersion, the images' default tag, is the observer release's version."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)
    assert version
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "observer"
    assert chart["appVersion"] == version[1]
    manifests = render(helm, "obs", "observer")
    images = {
        c["image"]
        for kind in ("DaemonSet", "Deployment")
        for c in pod_spec(manifests, kind)["containers"]
    }
    assert images == {f"observer-agent:{version[1]}", f"observer-collector:{version[1]}"}


def test_misspelled_value_is_refused(helm: Path) -> None:
    """A value the chart does not have is an error naming it, not a setting silently ignored."""
    result = subprocess.run(
        [helm, "template", "obs", CHART, "--set", "agent.resource.limits.memory=1Gi"],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "resource" in result.stderr


def test_collector_replicas_need_elasticsearch_storage(helm: Path) -> None:
    """More than one collector replica with the embedded store is refused with the reason;
    with traces in Elasticsearch it renders."""
    result = subprocess.run(
        [helm, "template", "obs", CHART, "--set", "collector.replicas=2"],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "storage" in result.stderr
    assert "Elasticsearch" in result.stderr
    manifests = render(
        helm,
        "obs",
        "observer",
        *sets("collector.replicas=2"),
        *WITH_SECRETS,
        *sets("collector.elasticsearch.enabled=true"),
    )
    assert one(manifests, "Deployment")["spec"]["replicas"] == 2


def test_names_honour_the_overrides(helm: Path) -> None:
    """Object names come from <release>-observer, nameOverride or fullnameOverride."""
    assert fullname(render(helm, "shop", "observer")) == "shop-observer"
    assert fullname(render(helm, "observer", "observer")) == "observer"
    assert fullname(render(helm, "shop", "o", "--set", "nameOverride=logs")) == "shop-logs"
    manifests = render(helm, "shop", "o", "--set", "fullnameOverride=obs")
    assert {name for _, name in kinds(manifests)} <= {
        "obs-agent",
        "obs-collector",
        "obs-collector-headless",
    }


# --- the API server accepts what the chart renders -------------------------------------------


def test_default_render_is_created_in_the_api_server(
    kube: KubeCluster, kube_namespace: str, release: str, installed: list[Manifest]
) -> None:
    """Every object of the default render is created for real, with the standard labels."""
    name = f"{release}-observer"
    assert kinds(installed) == sorted(
        [
            ("ServiceAccount", f"{name}-agent"),
            ("ConfigMap", f"{name}-agent"),
            ("ConfigMap", f"{name}-collector"),
            ("ClusterRole", f"{name}-agent"),
            ("ClusterRoleBinding", f"{name}-agent"),
            ("Role", f"{name}-agent"),
            ("RoleBinding", f"{name}-agent"),
            ("Service", f"{name}-agent"),
            ("Service", f"{name}-collector"),
            ("Service", f"{name}-collector-headless"),
            ("DaemonSet", f"{name}-agent"),
            ("Deployment", f"{name}-collector"),
        ]
    )
    for manifest in installed:
        status, stored = call(
            kube, kube.token, "GET", f"{api_path(manifest)}/{manifest['metadata']['name']}"
        )
        assert status == 200, stored
        labels = stored["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == release
        assert labels["app.kubernetes.io/name"] == "observer"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/version"] == "0.1.0"
        assert labels["helm.sh/chart"] == "observer-0.1.0"
        assert labels["app.kubernetes.io/component"] in ("agent", "collector")


@pytest.mark.parametrize("options", VARIANTS.values(), ids=VARIANTS.keys())
def test_every_variant_passes_a_server_side_dry_run(
    helm: Path, kube: KubeCluster, kube_namespace: str, release: str, options: list[str]
) -> None:
    """The API server validates and admits every object of each likely render."""
    create_all(kube, render(helm, release, kube_namespace, *options), dry_run=True)


# --- the configuration observer reads ------------------------------------------------------


@pytest.mark.parametrize("options", VARIANTS.values(), ids=VARIANTS.keys())
def test_rendered_configs_are_accepted_by_observer(helm: Path, options: list[str]) -> None:
    """agent.yaml and collector.yaml load with observer's own loader, as in the pods."""
    manifests = render(helm, "obs", "observer", *options)
    files = secret_files(manifests, "DaemonSet")
    config = agent_config(manifests, **files)
    assert config.node_name == POD_ENV["NODE_NAME"]
    if any(m["kind"] == "Deployment" for m in manifests):
        text = config_text(manifests, "collector")
        parse(
            CollectorConfig,
            text,
            "collector.yaml",
            {},
            secret_files(manifests, "Deployment").__getitem__,
        )


def test_agent_config_elects_the_events_watcher_and_finds_the_collector(helm: Path) -> None:
    """By default the agents elect one Events watcher through a Lease in the release's
    namespace, and send spans to the collector's headless Service."""
    manifests = render(helm, "shop", "monitoring")
    config = agent_config(manifests)
    events = config.sources.kube_events
    assert events.enabled
    assert events.scope == "cluster"
    assert events.leader_election.namespace == "monitoring"
    assert events.leader_election.lease_name == "shop-observer-kube-events"
    headless = [
        m for m in manifests if m["kind"] == "Service" and m["spec"].get("clusterIP") == "None"
    ]
    assert [m["metadata"]["name"] for m in headless] == ["shop-observer-collector-headless"]
    assert headless[0]["spec"]["ports"][0]["port"] == 4317
    assert headless[0]["spec"]["publishNotReadyAddresses"] is False
    assert config.sources.spans.enabled
    assert config.sinks.collector.endpoint == "shop-observer-collector-headless.monitoring.svc:4317"
    assert config.sinks.elasticsearch is not None
    assert config.sinks.elasticsearch.hosts == ["http://elasticsearch-master:9200"]
    # The Role grants the Lease where the config puts it.
    assert one(manifests, "Role")["metadata"]["namespace"] == "monitoring"


def test_user_config_overrides_the_chart_at_any_depth(helm: Path) -> None:
    """agent.config wins over what the chart sets, key by key, false and null included;
    what it leaves out keeps the chart's settings."""
    values = {
        "agent": {
            "config": {
                "sources": {
                    "kube_events": {"scope": "node", "queue_records": 500},
                    "spans": {"enabled": False},
                },
                "sinks": {
                    "elasticsearch": {"hosts": ["https://a:9200", "https://b:9200"]},
                },
                "telemetry": {"log_level": "debug"},
            }
        }
    }
    config = agent_config(
        render(helm, "obs", "observer", "--set-json", f"agent={json.dumps(values['agent'])}")
    )
    assert config.sources.kube_events.scope == "node"
    assert config.sources.kube_events.queue_records == 500
    assert config.sources.kube_events.leader_election.namespace == "observer"
    assert config.sources.spans.enabled is False
    assert config.sinks.elasticsearch is not None
    assert config.sinks.elasticsearch.hosts == ["https://a:9200", "https://b:9200"]
    assert config.telemetry.log_level == "debug"
    assert config.node_name == POD_ENV["NODE_NAME"]

    without_elasticsearch = agent_config(
        render(
            helm,
            "obs",
            "observer",
            "--set-json",
            'agent={"config": {"sinks": {"elasticsearch": null, "file": {"path": "/tmp/x"}}}}',
        )
    )
    assert without_elasticsearch.sinks.elasticsearch is None
    assert without_elasticsearch.sinks.file is not None


def test_secrets_are_read_from_where_they_are_mounted(helm: Path) -> None:
    """Elasticsearch credentials and CA come from the named Secrets, mounted into both pods
    and read through ${file:...}: the ConfigMaps hold no secret."""
    manifests = render(
        helm, "obs", "observer", *WITH_SECRETS, "--set", "collector.elasticsearch.enabled=true"
    )
    agent_files = secret_files(manifests, "DaemonSet")
    agent = agent_config(manifests, **agent_files).sinks.elasticsearch
    assert agent is not None
    assert (agent.username, agent.password) == (
        "es-credentials/username",
        "es-credentials/password",
    )
    assert agent.tls.ca_file is not None
    assert agent_files[str(agent.tls.ca_file)] == "es-ca/ca.crt"
    assert agent.hosts == ["https://logs-es-http:9200"]

    collector_files = secret_files(manifests, "Deployment")
    collector = parse(
        CollectorConfig,
        config_text(manifests, "collector"),
        "collector.yaml",
        {},
        collector_files.__getitem__,
    ).storage.elasticsearch
    assert collector is not None
    assert (collector.username, collector.password) == (agent.username, agent.password)
    assert collector.tls.ca_file == agent.tls.ca_file

    api_key = render(
        helm,
        "obs",
        "observer",
        *sets("elasticsearch.existingSecret=es-api-key", "elasticsearch.auth=api_key"),
    )
    settings = agent_config(api_key, **secret_files(api_key, "DaemonSet")).sinks.elasticsearch
    assert settings is not None
    assert (settings.api_key, settings.username) == ("es-api-key/api_key", None)


def test_collector_disabled_turns_the_span_path_off(helm: Path) -> None:
    """Without the collector the agents receive no spans and offer no span Service, unless
    agent.config names collectors of the user's own."""
    manifests = render(helm, "obs", "observer", "--set", "collector.enabled=false")
    assert not [
        m
        for m in manifests
        if m["metadata"]["name"].endswith(("-collector", "-collector-headless"))
    ]
    assert agent_config(manifests).sources.spans.enabled is False
    assert ("Service", "obs-observer-agent") not in kinds(manifests)

    own = render(
        helm,
        "obs",
        "observer",
        *sets(
            "collector.enabled=false",
            "agent.config.sinks.collector.endpoint=traces-headless.tracing.svc:4317",
        ),
    )
    config = agent_config(own)
    assert config.sources.spans.enabled is True
    assert config.sinks.collector.endpoint == "traces-headless.tracing.svc:4317"
    assert ("Service", "obs-observer-agent") in kinds(own)


def test_config_change_rolls_the_pods(helm: Path) -> None:
    """The pods' checksum/config annotation follows the rendered config, and only it."""

    def checksums(*options: str) -> tuple[str, ...]:
        manifests = render(helm, "obs", "observer", *options)
        return tuple(
            one(manifests, kind)["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            for kind in ("DaemonSet", "Deployment")
        )

    agent, collector = checksums()
    assert checksums() == (agent, collector)
    assert checksums("--set", "agent.config.telemetry.log_level=debug")[0] != agent
    assert checksums("--set", "collector.config.telemetry.log_level=debug")[1] != collector
    assert checksums("--set", "agent.podAnnotations.team=shop") == (agent, collector)


# --- the pods ------------------------------------------------------------------------------


def test_agent_reads_host_logs_read_only_and_keeps_checkpoints_on_the_node(helm: Path) -> None:
    """/var/log/pods is mounted read-only from the node, the state directory read-write
    from the node (created if missing), agent.yaml from its ConfigMap; nothing else is
    writable but /tmp."""
    manifests = render(helm, "obs", "observer")
    spec = pod_spec(manifests, "DaemonSet")
    (container,) = spec["containers"]
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    config = agent_config(manifests)

    logs = mounts[str(config.sources.pod_logs.root)]
    assert logs["readOnly"] is True
    assert volumes[logs["name"]]["hostPath"] == {"path": "/var/log/pods", "type": "Directory"}
    state = mounts[str(config.state_dir)]
    assert not state.get("readOnly")
    assert volumes[state["name"]]["hostPath"] == {
        "path": "/var/lib/observer",
        "type": "DirectoryOrCreate",
    }
    assert container["args"] == ["agent", "--config", "/etc/observer/agent.yaml"]
    assert volumes[mounts["/etc/observer"]["name"]]["configMap"]["name"] == "obs-observer-agent"
    writable = {path for path, mount in mounts.items() if not mount.get("readOnly")}
    assert writable == {"/var/lib/observer", "/tmp"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_agent_runs_as_root_with_only_dac_read_search(helm: Path) -> None:
    """The agent reads root-only log files with DAC_READ_SEARCH alone, cannot escalate, and
    runs under the runtime's seccomp profile."""
    spec = pod_spec(render(helm, "obs", "observer"), "DaemonSet")
    security = spec["containers"][0]["securityContext"]
    assert security == {
        "runAsUser": 0,
        "runAsNonRoot": False,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"], "add": ["DAC_READ_SEARCH"]},
    }
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


def test_agent_pod_knows_its_node_and_runs_everywhere(helm: Path) -> None:
    """NODE_NAME, POD_NAME and POD_NAMESPACE come from the downward API; every taint is
    tolerated; the grace period outlasts the agent's shutdown_timeout; one node at a time
    is updated."""
    manifests = render(helm, "obs", "observer")
    daemon_set = one(manifests, "DaemonSet")
    spec = daemon_set["spec"]["template"]["spec"]
    env = {
        item["name"]: item["valueFrom"]["fieldRef"]["fieldPath"]
        for item in spec["containers"][0]["env"]
    }
    assert env == {
        "NODE_NAME": "spec.nodeName",
        "POD_NAME": "metadata.name",
        "POD_NAMESPACE": "metadata.namespace",
    }
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert spec["terminationGracePeriodSeconds"] > agent_config(manifests).shutdown_timeout
    assert daemon_set["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1},
    }
    assert spec["serviceAccountName"] == "obs-observer-agent"
    assert spec["automountServiceAccountToken"] is True


@pytest.mark.parametrize("kind", ["DaemonSet", "Deployment"])
def test_probes_and_metrics_are_on_the_telemetry_port(helm: Path, kind: str) -> None:
    """Liveness asks /healthz, readiness /readyz, Prometheus /metrics, all on the port the
    config's telemetry.listen opens."""
    manifests = render(helm, "obs", "observer")
    template = one(manifests, kind)["spec"]["template"]
    (container,) = template["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    model = AgentConfig if kind == "DaemonSet" else CollectorConfig
    component = "agent" if kind == "DaemonSet" else "collector"
    listen = parse(model, config_text(manifests, component), env=POD_ENV).telemetry.listen
    assert ports["metrics"] == int(listen.rpartition(":")[2])
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(ports["metrics"])
    assert annotations["prometheus.io/path"] == "/metrics"


def test_collector_has_no_api_token_and_its_own_storage(helm: Path) -> None:
    """The collector's pods get no service account token; the embedded store is on an
    emptyDir, or on a claim (updated with Recreate) when persistence is on."""
    manifests = render(helm, "obs", "observer")
    spec = pod_spec(manifests, "Deployment")
    assert spec["automountServiceAccountToken"] is False
    (container,) = spec["containers"]
    assert container["args"] == ["collector", "--config", "/etc/observer/collector.yaml"]
    store = parse(CollectorConfig, config_text(manifests, "collector")).storage.embedded.path
    mount = next(m for m in container["volumeMounts"] if store.is_relative_to(m["mountPath"]))
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    assert volumes[mount["name"]] == {"name": mount["name"], "emptyDir": {}}

    persistent = render(
        helm,
        "obs",
        "observer",
        *sets("collector.persistence.enabled=true", "collector.persistence.size=20Gi"),
    )
    deployment = one(persistent, "Deployment")
    claim = one(persistent, "PersistentVolumeClaim")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes[mount["name"]]["persistentVolumeClaim"] == {
        "claimName": claim["metadata"]["name"]
    }
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


def test_services_select_the_chart_pods_and_their_named_ports(helm: Path) -> None:
    """Each Service selects the pods of one component and targets ports they declare; the
    agent's keeps each sender on its own node."""
    manifests = render(helm, "obs", "observer", "--set", "serviceMonitor.enabled=true")
    pods = {
        one(manifests, kind)["spec"]["template"]["metadata"]["labels"].get(
            "app.kubernetes.io/component"
        ): one(manifests, kind)["spec"]["template"]
        for kind in ("DaemonSet", "Deployment")
    }
    services = [m for m in manifests if m["kind"] == "Service"]
    assert len(services) == 4
    for service in services:
        selector = service["spec"]["selector"]
        matched = [
            template
            for template in pods.values()
            if selector.items() <= template["metadata"]["labels"].items()
        ]
        assert len(matched) == 1, service["metadata"]["name"]
        declared = {port["name"] for port in matched[0]["spec"]["containers"][0]["ports"]}
        assert {port["targetPort"] for port in service["spec"]["ports"]} <= declared
    agent = one(manifests, "Service", "obs-observer-agent")["spec"]
    assert agent["internalTrafficPolicy"] == "Local"
    assert {port["port"] for port in agent["ports"]} == {4317, 4318, 9411}
    collector = one(manifests, "Service", "obs-observer-collector")["spec"]
    assert {port["name"]: port["port"] for port in collector["ports"]}.items() >= {
        "query": 16686,
        "otlp-grpc": 4317,
        "otlp-http": 4318,
    }.items()


# --- Prometheus Operator objects -------------------------------------------------------------


def test_prometheus_rule_holds_the_alert_rules_of_dashboards(helm: Path) -> None:
    """The PrometheusRule carries exactly the groups of dashboards/alerts/observer.rules.yaml
    (the chart's copy is kept equal, and Prometheus' own {{ $labels }} survive Helm)."""
    rule = one(
        render(helm, "obs", "observer", "--set", "prometheusRule.enabled=true"), "PrometheusRule"
    )
    assert rule["apiVersion"] == PROMETHEUS_OPERATOR
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


def test_service_monitors_scrape_with_the_jobs_the_alerts_expect(helm: Path) -> None:
    """Each ServiceMonitor selects a Service with a metrics port, and sets the job label
    that the alert rules' up{job=~...} selectors match, whatever the release is called."""
    manifests = render(helm, "any-name", "observer", "--set", "serviceMonitor.enabled=true")
    monitors = [m for m in manifests if m["kind"] == "ServiceMonitor"]
    assert len(monitors) == 2
    selectors = re.findall(r'up\{job=~"([^"]+)"\}', RULES.read_text())
    assert selectors
    for monitor in monitors:
        component = monitor["metadata"]["labels"]["app.kubernetes.io/component"]
        labels = monitor["spec"]["selector"]["matchLabels"]
        services = [
            m
            for m in manifests
            if m["kind"] == "Service"
            and labels.items() <= m["metadata"]["labels"].items()
            and any(port["name"] == "metrics" for port in m["spec"]["ports"])
        ]
        assert services, monitor["metadata"]["name"]
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] == "metrics"
        jobs = [r["replacement"] for r in endpoint["relabelings"] if r["targetLabel"] == "job"]
        assert jobs == [f"observer-{component}"]
        wanted = [s for s in selectors if component in s]
        assert wanted
        assert all(re.fullmatch(selector, jobs[0]) for selector in wanted)


# --- RBAC, for real --------------------------------------------------------------------------

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
    template = {
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
    refused = [
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
