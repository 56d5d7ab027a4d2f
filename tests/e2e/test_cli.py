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
        "  kubernetes.kubeconfg: unknown key; allowed here: context, kubeconfig",
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


def test_commands_not_built_yet_say_so_and_fail() -> None:
    """A deployable that does not exist yet exits 2 with a JSON log line saying so."""
    result = observer("collector", "--config", REPO / "collector" / "collector.yaml")
    assert result.returncode == 2
    entry = json.loads(result.stderr.splitlines()[-1])
    assert entry["level"] == "error"
    assert "not built yet" in entry["message"]
    assert entry["command"] == "collector"


def test_version() -> None:
    """--version prints the package version."""
    assert observer("--version").stdout.strip() == f"observer {__version__}"
