"""The agent as a long-running process: follows files, serves metrics, stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from observer.testing import PodLogTree
from tests.services.process import free_port


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_agent_follows_files_serves_metrics_and_stops_on_sigterm(tmp_path: Path) -> None:
    """Lines written while the agent runs are delivered and counted; SIGTERM saves checkpoints and exits 0."""
    tree = PodLogTree(tmp_path / "pods")
    web = tree.container("shop", "web-1", "app")
    port = free_port()
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        f"telemetry: {{listen: '127.0.0.1:{port}'}}\n"
        f"sources: {{pod_logs: {{root: {tree.root}, poll_interval: 50ms}}}}\n"
        f"sinks: {{elasticsearch: null, file: {{path: {tmp_path / 'out.jsonl'}}}}}\n"
    )
    agent = subprocess.Popen(
        [sys.executable, "-m", "observer", "agent", "--config", str(config)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        web.write([f"line {i}" for i in range(5000)])
        metrics_url = f"http://127.0.0.1:{port}/metrics"
        deadline = time.monotonic() + 30
        samples: dict[str, float] = {}
        while time.monotonic() < deadline:
            try:
                samples = scrape(metrics_url)
            except OSError:
                samples = {}
            if samples.get("observer_log_lines_read_total") == 5000:
                break
            time.sleep(0.1)
        assert samples.get("observer_log_lines_read_total") == 5000
        assert samples['observer_log_lines_repaired_total{reason="malformed"}'] == 0
        assert samples["observer_log_files_open"] == 1
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            assert response.status == 200
    finally:
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=20)
        tree.close()

    assert agent.returncode == 0, stderr
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 5000
    (checkpoint,) = json.loads((tmp_path / "state" / "checkpoints.json").read_text())[
        "files"
    ].values()
    assert checkpoint["offset"] == web.path.stat().st_size
    assert "The agent stopped." in stderr
