"""Small state files the agent keeps across restarts (checkpoints, the events' resume
point), each replaced whole and durably.

A write is: write a temporary file, fsync it, rename it over the old one, fsync the
directory; after a crash the file is the old one or the new one, never a mix. The fsyncs
wait for the disk, tens of milliseconds on a busy node, so the periodic saves wait in a
thread: the event loop meanwhile keeps reading, shipping and answering probes and scrapes.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    with temporary.open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    temporary.replace(path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class StateFile:
    """One state file, written off the event loop and in the order the writes were asked.

    A write finishes even when the task that asked for it is cancelled (a thread cannot be
    stopped half-way), and the next write waits for it: two writers never share the
    temporary file, and an older state never replaces a newer one.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._last: asyncio.Task[None] | None = None

    async def write(self, data: bytes) -> None:
        previous = self._last

        async def after_previous() -> None:
            if previous is not None:
                await asyncio.wait({previous})  # its failure was raised to its own caller
            await asyncio.to_thread(write_atomically, self.path, data)

        self._last = asyncio.create_task(after_previous(), name=f"write {self.path.name}")
        await asyncio.shield(self._last)
