"""The `observer` command as a user runs it: a process, its exit code and what it prints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from observer import __version__

REPO = Path(__file__).resolve().parents[2]


def observer(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "observer", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "path", [REPO / "agent" / "agent.yaml", REPO / "collector" / "collector.yaml"]
)
def test_check_config_accepts_the_shipped_defaults(path: Path) -> None:
    """check-config exits 0 on each shipped default file."""
    result = observer("check-config", path)
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stderr


def test_check_config_reports_three_mistakes_with_paths(tmp_path: Path) -> None:
    """A file with three mistakes gets all three reported with their paths, and exit code 1."""
    config = tmp_path / "agent.yaml"
    config.write_text(
        "telemetry:\n  listen: nine\n"
        "sinks:\n  elasticsearch:\n    hosts: ['localhost:92OO']\n"
        "kubernetes:\n  kubeconfg: /etc/kube\n"
    )
    result = observer("check-config", config)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{config}: 3 problem(s):",
        "  telemetry.listen: not a listen address host:port: 'nine'",
        "  kubernetes.kubeconfg: unknown key; allowed here: annotations, context, "
        "deleted_pod_grace, enabled, kubeconfig",
        "  sinks.elasticsearch.hosts[0]: not a URL: 'localhost:92OO'",
    ]


def test_check_config_needs_to_know_the_deployable(tmp_path: Path) -> None:
    """A file whose name says neither agent nor collector needs --deployable."""
    config = tmp_path / "observer.yaml"
    config.write_text("telemetry: {listen: ':9464'}\n")
    assert observer("check-config", config).returncode == 1
    assert observer("check-config", config, "--deployable", "collector").returncode == 0


def test_check_config_show_prints_the_effective_configuration(tmp_path: Path) -> None:
    """--show prints every key, defaults included, as YAML."""
    config = tmp_path / "collector.yaml"
    config.write_text("telemetry: {log_level: debug}\n")
    result = observer("check-config", config, "--show")
    assert result.returncode == 0
    assert "log_level: debug" in result.stdout
    assert "listen: 0.0.0.0:9464" in result.stdout


def test_collector_with_an_invalid_configuration_exits_1_naming_the_problem(
    tmp_path: Path,
) -> None:
    """observer collector refuses a bad file before starting: exit 1, a JSON log line with the key path."""
    config = tmp_path / "collector.yaml"
    config.write_text("receivers: {otlp_grpc: {enabled: false}, otlp_http: {enabled: false}}\n")
    result = observer("collector", "--config", config)
    assert result.returncode == 1
    entry = json.loads(result.stderr.splitlines()[-1])
    assert entry["level"] == "error"
    assert entry["problem"] == "receivers: enable at least one receiver"


def test_demo_runs_the_agent_on_its_embedded_example() -> None:
    """observer demo delivers every line of its example tree, one document per line."""
    result = observer("demo")
    assert result.returncode == 0, result.stderr
    assert "9 lines written by 2 pods → 9 documents" in result.stdout
    assert '"trace": {' in result.stdout


def test_agent_once_with_the_file_sink(tmp_path: Path) -> None:
    """observer agent --once reads a pod log tree to its end, writes documents, and exits 0."""
    container = tmp_path / "pods" / "shop_web-1_uid-1" / "app"
    container.mkdir(parents=True)
    (container / "0.log").write_text("2026-11-21T10:00:00.5Z stdout F hello\n")
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        f"sources: {{pod_logs: {{root: {tmp_path / 'pods'}}}}}\n"
        f"sinks: {{elasticsearch: null, file: {{path: {tmp_path / 'out.jsonl'}}}}}\n"
    )
    result = observer("agent", "--config", config, "--once")
    assert result.returncode == 0, result.stderr
    (document,) = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert document["message"] == "hello"
    assert document["kubernetes"]["pod"] == {"name": "web-1", "uid": "uid-1"}


def test_agent_with_a_missing_tls_file_exits_3_naming_the_setting(tmp_path: Path) -> None:
    """A CA file that is not there stops the start, before any span is taken."""
    (tmp_path / "pods").mkdir()
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        "kubernetes: {enabled: false}\n"
        f"telemetry: {{listen: '127.0.0.1:0'}}\n"
        f"sources: {{pod_logs: {{root: {tmp_path / 'pods'}}}, spans: {{enabled: true, "
        "otlp_grpc: {listen: '127.0.0.1:0'}, otlp_http: {enabled: false}, "
        "zipkin: {enabled: false}}}\n"
        f"sinks: {{elasticsearch: null, file: {{path: {tmp_path / 'out.jsonl'}}}, "
        "collector: {endpoints: ['127.0.0.1:4317'], "
        f"tls: {{enabled: true, ca_file: {tmp_path / 'absent-ca.crt'}}}}}}}\n"
    )
    result = observer("agent", "--config", config)
    assert result.returncode == 3, result.stderr
    [failure] = [
        record
        for record in map(json.loads, result.stderr.splitlines())
        if record["message"] == "The agent cannot start."
    ]
    assert failure["problem"] == (
        f"sinks.collector.tls.ca_file {tmp_path / 'absent-ca.crt'}: cannot be read: "
        "No such file or directory"
    )


def test_version() -> None:
    """--version prints the package version."""
    assert observer("--version").stdout.strip() == f"observer {__version__}"
