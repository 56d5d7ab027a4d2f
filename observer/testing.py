"""Helpers for testing observer, and for users testing their own configurations.

`PodLogTree` writes a node's /var/log/pods tree the way the kubelet and a CRI runtime
do: CRI lines (split into 16 KiB partials like containerd), kubelet-style rotation
(rename, reopen, gzip the older rotated files), copytruncate, and container restarts.

`write_numbered_logs` fills a tree with uniquely numbered lines while rotating it, and
`written_lines` with `audit_delivery` check what a sink received against what is on disk:
every line delivered, where it was written (file and offset), in order per stream.
"""

from __future__ import annotations

import gzip
import itertools
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

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
        """The live file's name; after `rotate(reopen=False)` the runtime still writes elsewhere."""
        return self.directory / f"{self.restart}.log"

    @property
    def size(self) -> int:
        """Bytes in the file the runtime is writing to."""
        return self._out.tell()

    def _timestamp(self) -> str:
        nanos = next(self._clock)
        return f"2026-11-21T10:{nanos // 60_000_000_000 % 60:02d}:{nanos // 1_000_000_000 % 60:02d}.{nanos % 1_000_000_000:09d}Z"

    def cri_lines(self, line: str, stream: str = "stdout") -> list[bytes]:
        """The CRI lines a runtime writes for one log line: P parts, then the F part."""
        body = line.encode()
        chunks = []
        while len(body) > CRI_PARTIAL_BYTES:
            chunks.append(
                f"{self._timestamp()} {stream} P ".encode() + body[:CRI_PARTIAL_BYTES] + b"\n"
            )
            body = body[CRI_PARTIAL_BYTES:]
        chunks.append(f"{self._timestamp()} {stream} F ".encode() + body + b"\n")
        return chunks

    def write(self, lines: Iterable[str], stream: str = "stdout") -> None:
        """Write whole lines as a CRI runtime does, splitting long ones into P parts."""
        self.write_raw(b"".join(chunk for line in lines for chunk in self.cri_lines(line, stream)))

    def write_interleaved(self, stdout: str, stderr: str) -> None:
        """One line on each stream, their partial parts alternating as concurrent writers do."""
        parts = itertools.zip_longest(
            self.cri_lines(stdout, "stdout"), self.cri_lines(stderr, "stderr")
        )
        self.write_raw(b"".join(part for pair in parts for part in pair if part is not None))

    def write_raw(self, data: bytes) -> None:
        self._out.write(data)
        self._out.flush()

    def rotations(self) -> list[Path]:
        """The uncompressed rotated files of the current restart, oldest first."""
        return sorted(self.directory.glob(f"{self.restart}.log.*[0-9]"))

    def rotate(
        self, compress_older: bool = True, keep_uncompressed: int = 1, reopen: bool = True
    ) -> Path:
        """The kubelet's rotation: rename N.log to N.log.<time>, reopen N.log, gzip older ones.

        The kubelet leaves the newest rotation uncompressed (`keep_uncompressed`).
        With `reopen=False` the runtime has not reopened yet and keeps writing to the
        renamed file until `reopen()`.
        """
        # The kubelet's suffix is the rotation time, YYYYMMDD-hhmmss; one second per rotation here.
        self._rotations += 1
        minutes, seconds = divmod(self._rotations, 60)
        hours, minutes = divmod(minutes, 60)
        rotated = self.path.with_name(
            f"{self.path.name}.20261121-{hours:02d}{minutes:02d}{seconds:02d}"
        )
        os.rename(self.path, rotated)
        if reopen:
            self.reopen()
        if compress_older:
            rotations = self.rotations()
            for older in rotations[: max(len(rotations) - keep_uncompressed, 0)]:
                self.compress(older)
        return rotated

    def reopen(self) -> None:
        """The runtime reopens N.log (the kubelet's ReopenContainerLog after a rename)."""
        self._out.close()
        self._out = self.path.open("ab")

    @staticmethod
    def compress(rotated: Path) -> Path:
        """Gzip one rotated file as the kubelet does (container_log_manager.go compressLog):
        into `<name>.tmp`, renamed to `<name>.gz` once complete, then the original removed."""
        compressed = rotated.with_name(f"{rotated.name}.gz")
        temporary = rotated.with_name(f"{rotated.name}.tmp")
        with rotated.open("rb") as source, gzip.open(temporary, "wb") as target:
            shutil.copyfileobj(source, target)
        temporary.rename(compressed)
        rotated.unlink()
        return compressed

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


# --- numbered lines: write them, then check what was delivered ------------------------------


def write_numbered_logs(
    root: Path,
    containers: int,
    lines_per_container: int,
    *,
    rotate_bytes: int,
    keep_uncompressed: int | None = 1,
    lines_per_write: int = 100,
    lines_per_second: float | None = None,
) -> int:
    """Write uniquely numbered lines to `containers` pods in turn, rotating the kubelet's way.

    A container's file is rotated once it exceeds `rotate_bytes`; all but the newest
    `keep_uncompressed` rotations are gzipped (None: never). `lines_per_second` paces the
    whole writer. Returns how many lines were written. A module-level function, so that
    it can run in another process.
    """
    tree = PodLogTree(root)
    logs = [tree.container("load", f"writer-{n:02d}", "app") for n in range(containers)]
    started = time.monotonic()
    written = 0
    try:
        for first in range(0, lines_per_container, lines_per_write):
            numbers = range(first, min(first + lines_per_write, lines_per_container))
            for n, log in enumerate(logs):
                log.write([f"writer-{n:02d} line {i:07d} of the burst" for i in numbers])
                written += len(numbers)
                if log.size > rotate_bytes:
                    log.rotate(
                        compress_older=keep_uncompressed is not None,
                        keep_uncompressed=keep_uncompressed or 0,
                    )
            if lines_per_second:
                ahead = written / lines_per_second - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
    finally:
        tree.close()
    return written


@dataclass(frozen=True, slots=True)
class WrittenLine:
    """Where a line was written: what a correct document for it says."""

    path: str
    """The file's name now (without ``.gz``)."""
    live_path: str
    """``<dir>/<restart>.log``, the name the file had before it was rotated."""
    offset: int
    """Of the line's first part in the file."""
    stream: str
    position: int
    """The line's place among the lines of its file's container restart and stream."""


_KUBELET_LOG_NAME = re.compile(r"\d+\.log(\.\d{8}-\d{6}(\.gz)?)?")


def _write_order(path: Path) -> tuple[int, int, str]:
    """Within a container: by restart, rotations by their time suffix, then the live file."""
    restart, _, rotation = path.name.partition(".log")
    return (int(restart), int(rotation == ""), rotation.removesuffix(".gz"))


def written_lines(root: Path) -> dict[str, WrittenLine]:
    """Every line on disk under `root` (compressed rotations too), by message.

    Messages must be unique. Parsed independently of the agent's decoder: CRI only.
    """
    lines: dict[str, WrittenLine] = {}
    positions: Counter[tuple[Path, str, str]] = Counter()
    for directory in sorted(p for p in root.glob("*/*") if p.is_dir()):
        files = [p for p in directory.iterdir() if _KUBELET_LOG_NAME.fullmatch(p.name)]
        for path in sorted(files, key=_write_order):
            restart = path.name.partition(".")[0]
            live_path = str(directory / f"{restart}.log")
            data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
            name = str(path.with_name(path.name.removesuffix(".gz")))
            pending: dict[str, tuple[int, list[bytes]]] = {}
            offset = 0
            for raw in data.splitlines(keepends=True):
                start, offset = offset, offset + len(raw)
                _, stream, tag, body = raw.rstrip(b"\n").split(b" ", 3)
                first, parts = pending.pop(stream.decode(), (start, []))
                parts.append(body)
                if tag == b"P":
                    pending[stream.decode()] = (first, parts)
                    continue
                message = b"".join(parts).decode()
                key = (directory, restart, stream.decode())
                if message in lines:
                    raise ValueError(f"{message!r} was written twice: messages must be unique")
                lines[message] = WrittenLine(
                    name, live_path, first, stream.decode(), positions[key]
                )
                positions[key] += 1
    return lines


def read_file_sink(path: Path) -> Iterator[dict[str, Any]]:
    """The documents a file sink wrote, in order, one at a time (the file may be large)."""
    with path.open("rb") as documents:
        for line in documents:
            yield orjson.loads(line)


@dataclass
class DeliveryAudit:
    """What a sink received compared with what was written."""

    documents: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    duplicates: Counter[str] = field(default_factory=Counter)
    """Message → copies beyond the first."""
    misplaced: list[str] = field(default_factory=list)
    """Documents whose file path or offset is not where their line was written."""
    out_of_order: list[str] = field(default_factory=list)
    """Lines first delivered after a later line of the same file restart and stream."""

    def problems(self, duplicates_allowed: bool = False) -> list[str]:
        """One sentence per kind of problem, with a few examples; empty when all is well."""
        found = []
        kinds: Sequence[tuple[str, Sequence[str]]] = (
            ("missing", self.missing),
            ("not written", self.unexpected),
            ("delivered with a wrong path or offset", self.misplaced),
            ("out of order", self.out_of_order),
            ("duplicated", [] if duplicates_allowed else list(self.duplicates)),
        )
        for what, messages in kinds:
            if messages:
                found.append(f"{len(messages)} lines {what}, e.g. {list(messages)[:3]}")
        return found


def audit_delivery(
    documents: Iterable[dict[str, Any]], written: dict[str, WrittenLine]
) -> DeliveryAudit:
    """Check delivered documents against `written_lines`: each line, once, where it was, in order."""
    audit = DeliveryAudit(documents=0)
    seen: set[str] = set()
    last: dict[tuple[str, str], int] = {}
    for document in documents:
        audit.documents += 1
        message = document["message"]
        line = written.get(message)
        if line is None:
            audit.unexpected.append(message)
            continue
        path = document["log"]["file"]["path"]
        if document["log"]["offset"] != line.offset or path not in (line.path, line.live_path):
            audit.misplaced.append(message)
        if message in seen:
            audit.duplicates[message] += 1
            continue
        seen.add(message)
        # Only first deliveries are ordered: a replay after a crash repeats earlier lines.
        stream = (line.live_path, line.stream)
        if line.position < last.get(stream, -1):
            audit.out_of_order.append(message)
        last[stream] = line.position
    audit.missing = [message for message in written if message not in seen]
    return audit
