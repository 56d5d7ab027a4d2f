"""promtool and Alertmanager, the tools the alert rules will be checked with."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.services.process import free_port
from tests.services.prometheus import Alertmanager

RULES = """
groups:
  - name: smoke
    rules:
      - alert: ObserverDown
        expr: up{job="observer"} == 0
        for: 1m
        labels: {severity: critical}
        annotations: {summary: "observer is down"}
"""


def test_promtool_accepts_valid_rules_and_rejects_broken_ones(
    promtool: Path, tmp_path: Path
) -> None:
    """promtool check rules passes a valid file and names the error in a broken one."""
    good = tmp_path / "good.yml"
    good.write_text(RULES)
    bad = tmp_path / "bad.yml"
    bad.write_text(RULES.replace("== 0", "== "))

    assert subprocess.run([promtool, "check", "rules", good], capture_output=True).returncode == 0
    broken = subprocess.run([promtool, "check", "rules", bad], capture_output=True, text=True)
    assert broken.returncode != 0
    assert "parse error" in broken.stdout + broken.stderr


async def test_alert_reaches_a_webhook_through_alertmanager(alertmanager: Alertmanager) -> None:
    """An alert posted to Alertmanager is delivered to the configured webhook receiver."""
    received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def webhook(request: web.Request) -> web.Response:
        await received.put(await request.json())
        return web.Response()

    app = web.Application()
    app.router.add_post("/alerts", webhook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        alertmanager.route_to_webhook(f"http://127.0.0.1:{port}/alerts")
        await asyncio.sleep(0.5)  # the reload is applied asynchronously
        alertmanager.post_alerts([{"labels": {"alertname": "ObserverSmoke", "severity": "info"}}])
        payload = await asyncio.wait_for(received.get(), 30)
    finally:
        await runner.cleanup()

    assert payload["status"] == "firing"
    assert payload["alerts"][0]["labels"]["alertname"] == "ObserverSmoke"
