"""Helpers for tests/e2e/test_alert_faults.py: time-compressed rules, a webhook receiver
for Alertmanager, and `observer agent` as a process.

The rules are rendered with every duration divided by a factor (`for:`, range selectors,
subquery ranges and steps, `offset`), so that an alert whose production `for` is minutes
fires within seconds. Numbers compared with a seconds-valued series are not durations to
PromQL and would keep their production scale: `compress_rules` refuses such a rule rather
than render it with a threshold that no longer means what it says.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.services.prometheus import Prometheus

RULES = Path(__file__).resolve().parents[2] / "dashboards" / "alerts" / "observer.rules.yaml"

_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_UNITS_MS["y"] = 365 * _UNITS_MS["d"]
_DURATION = r"(?:\d+(?:ms|[smhdwy]))+"
_DURATION_PART = re.compile(r"(\d+)(ms|[smhdwy])")
_RANGE = re.compile(rf"\[({_DURATION})(?::({_DURATION})?)?\]")
_OFFSET = re.compile(rf"\boffset(\s+)(-?)({_DURATION})")
# A series whose unit is seconds (`..._seconds`, not `..._seconds_total` or a histogram's
# `_seconds_bucket`), compared with a number: its threshold is a duration in disguise.
_SECONDS_THRESHOLD = re.compile(
    r"_seconds\b(?:\{[^}]*\})?\)?\s*(?:[<>]=?|==|!=)\s*\d|\d\s*(?:[<>]=?|==|!=)\s*[\w:]*_seconds\b"
)


def duration_ms(text: str) -> int:
    """A Prometheus duration (`1h30m`, `500ms`) in milliseconds."""
    if not re.fullmatch(_DURATION, text):
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(int(number) * _UNITS_MS[unit] for number, unit in _DURATION_PART.findall(text))


def format_duration(milliseconds: int) -> str:
    """The shortest exact spelling in one unit: 60000 → `1m`, 1500 → `1500ms`."""
    for unit in ("w", "d", "h", "m", "s"):
        if milliseconds and milliseconds % _UNITS_MS[unit] == 0:
            return f"{milliseconds // _UNITS_MS[unit]}{unit}"
    return f"{milliseconds}ms"


def compress_duration(text: str, factor: int) -> str:
    """`text` divided by `factor`, at least one millisecond (`5m`, 60 → `5s`)."""
    return format_duration(max(1, duration_ms(text) // factor))


def compress_expr(expr: str, factor: int) -> str:
    """`expr` with its range selectors, subquery ranges and steps, and offsets divided by `factor`."""

    def scale_range(match: re.Match[str]) -> str:
        window, step = match.group(1), match.group(2)
        scaled = compress_duration(window, factor)
        if ":" not in match.group(0):
            return f"[{scaled}]"
        return f"[{scaled}:{compress_duration(step, factor) if step else ''}]"

    def scale_offset(match: re.Match[str]) -> str:
        spacing, sign, offset = match.groups()
        return f"offset{spacing}{sign}{compress_duration(offset, factor)}"

    return _OFFSET.sub(scale_offset, _RANGE.sub(scale_range, expr))


def compares_seconds(expr: str) -> bool:
    """Whether `expr` compares a seconds-valued series with a number (see the module doc)."""
    return _SECONDS_THRESHOLD.search(expr) is not None


def compress_rules(rules: dict[str, Any], factor: int, alerts: set[str]) -> dict[str, Any]:
    """A rules file (parsed) keeping only the alerting rules named in `alerts`, every
    duration in them divided by `factor`; raises if one is missing or compares seconds."""
    groups = []
    found: set[str] = set()
    for group in rules["groups"]:
        kept = []
        for rule in group["rules"]:
            name = rule.get("alert")
            if name not in alerts:
                continue
            if compares_seconds(rule["expr"]):
                raise ValueError(
                    f"{name} compares a *_seconds series with a number, which time "
                    "compression would leave at production scale"
                )
            found.add(name)
            scaled = {**rule, "expr": compress_expr(rule["expr"], factor)}
            for key in ("for", "keep_firing_for"):
                if key in rule:
                    scaled[key] = compress_duration(rule[key], factor)
            kept.append(scaled)
        if kept:
            groups.append({**group, "rules": kept})
    if missing := alerts - found:
        raise KeyError(f"not in the rules file: {sorted(missing)}")
    return {"groups": groups}


# --- Alertmanager's webhook receiver --------------------------------------------------


@dataclass
class Webhook:
    """An HTTP server on loopback that keeps every Alertmanager notification it receives."""

    notifications: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/alerts", self._receive)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/alerts"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _receive(self, request: web.Request) -> web.Response:
        self.notifications.append(await request.json())
        return web.Response()

    def alerts(self, alertname: str, status: str) -> list[dict[str, Any]]:
        """Every alert called `alertname` notified with `status` (firing or resolved)."""
        return [
            alert
            for notification in self.notifications
            for alert in notification["alerts"]
            if alert["labels"].get("alertname") == alertname and alert["status"] == status
        ]


# --- observer agent as a process ----------------------------------------------------------


@dataclass
class AgentProcess:
    """`python -m observer agent --config <file>`, its log (stdout and stderr) in a file."""

    config: Path
    telemetry_port: int
    log_path: Path
    process: asyncio.subprocess.Process | None = None

    @property
    def instance(self) -> str:
        """Prometheus' `instance` label for its scrape target."""
        return f"127.0.0.1:{self.telemetry_port}"

    async def start(self, ready_within: float = 60.0) -> None:
        """Start it and wait until /readyz answers 200 (sinks reachable, caches synced)."""
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "observer",
                "agent",
                "--config",
                str(self.config),
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + ready_within
        while time.monotonic() < deadline:
            if self.process.returncode is not None:
                raise AssertionError(
                    f"the agent exited {self.process.returncode}:\n{self.log_tail()}"
                )
            if await asyncio.to_thread(self._ready):
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"the agent was not ready within {ready_within} s:\n{self.log_tail()}")

    def _ready(self) -> bool:
        url = f"http://{self.instance}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    async def stop(self) -> int:
        """SIGTERM, then its exit code (killed after 30 s)."""
        if self.process is None:
            return 0
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.process.wait(), 30)
        except TimeoutError:
            self.process.kill()
            return await self.process.wait()

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


# --- waiting, with what is needed to understand a timeout ---------------------------------


def prometheus_alerts(prometheus: Prometheus) -> list[dict[str, Any]]:
    """Prometheus' pending and firing alerts (its /api/v1/alerts)."""
    with urllib.request.urlopen(f"{prometheus.url}/api/v1/alerts", timeout=10) as response:  # noqa: S310
        alerts: list[dict[str, Any]] = json.loads(response.read())["data"]["alerts"]
        return alerts


def situation(prometheus: Prometheus, agent: AgentProcess, webhook: Webhook) -> str:
    """What a timed-out wait reports: Prometheus' alerts, the webhook's notifications, the agent's log."""
    return (
        f"\nPrometheus alerts: {json.dumps(prometheus_alerts(prometheus), indent=1)}"
        f"\nWebhook notifications: {json.dumps(webhook.notifications, indent=1)}"
        f"\nAgent log tail:\n{agent.log_tail()}"
    )
