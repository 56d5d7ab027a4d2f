"""The agent's log path on a real filesystem: tail, decode, rotate, checkpoint, file sink."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import orjson

from observer.agent import app
from observer.config import AgentConfig
from observer.testing import PodLogTree
from tests.integration.polling import until

Documents = list[dict]


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


def delivered(tmp_path: Path) -> Documents:
    out = tmp_path / "out.jsonl"
    return [orjson.loads(line) for line in out.read_bytes().splitlines()] if out.exists() else []


def messages(documents: Documents) -> list[str]:
    return [document["message"] for document in documents]


async def run_once(config: AgentConfig) -> None:
    await app.run(config, once=True)


@contextlib.asynccontextmanager
async def following(tmp_path: Path, **pod_logs: object) -> AsyncIterator[None]:
    """The agent following the tree (not --once) for the duration of the block."""
    stop = asyncio.Event()
    agent = asyncio.create_task(app.run(agent_config(tmp_path, **pod_logs), once=False, stop=stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(agent, 10)


async def test_second_run_resumes_from_the_checkpoint(tmp_path: Path, tree: PodLogTree) -> None:
    """Lines appended between two runs are delivered once; earlier lines are not re-sent."""
    web = tree.container("shop", "web-1", "app")
    web.write([f"line {i}" for i in range(100)])
    await run_once(agent_config(tmp_path))
    web.write([f"line {i}" for i in range(100, 150)])
    await run_once(agent_config(tmp_path))

    assert messages(delivered(tmp_path)) == [f"line {i}" for i in range(150)]


async def test_partial_line_at_the_end_of_a_run_is_completed_next_run(
    tmp_path: Path, tree: PodLogTree
) -> None:
    """A P part without its F when the agent stops is merged with its F after restart."""
    web = tree.container("shop", "web-1", "app")
    web.write(["before"])
    web.write_raw(b"2026-11-21T10:00:01Z stdout P first half, \n")
    await run_once(agent_config(tmp_path))
    assert messages(delivered(tmp_path)) == ["before"]

    web.write_raw(b"2026-11-21T10:00:02Z stdout F second half\n")
    await run_once(agent_config(tmp_path))
    assert messages(delivered(tmp_path)) == ["before", "first half, second half"]


async def test_rotation_while_following_loses_and_repeats_nothing(
    tmp_path: Path, tree: PodLogTree
) -> None:
    """Lines written across kubelet-style rotations (rename, reopen, gzip) arrive once each, in order."""
    web = tree.container("shop", "web-1", "app")
    written = []
    async with following(tmp_path, rescan_interval="50ms"):
        for round_number in range(8):
            batch = [f"r{round_number} line {i}" for i in range(500)]
            web.write(batch)
            written += batch
            await asyncio.sleep(0.03)
            web.rotate()
        web.write(["last"])
        written.append("last")
        await until(lambda: len(delivered(tmp_path)) >= len(written), within=20)

    assert messages(delivered(tmp_path)) == written


async def test_copytruncate_reads_the_file_again_from_its_start(
    tmp_path: Path, tree: PodLogTree
) -> None:
    """After copytruncate, lines written to the truncated file are delivered."""
    web = tree.container("shop", "web-1", "app")
    web.write(["one", "two"])
    await run_once(agent_config(tmp_path))
    web.copytruncate()
    web.write(["three"])
    await run_once(agent_config(tmp_path))

    assert messages(delivered(tmp_path)) == ["one", "two", "three"]


async def test_container_restart_is_read_with_its_restart_count(
    tmp_path: Path, tree: PodLogTree
) -> None:
    """A restarted container's 1.log is read beside 0.log and says restart_count 1."""
    web = tree.container("shop", "web-1", "app")
    web.write(["crash"])
    web.restart_container()
    web.write(["started again"])
    await run_once(agent_config(tmp_path))

    by_message = {d["message"]: d["container"]["restart_count"] for d in delivered(tmp_path)}
    assert by_message == {"crash": 0, "started again": 1}


async def test_rotated_file_unfinished_at_shutdown_is_finished_after_restart(
    tmp_path: Path, tree: PodLogTree
) -> None:
    """A file rotated while the agent was down is read from its checkpoint under its new name."""
    web = tree.container("shop", "web-1", "app")
    web.write(["a", "b"])
    await run_once(agent_config(tmp_path))
    web.write(["c"])
    web.rotate(compress_older=False)
    web.write(["d"])
    await run_once(agent_config(tmp_path))

    assert messages(delivered(tmp_path)) == ["a", "b", "c", "d"]


async def test_first_start_reads_rotated_files_not_yet_compressed(
    tmp_path: Path, tree: PodLogTree
) -> None:
    """An agent with no checkpoints reads the uncompressed rotated file before the live one."""
    web = tree.container("shop", "web-1", "app")
    web.write(["old-1", "old-2"])
    web.rotate()
    web.write(["new"])
    await run_once(agent_config(tmp_path))

    assert messages(delivered(tmp_path)) == ["old-1", "old-2", "new"]


async def test_deleted_file_is_drained_then_its_descriptor_closed(
    tmp_path: Path, tree: PodLogTree
) -> None:
    """A file deleted with unread lines is read to its end, then closed so the disk space is freed."""
    web = tree.container("shop", "web-1", "app")
    web.write(["first"])
    path = web.path

    def holds_deleted_file() -> bool:
        fds = Path("/proc/self/fd")
        return any(
            os.readlink(fd) == f"{path} (deleted)" for fd in fds.iterdir() if fd.is_symlink()
        )

    async with following(tmp_path):
        await until(lambda: len(delivered(tmp_path)) == 1, within=20)
        web.write([f"line {i}" for i in range(20000)])
        web.close()
        path.unlink()
        await until(
            lambda: len(delivered(tmp_path)) == 20001 and not holds_deleted_file(), within=20
        )

    assert messages(delivered(tmp_path)) == ["first"] + [f"line {i}" for i in range(20000)]


async def test_symlinks_are_never_followed(tmp_path: Path, tree: PodLogTree) -> None:
    """A symlinked pod directory or log file pointing outside the root is not read."""
    outside = tmp_path / "outside" / "c"
    outside.mkdir(parents=True)
    (outside / "0.log").write_bytes(b"2026-11-21T10:00:00Z stdout F secret\n")
    (tree.root / "ns_linked_u1").symlink_to(outside.parent)
    (tree.root / "ns_pod_u2" / "c").mkdir(parents=True)
    (tree.root / "ns_pod_u2" / "c" / "0.log").symlink_to(outside / "0.log")
    tree.container("ns", "real", "c").write(["public"])
    await run_once(agent_config(tmp_path))

    assert messages(delivered(tmp_path)) == ["public"]


async def test_include_and_exclude_globs(tmp_path: Path, tree: PodLogTree) -> None:
    """Only files matching include, and not exclude, are collected."""
    tree.container("shop", "web-1", "app").write(["shop app"])
    tree.container("shop", "web-1", "istio-proxy").write(["shop proxy"])
    tree.container("kube-system", "dns", "dns").write(["system"])
    config = agent_config(
        tmp_path, include={"namespaces": ["shop", "pay*"]}, exclude={"containers": ["istio-*"]}
    )
    await run_once(config)

    assert messages(delivered(tmp_path)) == ["shop app"]


async def test_corrupt_checkpoint_is_moved_aside_and_reading_restarts(
    tmp_path: Path, tree: PodLogTree
) -> None:
    """A corrupt checkpoint file is reported and set aside; the agent runs and re-reads."""
    tree.container("shop", "web-1", "app").write(["x"])
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "checkpoints.json").write_bytes(b'{"version": 1, "files": {"k": {"pa')
    await run_once(agent_config(tmp_path))

    assert messages(delivered(tmp_path)) == ["x"]
    assert [
        p.name.startswith("checkpoints.corrupt-") for p in (tmp_path / "state").iterdir()
    ].count(True) == 1
    assert orjson.loads((tmp_path / "state" / "checkpoints.json").read_bytes())["version"] == 1


async def test_many_containers_keep_per_stream_order(tmp_path: Path, tree: PodLogTree) -> None:
    """Each container's stdout and stderr lines arrive in the order they were written."""
    logs = [tree.container("ns", f"pod-{i}", "c") for i in range(5)]
    for log in logs:
        for n in range(200):
            log.write([f"out {n}"], stream="stdout")
            log.write([f"err {n}"], stream="stderr")
    await run_once(agent_config(tmp_path))

    per_stream = collections.defaultdict(list)
    for document in delivered(tmp_path):
        per_stream[(document["kubernetes"]["pod"]["name"], document["stream"])].append(
            document["message"]
        )
    assert len(per_stream) == 10
    for (_, stream), lines in per_stream.items():
        prefix = "out" if stream == "stdout" else "err"
        assert lines == [f"{prefix} {n}" for n in range(200)]


async def test_a_backlog_is_read_without_waiting_for_the_poll_interval(
    tmp_path: Path, tree: PodLogTree
) -> None:
    """Growing files are read once per poll interval, but lines a read left behind (a full
    read_bytes) are read at once: a 100 KB backlog in 4 KiB reads takes no 25 intervals."""
    web = tree.container("shop", "web-1", "app")
    web.write([f"backlog line {i:05d} " + "x" * 30 for i in range(2000)])

    async with following(tmp_path, poll_interval="30s", read_bytes="4KiB"):
        await until(lambda: len(delivered(tmp_path)) == 2000, within=10)

    assert messages(delivered(tmp_path))[-1].startswith("backlog line 01999")


async def test_a_new_log_file_is_read_at_once_without_waiting_for_a_poll_or_a_rescan(
    tmp_path: Path, tree: PodLogTree
) -> None:
    """inotify tells of created files: a new container's lines arrive well before either
    the poll interval or the rescan interval comes round."""
    tree.container("shop", "web-1", "app").write(["already there"])
    async with following(tmp_path, poll_interval="30s", rescan_interval="60s"):
        await until(lambda: len(delivered(tmp_path)) == 1, within=10)
        tree.container("shop", "web-2", "app").write(["new pod, first line"])
        await until(lambda: len(delivered(tmp_path)) == 2, within=10)

    assert messages(delivered(tmp_path)) == ["already there", "new pod, first line"]


async def test_a_file_created_empty_is_read_when_its_first_line_comes_not_at_the_next_rescan(
    tmp_path: Path, tree: PodLogTree
) -> None:
    """The runtime creates a container's log file when the container starts, empty; its
    first line (often the one saying why it failed) can come later. A file with no line
    has no fingerprint yet, and a write wakes no inotify event the agent asks for: the
    line must still arrive within a few poll intervals, not at the rescan a minute on."""
    tree.container("shop", "web-1", "app").write(["already there"])
    async with following(tmp_path, poll_interval="100ms", rescan_interval="60s"):
        await until(lambda: len(delivered(tmp_path)) == 1, within=10)
        starting = tree.container("shop", "web-2", "app")  # created empty, like the kubelet
        await asyncio.sleep(0.5)  # the created file is seen, with nothing to fingerprint
        starting.write(["first line, a while after the container started"])
        await until(lambda: len(delivered(tmp_path)) == 2, within=10)

    assert messages(delivered(tmp_path)) == [
        "already there",
        "first line, a while after the container started",
    ]
