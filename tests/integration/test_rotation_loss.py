"""Bytes lost when rotation outran the reader: counted per compressed file, once.

The Tailer runs on a real temporary /var/log/pods tree; the kubelet's part (rename, then
gzip into ``.tmp``, rename to ``.gz``, delete the source) is played by the test.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import os
import shutil
from pathlib import Path

import pytest

from observer.agent.checkpoint import CheckpointStore
from observer.agent.tail import Batch, Tailer
from observer.config import PodLogsConfig
from observer.testing import ContainerLog, PodLogTree


def kubelet_compress(rotated: Path) -> Path:
    """container_log_manager.go compressLog: gzip to <name>.tmp, rename to <name>.gz, delete <name>."""
    temporary = rotated.with_name(rotated.name + ".tmp")
    with rotated.open("rb") as source, gzip.open(temporary, "wb") as target:
        shutil.copyfileobj(source, target)
    compressed = rotated.with_name(rotated.name + ".gz")
    os.rename(temporary, compressed)
    rotated.unlink()
    return compressed


class Agent:
    """A Tailer with its checkpoint store, restarted by making a new one on the same state."""

    def __init__(self, tmp_path: Path, **settings: object) -> None:
        self.store = CheckpointStore(tmp_path / "state")
        self.store.load()
        self.queue: asyncio.Queue[Batch] = asyncio.Queue()
        config = PodLogsConfig.model_validate({"root": str(tmp_path / "pods"), **settings})
        self.tailer = Tailer(config, self.store, self.queue)
        self.messages: list[str] = []

    async def read_everything(self) -> None:
        """Scan, read every file to its end, deliver and settle, close finished files."""
        self.tailer.scan()
        while True:
            progressed = await self.tailer.read_all()
            await self.tailer.close_finished(once=True)
            while not self.queue.empty():
                batch = self.queue.get_nowait()
                self.messages += [document["message"] for document in batch.documents]
                self.store.settle(batch.handover)
            if not progressed:
                break
        for key in self.tailer.stale_checkpoints():
            self.store.forget(key)
        self.store.save()

    def stop(self) -> None:
        for tailed in list(self.tailer.files.values()):
            os.close(tailed.handle)
        self.tailer.files.clear()
        self.store.save()

    @property
    def lost(self) -> int:
        return self.tailer.counts.bytes_lost_to_rotation


def rotate_twice_while_down(web: ContainerLog) -> Path:
    """The kubelet rotates 0.log, later rotates again and compresses the first rotation."""
    first = web.rotate(compress_older=False)
    web.write(["after the first rotation"])
    web.rotate(compress_older=False)
    return kubelet_compress(first)


async def test_unread_tail_of_a_compressed_file_is_counted(
    tmp_path: Path, tree: PodLogTree, caplog: pytest.LogCaptureFixture
) -> None:
    """A file read to a checkpoint, then rotated and compressed while the agent was down: the rest is lost."""
    web = tree.container("shop", "web-1", "app")
    web.write(["read 1", "read 2"])
    agent = Agent(tmp_path)
    await agent.read_everything()
    read_up_to = web.path.stat().st_size
    agent.stop()

    web.write([f"never read {i}" for i in range(100)])
    unread = web.path.stat().st_size - read_up_to
    compressed = rotate_twice_while_down(web)

    restarted = Agent(tmp_path)
    with caplog.at_level(logging.WARNING, logger="observer.agent.tail"):
        await restarted.read_everything()
    assert restarted.lost == unread
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.__dict__["path"] == str(compressed)
    assert warning.__dict__["bytes_lost"] == unread
    # The rest of the container's files are read as usual.
    assert restarted.messages == ["after the first rotation"]


async def test_a_compressed_file_is_counted_once_across_scans_and_restarts(
    tmp_path: Path, tree: PodLogTree
) -> None:
    """Rescans and a restart do not count the same .gz again."""
    web = tree.container("shop", "web-1", "app")
    web.write(["read"])
    agent = Agent(tmp_path)
    await agent.read_everything()
    agent.stop()
    web.write(["lost"])
    rotate_twice_while_down(web)

    restarted = Agent(tmp_path)
    await restarted.read_everything()
    await restarted.read_everything()
    lost = restarted.lost
    assert lost > 0
    restarted.stop()

    again = Agent(tmp_path)
    await again.read_everything()
    assert again.lost == 0


async def test_a_file_created_and_compressed_between_scans_is_counted_whole(
    tmp_path: Path, tree: PodLogTree
) -> None:
    """A .gz whose source was never opened counts all of its uncompressed bytes."""
    tree.container("shop", "web-1", "app").write(["known"])
    agent = Agent(tmp_path)
    await agent.read_everything()

    fast = tree.container("shop", "batch-7", "job")
    fast.write([f"burst {i}" for i in range(500)])
    size = fast.path.stat().st_size
    rotate_twice_while_down(fast)
    await agent.read_everything()

    assert agent.lost == size
    assert agent.messages == ["known", "after the first rotation"]


async def test_first_install_does_not_count_old_compressed_files(
    tmp_path: Path, tree: PodLogTree
) -> None:
    """With no state at all, .gz files already on disk are history, not loss, now and later."""
    web = tree.container("shop", "web-1", "app")
    web.write(["old"])
    rotate_twice_while_down(web)

    agent = Agent(tmp_path)
    await agent.read_everything()
    assert agent.lost == 0
    agent.stop()

    restarted = Agent(tmp_path)
    await restarted.read_everything()
    assert restarted.lost == 0


async def test_rotation_that_outran_an_open_file_loses_nothing(
    tmp_path: Path, tree: PodLogTree
) -> None:
    """A file held open is read to its end through its descriptor after compression deleted it."""
    web = tree.container("shop", "web-1", "app")
    web.write(["first"])
    agent = Agent(tmp_path)
    await agent.read_everything()

    web.write([f"line {i}" for i in range(2000)])
    rotate_twice_while_down(web)  # while the agent holds the first file open, unread
    agent.tailer.scan()  # sees the .gz before reading on: must not judge it yet
    await agent.read_everything()
    await agent.read_everything()

    assert agent.lost == 0
    assert agent.messages == [
        "first",
        *(f"line {i}" for i in range(2000)),
        "after the first rotation",
    ]


async def test_compressed_files_of_excluded_containers_are_not_counted(
    tmp_path: Path, tree: PodLogTree
) -> None:
    """A .gz of a container the agent does not collect is none of its business."""
    tree.container("shop", "web-1", "app").write(["known"])
    agent = Agent(tmp_path, exclude={"containers": ["istio-*"]})
    await agent.read_everything()

    proxy = tree.container("shop", "web-1", "istio-proxy")
    proxy.write(["not collected"])
    rotate_twice_while_down(proxy)
    await agent.read_everything()

    assert agent.lost == 0


async def test_checkpoint_of_a_compressed_file_is_pruned_after_accounting(
    tmp_path: Path, tree: PodLogTree
) -> None:
    """Once its .gz is accounted for, a source's checkpoint goes; the .gz's own goes with the .gz."""
    web = tree.container("shop", "web-1", "app")
    web.write(["read"])
    agent = Agent(tmp_path)
    await agent.read_everything()
    source_keys = set(agent.store.checkpoints)
    web.write(["more"])
    compressed = rotate_twice_while_down(web)
    await agent.read_everything()  # the first file, open, is read to its end and closed
    await agent.read_everything()  # the next scan accounts for its .gz

    assert agent.lost == 0
    assert not source_keys & set(agent.store.checkpoints)
    assert [c.path for k, c in agent.store.checkpoints.items() if k.startswith("gz:")] == [
        str(compressed)
    ]
    compressed.unlink()  # the kubelet removes excess rotations
    await agent.read_everything()
    assert not [k for k in agent.store.checkpoints if k.startswith("gz:")]
