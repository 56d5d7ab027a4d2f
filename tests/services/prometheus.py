"""A real Prometheus (and Alertmanager) run as the test session's own instances.

Tests set the scrape targets and rules they need through `configure`, which rewrites the
configuration and asks Prometheus to reload it (`--web.enable-lifecycle`).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.services.process import ServiceProcess, free_port, require_binary


def _http(url: str, data: bytes | None = None, method: str | None = None) -> Any:
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - loopback
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        body = response.read()
    return json.loads(body) if body.startswith((b"{", b"[")) else body


def _ok(url: str) -> bool:
    try:
        _http(url)
        return True
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class Prometheus:
    url: str
    workdir: Path
    process: ServiceProcess
    scrape_interval: str = "1s"
    evaluation_interval: str = "1s"
    config: dict[str, Any] = field(default_factory=dict)

    def ensure_running(self) -> None:
        self.process.ensure_running()

    def configure(
        self,
        targets: list[str] | None = None,
        rule_files: list[Path] | None = None,
        alertmanager: str | None = None,
        jobs: dict[str, list[str]] | None = None,
    ) -> None:
        """Scrape `targets` (host:port) as job "observer" and each of `jobs` (job name →
        targets) under its name, evaluate `rule_files`, alert to `alertmanager`."""
        scrape_jobs = {"observer": targets or [], **(jobs or {})}
        config: dict[str, Any] = {
            "global": {
                "scrape_interval": self.scrape_interval,
                "evaluation_interval": self.evaluation_interval,
            },
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": job_targets}]}
                for job, job_targets in scrape_jobs.items()
            ],
            "rule_files": [str(path) for path in rule_files or []],
        }
        if alertmanager:
            config["alerting"] = {
                "alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]
            }
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.config = config
        _http(f"{self.url}/-/reload", data=b"", method="POST")

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant-vector result of a PromQL query: [{"metric": {...}, "value": [t, "v"]}]."""
        answer = _http(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    async def wait_for(self, promql: str, within: float = 30.0) -> list[dict[str, Any]]:
        """Poll until the query returns a non-empty result; return it (empty on timeout).

        Asynchronous, so that targets served by the test's own event loop get scraped.
        """
        deadline = time.monotonic() + within
        while True:
            result = await asyncio.to_thread(self.query, promql)
            if result or time.monotonic() > deadline:
                return result
            await asyncio.sleep(0.25)


def start_prometheus(workdir: Path) -> Prometheus:
    binary = require_binary("Prometheus", "prometheus")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "prometheus.yml").write_text(yaml.safe_dump({"scrape_configs": []}))
    port = free_port()
    process = ServiceProcess(
        "Prometheus",
        [
            str(binary),
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",
        ],
        workdir / "prometheus.log",
    )
    process.start()
    url = f"http://127.0.0.1:{port}"
    process.wait_ready(lambda: _ok(f"{url}/-/ready"), timeout=30)
    return Prometheus(url, workdir, process)


@dataclass
class Alertmanager:
    url: str
    address: str
    workdir: Path
    process: ServiceProcess

    def ensure_running(self) -> None:
        self.process.ensure_running()

    def route_to_webhook(self, webhook_url: str) -> None:
        """Send every alert, at once and grouped by name, to `webhook_url`."""
        config = {
            "route": {
                "receiver": "webhook",
                "group_by": ["alertname"],
                "group_wait": "0s",
                "group_interval": "1s",
                "repeat_interval": "1h",
            },
            "receivers": [
                {
                    "name": "webhook",
                    "webhook_configs": [{"url": webhook_url, "send_resolved": True}],
                }
            ],
        }
        (self.workdir / "alertmanager.yml").write_text(yaml.safe_dump(config))
        _http(f"{self.url}/-/reload", data=b"", method="POST")

    def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        _http(f"{self.url}/api/v2/alerts", data=json.dumps(alerts).encode(), method="POST")


def start_alertmanager(workdir: Path) -> Alertmanager:
    binary = require_binary("Alertmanager", "prometheus-alertmanager")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "alertmanager.yml").write_text(
        yaml.safe_dump({"route": {"receiver": "none"}, "receivers": [{"name": "none"}]})
    )
    port = free_port()
    process = ServiceProcess(
        "Alertmanager",
        [
            str(binary),
            f"--config.file={workdir / 'alertmanager.yml'}",
            f"--storage.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",  # a single instance: no gossip port
        ],
        workdir / "alertmanager.log",
    )
    process.start()
    url = f"http://127.0.0.1:{port}"
    process.wait_ready(lambda: _ok(f"{url}/-/ready"), timeout=30)
    return Alertmanager(url, f"127.0.0.1:{port}", workdir, process)
