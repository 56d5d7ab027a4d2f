"""A file of JSON lines: each line the exact document that would be indexed.

For backfills, debugging a pipeline, and tests. A batch is acknowledged once it is
written to the kernel: that survives the agent being killed, which is what the
acknowledgement protects against; surviving a power loss would need an fsync per batch.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from observer.config import FileSinkConfig


class FileSink:
    name = "file"

    def __init__(self, settings: FileSinkConfig) -> None:
        self.path = settings.path
        self._out: Any = None
        self.documents_written = 0

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._out = self.path.open("ab")
        self._drop_torn_line()

    def _drop_torn_line(self) -> None:
        """A kill during a write leaves a document cut short at the end of the file. It was
        never acknowledged, so it will be written again; appending after it would glue the
        next document to it and make both unreadable."""
        size = self._out.seek(0, 2)
        if size == 0:
            return
        with self.path.open("rb") as existing:
            block = 1 << 16
            end = size
            while end > 0:
                start = max(0, end - block)
                existing.seek(start)
                chunk = existing.read(end - start)
                if end == size and chunk.endswith(b"\n"):
                    return
                newline = chunk.rfind(b"\n")
                if newline >= 0:
                    self._out.truncate(start + newline + 1)
                    return
                end = start
        self._out.truncate(0)

    async def submit(self, documents: list[dict[str, Any]], source: str) -> asyncio.Future[None]:
        """Append the batch and hand it to the kernel; that is the acknowledgement."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if documents:
            dumps = orjson.dumps
            self._out.write(b"".join([dumps(document) + b"\n" for document in documents]))
            self._out.flush()
            self.documents_written += len(documents)
        done.set_result(None)
        return done

    def ready(self) -> bool:
        return True

    async def stop(self) -> None:
        if self._out is not None:
            self._out.close()
