"""kill -9 the agent again and again while it ships to Elasticsearch: exactly once at the end.

The issue's crash test: 1,000,000 lines across 20 files with kubelet-style rotation, the
agent killed with SIGKILL at 20 random moments and restarted each time. Elasticsearch must
end with every line once: no loss, no duplicate by _id or by content, every document where
its line was written, and the 409 ("already delivered") path exercised by the replays.
"""

from __future__ import annotations

import multiprocessing
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from observer.testing import audit_delivery, write_numbered_logs, written_lines
from tests.services.elasticsearch import Node
from tests.services.process import free_port

CONTAINERS = 20
LINES_PER_CONTAINER = 50_000  # 1,000,000 lines
KILLS = 20
SEED = 20261121
LOGS = "logs-kubernetes.container-default"
DUPLICATES = 'observer_elasticsearch_items_total{outcome="duplicate",status="409"}'


def scrape(url: str) -> dict[str, float]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
            text = response.read().decode()
    except OSError:
        return {}
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def stored_documents(es: Node) -> Iterator[dict[str, Any]]:
    """Every document in the data stream (scroll), with its _id under `_id`."""
    page = es.request(
        "POST",
        f"/{LOGS}/_search?scroll=2m",
        {"size": 10000, "_source": ["message", "log.offset", "log.file.path"], "sort": ["_doc"]},
    )
    while page["hits"]["hits"]:
        for hit in page["hits"]["hits"]:
            yield {"_id": hit["_id"], **hit["_source"]}
        page = es.request(
            "POST", "/_search/scroll", {"scroll": "2m", "scroll_id": page["_scroll_id"]}
        )


def count(es: Node) -> int:
    es.request("POST", f"/{LOGS}/_refresh")
    return int(es.request("GET", f"/{LOGS}/_count")["count"])


def test_kill_9_twenty_times_leaves_every_line_in_elasticsearch_exactly_once(
    tmp_path: Path, es: Node
) -> None:
    root = tmp_path / "pods"
    port = free_port()
    config = tmp_path / "agent.yaml"
    config.write_text(
        "node_name: node-a\n"
        f"state_dir: {tmp_path / 'state'}\n"
        f"telemetry: {{listen: '127.0.0.1:{port}'}}\n"
        f"sources: {{pod_logs: {{root: {root}, poll_interval: 50ms}}}}\n"
        "sinks:\n"
        "  file: null\n"
        f"  elasticsearch: {{hosts: ['{es.url}'], setup: {{number_of_replicas: 0}}}}\n"
    )
    metrics = f"http://127.0.0.1:{port}/metrics"
    # Rotation every 1 MB; rotated files stay uncompressed, so that a line is only lost if
    # the agent loses it (a compressed unread file is the kubelet's loss, counted apart).
    writer = multiprocessing.get_context("spawn").Process(
        target=write_numbered_logs,
        args=(root, CONTAINERS, LINES_PER_CONTAINER),
        kwargs={"rotate_bytes": 1 << 20, "keep_uncompressed": None, "lines_per_second": 40_000},
    )
    writer.start()
    chance = random.Random(SEED)
    duplicates_seen = 0.0

    def start_agent() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "observer", "agent", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / "agent.log").open("ab"),
        )

    agent = start_agent()
    try:
        for _ in range(KILLS):
            time.sleep(chance.uniform(0.5, 3.0))
            duplicates_seen += scrape(metrics).get(DUPLICATES, 0.0)
            agent.send_signal(signal.SIGKILL)
            agent.wait(10)
            agent = start_agent()
        writer.join(timeout=300)
        assert writer.exitcode == 0, "the writer failed"
        written = written_lines(root)
        assert len(written) == CONTAINERS * LINES_PER_CONTAINER
        deadline = time.monotonic() + 300
        while count(es) < len(written) and time.monotonic() < deadline:
            time.sleep(1)
        duplicates_seen += scrape(metrics).get(DUPLICATES, 0.0)
    finally:
        if writer.is_alive():
            writer.kill()
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)

    assert agent.returncode == 0, (tmp_path / "agent.log").read_text()[-3000:]
    documents = list(stored_documents(es))
    assert len({document["_id"] for document in documents}) == len(documents)
    audit = audit_delivery(documents, written)
    # Not audit.problems(): Elasticsearch returns documents in index order, not read order.
    assert audit.missing == []
    assert audit.unexpected == []
    assert audit.misplaced == []
    assert not audit.duplicates
    assert audit.documents == len(written)
    assert duplicates_seen > 0, (
        "no replay was answered 409: the kills never hit unacknowledged lines"
    )
