"""Stack traces joined on the agent's real log path: idle flush, --once, restarts, rotation."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import orjson

from observer.agent import app
from observer.agent.checkpoint import CheckpointStore
from observer.agent.tail import Batch, Tailer
from observer.config import AgentConfig, PodLogsConfig
from observer.testing import PodLogTree

TRACE = [
    "Traceback (most recent call last):",
    '  File "/app/worker.py", line 12, in handle',
    "    payload = json.loads(body)",
    "ValueError: bad payload",
]


def agent_config(tmp_path: Path, **pod_logs: object) -> AgentConfig:
    return AgentConfig.model_validate(
        {
            "state_dir": str(tmp_path / "state"),
            "telemetry": {"listen": "127.0.0.1:0"},
            "sources": {
                "pod_logs": {"root": str(tmp_path / "pods"), "poll_interval": "20ms", **pod_logs}
            },
            "sinks": {"elasticsearch": None, "file": {"path": str(tmp_path / "out.jsonl")}},
        }
    )


def delivered(tmp_path: Path) -> list[str]:
    out = tmp_path / "out.jsonl"
    if not out.exists():
        return []
    return [orjson.loads(line)["message"] for line in out.read_bytes().splitlines()]


async def test_once_emits_a_trace_that_ends_the_file(tmp_path: Path, tree: PodLogTree) -> None:
    """With --once, a trace at the very end of a file is delivered, joined, before the agent exits."""
    tree.container("shop", "worker-1", "app").write(["starting", *TRACE])
    await app.run(agent_config(tmp_path), once=True)
    assert delivered(tmp_path) == ["starting", "\n".join(TRACE)]


async def test_following_emits_a_trace_after_max_wait(tmp_path: Path, tree: PodLogTree) -> None:
    """While following, a trace with no line after it is delivered once its stream is quiet."""
    worker = tree.container("shop", "worker-1", "app")
    stop = asyncio.Event()
    config = agent_config(tmp_path, multiline={"max_wait": "100ms"})
    agent = asyncio.create_task(app.run(config, once=False, stop=stop))
    try:
        worker.write(TRACE)
        async with asyncio.timeout(20):
            while delivered(tmp_path) != ["\n".join(TRACE)]:
                await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.wait_for(agent, 10)


class Reader:
    """A Tailer over the tree whose batches are settled as soon as they are read."""

    def __init__(self, tmp_path: Path, clock: list[float]) -> None:
        self.store = CheckpointStore(tmp_path / "state")
        self.store.load()
        self.queue: asyncio.Queue[Batch] = asyncio.Queue()
        settings = PodLogsConfig.model_validate({"root": str(tmp_path / "pods")})
        self.tailer = Tailer(settings, self.store, self.queue, clock=lambda: clock[0])
        self.messages: list[str] = []

    async def poll(self) -> None:
        self.tailer.scan()
        await self.tailer.read_all()
        await self.tailer.close_finished(once=False)
        while not self.queue.empty():
            batch = self.queue.get_nowait()
            self.messages += [document["message"] for document in batch.documents]
            self.store.settle(batch.handover)

    def crash(self) -> None:
        """kill -9 after the last checkpoint save: nothing held in memory survives."""
        self.store.save()
        for tailed in list(self.tailer.files.values()):
            os.close(tailed.handle)


async def test_checkpoint_stays_at_an_open_trace_and_a_restart_replays_it(
    tmp_path: Path, tree: PodLogTree
) -> None:
    """A crash while a trace is being joined replays it from its first line: joined, and whole."""
    worker = tree.container("shop", "worker-1", "app")
    worker.write(["before", *TRACE[:2]])
    clock = [100.0]
    first = Reader(tmp_path, clock)
    await first.poll()
    assert first.messages == ["before"]
    (checkpoint,) = first.store.checkpoints.values()
    assert checkpoint.offset == len(worker.cri_lines("before")[0])
    first.crash()

    worker.write([*TRACE[2:], "after"])
    second = Reader(tmp_path, clock)
    await second.poll()
    assert second.messages == ["\n".join(TRACE), "after"]


async def test_idle_flush_follows_the_clock(tmp_path: Path, tree: PodLogTree) -> None:
    """A trace at the end of a quiet file is handed over when max_wait has passed, not earlier."""
    worker = tree.container("shop", "worker-1", "app")
    worker.write(TRACE)
    clock = [100.0]
    reader = Reader(tmp_path, clock)
    await reader.poll()
    clock[0] = 100.5
    await reader.poll()
    assert reader.messages == []
    clock[0] = 101.0
    await reader.poll()
    assert reader.messages == ["\n".join(TRACE)]
    (checkpoint,) = reader.store.checkpoints.values()
    assert checkpoint.offset == worker.path.stat().st_size


async def test_a_rotated_file_is_closed_with_its_trace_emitted(
    tmp_path: Path, tree: PodLogTree
) -> None:
    """A trace at the end of a rotated file is emitted when the file is closed, without waiting."""
    worker = tree.container("shop", "worker-1", "app")
    worker.write(TRACE)
    clock = [100.0]
    reader = Reader(tmp_path, clock)
    await reader.poll()
    worker.rotate(compress_older=False)
    worker.write(["next file"])
    for _ in range(3):
        await reader.poll()
    assert reader.messages == ["\n".join(TRACE), "next file"]
