"""The agent killed with SIGKILL again and again while lines are written: nothing is lost."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson

from observer.testing import audit_delivery, read_file_sink, write_numbered_logs, written_lines
from tests.services.process import free_port

CONTAINERS = 4
LINES_PER_CONTAINER = 250_000
LINES_PER_SECOND = 80_000
"""The writer's pace: the run lasts long enough for the kills to land while it writes."""
ROTATE_BYTES = 256 * 1024
KILLS = 20
SEED = 20261121
DRAIN_TIMEOUT = 90.0


def start_agent(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "observer", "agent", "--config", str(config)], stderr=stderr
        )


class Delivered:
    """The distinct messages in the file sink's output so far, read incrementally."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.position = 0
        self.messages: set[str] = set()

    def count(self) -> int:
        if self.path.exists():
            with self.path.open("rb") as out:
                out.seek(self.position)
                data = out.read()
            complete = data.rfind(b"\n") + 1  # a batch may be half written right now
            self.position += complete
            for line in data[:complete].splitlines():
                self.messages.add(orjson.loads(line)["message"])
        return len(self.messages)


def test_kill_9_at_random_moments_loses_nothing_and_replays(tmp_path: Path) -> None:
    """SIGKILL at 20 random moments of a 1,000,000-line run, restarting each time: every line is delivered, some twice from the same file and offset."""
    root = tmp_path / "pods"
    out = tmp_path / "out.jsonl"
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        f"telemetry: {{listen: '127.0.0.1:{free_port()}'}}\n"
        f"sources: {{pod_logs: {{root: {root}}}}}\n"
        f"sinks: {{elasticsearch: null, file: {{path: {out}}}}}\n"
    )
    root.mkdir()
    # Rotations are renames only: a rotated file compressed while the agent is down would
    # lose its unread lines whatever the agent does (the kubelet's limit, not the agent's).
    writer = threading.Thread(
        target=write_numbered_logs,
        args=(root, CONTAINERS, LINES_PER_CONTAINER),
        kwargs={
            "rotate_bytes": ROTATE_BYTES,
            "keep_uncompressed": None,
            "lines_per_second": LINES_PER_SECOND,
        },
    )
    log = tmp_path / "agent.log"
    delivered = Delivered(out)
    moments = random.Random(SEED)
    started = time.monotonic()
    agent = start_agent(config, log)
    writer.start()
    try:
        for _ in range(KILLS):
            time.sleep(moments.uniform(0.1, 1.2))
            agent.send_signal(signal.SIGKILL)
            agent.wait(10)
            agent = start_agent(config, log)
        writer.join(60)
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while delivered.count() < CONTAINERS * LINES_PER_CONTAINER:
            assert agent.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the agent did not deliver every line in time"
            time.sleep(0.2)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
        writer.join(60)

    assert agent.returncode == 0, log.read_text()[-3000:]
    audit = audit_delivery(read_file_sink(out), written_lines(root))
    assert audit.problems(duplicates_allowed=True) == []
    assert audit.documents - sum(audit.duplicates.values()) == CONTAINERS * LINES_PER_CONTAINER
    # Replay was exercised: lines delivered before a kill but not yet checkpointed were
    # read again, and (audit.misplaced is empty) each copy names the same file and offset.
    replayed = sum(audit.duplicates.values())
    print(f"{KILLS} kills in {time.monotonic() - started:.0f} s: {replayed} lines replayed")
    assert replayed > 0
