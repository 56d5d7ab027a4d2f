"""A burst of writes with kubelet-style rotation while the agent follows the tree."""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from prometheus_client import CollectorRegistry

from observer.agent import app
from observer.config import AgentConfig
from observer.telemetry import metric_name
from observer.testing import audit_delivery, read_file_sink, write_numbered_logs, written_lines

CONTAINERS = 20
LINES_PER_CONTAINER = 100_000
ROTATE_BYTES = 512 * 1024
KEEP_UNCOMPRESSED = 4
"""Rotations left uncompressed, as with the kubelet's containerLogMaxFiles; older ones are gzipped.

A file the agent never opened is lost when it is compressed (the agent counts it). The
kubelet rotates a file at most every 10 s and leaves one rotation uncompressed, so a file
lives 20 s or more before that. This writer rotates each container about every second:
with four rotations kept, a file lives a few seconds, enough for an agent slowed by a busy
machine (one CI run took 125 s against 18 s) to open it, as the test is about rotation,
not about outrunning the agent."""
RESCAN_INTERVAL = "100ms"
DRAIN_TIMEOUT = 120.0


class LineCount:
    """Lines in a growing file, counted incrementally."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.position = 0
        self.lines = 0

    def __call__(self) -> int:
        if self.path.exists():
            with self.path.open("rb") as out:
                out.seek(self.position)
                data = out.read()
            self.position += len(data)
            self.lines += data.count(b"\n")
        return self.lines


async def test_rotation_burst_delivers_every_line_once_and_in_order(tmp_path: Path) -> None:
    """20 containers × 100,000 lines, rotated every 256 KB while the agent runs: each line delivered once, in order."""
    root = tmp_path / "pods"
    out = tmp_path / "out.jsonl"
    config = AgentConfig.model_validate(
        {
            "state_dir": str(tmp_path / "state"),
            "telemetry": {"listen": "127.0.0.1:0"},
            # inotify events reach the agent seconds late while it is busy, so a timed
            # rescan finds new files in time.
            "sources": {"pod_logs": {"root": str(root), "rescan_interval": RESCAN_INTERVAL}},
            "sinks": {"elasticsearch": None, "file": {"path": str(out)}},
        }
    )
    root.mkdir()
    stop = asyncio.Event()
    registry = CollectorRegistry()
    agent = asyncio.create_task(app.run(config, once=False, stop=stop, registry=registry))
    started = time.monotonic()
    delivered = LineCount(out)
    try:
        # The writer is another process, so that it and the agent each have a core.
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as writer:
            written = await asyncio.get_running_loop().run_in_executor(
                writer,
                functools.partial(
                    write_numbered_logs,
                    root,
                    CONTAINERS,
                    LINES_PER_CONTAINER,
                    rotate_bytes=ROTATE_BYTES,
                    keep_uncompressed=KEEP_UNCOMPRESSED,
                ),
            )
        writing = time.monotonic() - started
        # Past the timeout, the audit below says which lines never came.
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while delivered() < written and not agent.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        draining = time.monotonic() - started
    finally:
        stop.set()
        await asyncio.wait_for(agent, 30)

    print(f"written in {writing:.1f} s, delivered in {draining:.1f} s")
    assert written == CONTAINERS * LINES_PER_CONTAINER
    audit = audit_delivery(read_file_sink(out), written_lines(root))
    assert audit.problems() == []
    assert audit.documents == written
    # Nothing was lost, so nothing may be reported lost.
    assert registry.get_sample_value(metric_name("log_bytes_lost_to_rotation_total")) == 0
