"""The Kubernetes objects the Helm chart renders: every one is admitted by the real
kube-apiserver, the pods mount, expose and probe what the agent and collector need and
nothing more, the Services select them, and the Prometheus Operator objects match the
alert rules of dashboards/.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from observer.config import AgentConfig, CollectorConfig, parse
from tests.deploy.helm_support import (
    POD_ENV,
    PROMETHEUS_OPERATOR,
    REPO,
    VARIANTS,
    Manifest,
    agent_config,
    api_path,
    call,
    config_text,
    create_all,
    kinds,
    one,
    pod_spec,
    render,
    sets,
)
from tests.services.kubernetes import KubeCluster

RULES = REPO / "dashboards" / "alerts" / "observer.rules.yaml"


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
    model: type[AgentConfig | CollectorConfig] = (
        AgentConfig if kind == "DaemonSet" else CollectorConfig
    )
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
