"""The Helm chart's values, checked with real Helm: it lints clean with each likely set of
values, every value is documented, what it refuses it refuses with the reason, and the
agent.yaml and collector.yaml it renders are accepted by observer's own loader and say
what the values ask for.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from observer.config import CollectorConfig, parse
from tests.deploy.helm_support import (
    CHART,
    POD_ENV,
    REPO,
    VARIANTS,
    WITH_SECRETS,
    agent_config,
    config_text,
    fullname,
    kinds,
    one,
    pod_spec,
    render,
    secret_files,
    sets,
)

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


def test_collector_tls_secret_serves_tls_and_the_agents_trust_only_its_ca(helm: Path) -> None:
    """With collector.tls.secretName the collector's OTLP ports serve the Secret's
    certificate; the agents export over TLS trusting its ca.crt, the one key of it they
    can read, and check the certificate against the headless Service's name."""
    manifests = render(
        helm, "shop", "monitoring", "--set", "collector.tls.secretName=collector-tls"
    )
    agent_files = secret_files(manifests, "DaemonSet")
    assert sorted(agent_files.values()) == ["collector-tls/ca.crt"]
    sink = agent_config(manifests).sinks.collector
    assert sink.tls.enabled
    assert agent_files[str(sink.tls.ca_file)] == "collector-tls/ca.crt"
    assert (sink.tls.cert_file, sink.tls.server_name) == (None, None)
    # server_name's default: the certificate must name the Service the agents resolve
    assert sink.endpoint == "shop-observer-collector-headless.monitoring.svc:4317"

    collector_files = secret_files(manifests, "Deployment")
    receivers = parse(
        CollectorConfig, config_text(manifests, "collector"), "collector.yaml", {}
    ).receivers
    for receiver in (receivers.otlp_grpc, receivers.otlp_http):
        assert receiver.tls is not None
        assert collector_files[str(receiver.tls.cert_file)] == "collector-tls/tls.crt"
        assert collector_files[str(receiver.tls.key_file)] == "collector-tls/tls.key"
        assert receiver.tls.client_ca_file is None

    plain = render(helm, "shop", "monitoring")
    assert not agent_config(plain).sinks.collector.tls.enabled
    assert (
        parse(
            CollectorConfig, config_text(plain, "collector"), "collector.yaml", {}
        ).receivers.otlp_grpc.tls
        is None
    )


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
