"""Helpers for testing observer, and for users testing their own configurations.

`PodLogTree` writes a node's /var/log/pods tree the way the kubelet and a CRI runtime
do: CRI lines (split into 16 KiB partials like containerd), kubelet-style rotation
(rename, reopen, gzip the older rotated files), copytruncate, and container restarts.
"""

from __future__ import annotations

import gzip
import itertools
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

CRI_PARTIAL_BYTES = 16 * 1024
"""containerd splits a line into P parts of at most this many bytes (pkg/cri/io/logger.go)."""


class ContainerLog:
    """One container's log directory: ``<root>/<ns>_<pod>_<uid>/<container>/``."""

    def __init__(self, directory: Path, restart: int = 0) -> None:
        self.directory = directory
        self.restart = restart
        self._clock = itertools.count()
        self._rotations = 0
        directory.mkdir(parents=True, exist_ok=True)
        self._out = self.path.open("ab")

    @property
    def path(self) -> Path:
        return self.directory / f"{self.restart}.log"

    def _timestamp(self) -> str:
        nanos = next(self._clock)
        return f"2026-11-21T10:{nanos // 60_000_000_000 % 60:02d}:{nanos // 1_000_000_000 % 60:02d}.{nanos % 1_000_000_000:09d}Z"

    def write(self, lines: Iterable[str], stream: str = "stdout") -> None:
        """Write whole lines as a CRI runtime does, splitting long ones into P parts."""
        chunks = []
        for line in lines:
            body = line.encode()
            while len(body) > CRI_PARTIAL_BYTES:
                chunks.append(
                    f"{self._timestamp()} {stream} P ".encode() + body[:CRI_PARTIAL_BYTES] + b"\n"
                )
                body = body[CRI_PARTIAL_BYTES:]
            chunks.append(f"{self._timestamp()} {stream} F ".encode() + body + b"\n")
        self._out.write(b"".join(chunks))
        self._out.flush()

    def write_raw(self, data: bytes) -> None:
        self._out.write(data)
        self._out.flush()

    def rotate(self, compress_older: bool = True) -> Path:
        """The kubelet's rotation: rename N.log to N.log.<time>, reopen N.log, gzip older ones."""
        # The kubelet's suffix is the rotation time, YYYYMMDD-hhmmss; one second per rotation here.
        self._rotations += 1
        minutes, seconds = divmod(self._rotations, 60)
        hours, minutes = divmod(minutes, 60)
        rotated = self.path.with_name(
            f"{self.path.name}.20261121-{hours:02d}{minutes:02d}{seconds:02d}"
        )
        os.rename(self.path, rotated)
        self._out.close()
        self._out = self.path.open("ab")
        if compress_older:
            rotations = sorted(self.directory.glob(f"{self.restart}.log.*"))
            for older in rotations[:-1]:
                if older.suffix != ".gz":
                    with older.open("rb") as source, gzip.open(f"{older}.gz", "wb") as target:
                        shutil.copyfileobj(source, target)
                    older.unlink()
        return rotated

    def copytruncate(self) -> Path:
        """logrotate's copytruncate: copy the file aside, then truncate it in place."""
        copy = self.path.with_name(f"{self.path.name}.copy")
        shutil.copyfile(self.path, copy)
        os.truncate(self.path, 0)
        return copy

    def restart_container(self) -> None:
        """A restarted container writes the next N.log beside the old one."""
        self._out.close()
        self.restart += 1
        self._out = self.path.open("ab")

    def close(self) -> None:
        self._out.close()


class PodLogTree:
    """A /var/log/pods tree under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.containers: list[ContainerLog] = []

    def container(
        self, namespace: str, pod: str, container: str, uid: str | None = None
    ) -> ContainerLog:
        uid = uid or f"{pod}-uid"
        log = ContainerLog(self.root / f"{namespace}_{pod}_{uid}" / container)
        self.containers.append(log)
        return log

    def close(self) -> None:
        for log in self.containers:
            log.close()
