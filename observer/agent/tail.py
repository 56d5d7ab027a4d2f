"""Tailing the container log files of one node: discover, read, follow rotations.

Files live at ``<root>/<namespace>_<pod>_<uid>/<container>/<restart>.log``. The kubelet
rotates by renaming ``0.log`` to ``0.log.<timestamp>``, telling the runtime to reopen, and
later gzipping the older rotated files; a restarted container writes ``1.log`` beside
``0.log``. Some setups use copytruncate instead.

How nothing is lost:

- A file is identified by a fingerprint of device, inode and its first line, so a reused
  inode is a new file and a renamed file is the same file.
- An open descriptor keeps reading a renamed or deleted file to its end before it is
  closed (the runtime may still append briefly after a rename), so rotation never cuts a
  file short, and a deleted file's disk space is freed once it is drained.
- Every file without a checkpoint is read from its start, under a rotated name too: a
  finished file keeps its checkpoint for as long as it is on disk, so a rotated file
  without one is one the agent has never read (created and rotated while it was down, or
  between two scans). Compressed rotations (.gz) are not read.
- Reading stops when the queue to the sinks is full: the files are the buffer.

How lines stay in order: a container's files are read oldest first, one at a time, the
age of a file being the runtime's timestamp on its first line. Names would mislead: a
file may be renamed and deleted between two scans, and is then known only by its old name.

When something is lost anyway, it is counted: a ``.gz`` whose uncompressed source was not
read to its end before it was compressed and deleted (the agent was down, or the file was
created and rotated twice between scans). The kubelet writes ``<name>.tmp``, renames it to
``<name>.gz`` and only then deletes ``<name>`` (container_log_manager.go, compressLog), so
a ``.gz`` seen is complete and its trailer holds the source's size (ISIZE, RFC 1952, modulo
2^32). Its first line names the source's checkpoint (the same checksum as the file's
fingerprint, in the same directory): the bytes past the checkpoint are lost; with no
checkpoint, all of them, unless the agent is starting with no state at all (a first
install does not count the node's history as lost). Each ``.gz`` accounted for gets a
checkpoint of its own (key ``gz:<device>:<inode>:<crc>``) so a restart does not count it
again; it is pruned with the file.

Stack traces are joined by each file's decoder; a trace still open when its stream goes
quiet is emitted after ``multiline.max_wait``, checked when a read finds no new data and
after each read, and at once when the file is finished (closed, or at its end with
``--once``). Until then the checkpoint stays at the trace's first line.

Discovery is a scan of the tree (symlinks are never followed), woken by inotify through
watchdog and repeated on a timer in case an event was missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import math
import os
import re
import stat
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import orjson

from observer.agent.checkpoint import CheckpointStore, Handover
from observer.agent.decode import DecodeCounts, Decoder, Document, Origin
from observer.agent.log_metrics import LogRecordCounts
from observer.agent.multiline import Joiner, rules_for
from observer.config import PodLogFilter, PodLogsConfig
from observer.kube.annotations import CollectionHints
from observer.kube.workload import workload_of

log = logging.getLogger(__name__)

FINGERPRINT_BYTES = 1024
"""The first line, up to this many bytes, identifies a file together with device and inode."""
_LONGEST_STEP = 0.002
"""Seconds of reading after which a pass over the files lets the event loop's other work
(shipping, receiving spans, answering probes and scrapes) run before going on."""


@dataclass(slots=True)
class Batch:
    """Documents read from one file; once every sink has them, `handover` is settled."""

    documents: list[Document]
    handover: Handover


class PodMetadata(Protocol):
    """Where each file's pod metadata comes from (`observer.kube.metadata.PodMetadataCache`).

    Asked when a file is opened and when `version` has changed since, never per line.
    """

    version: int

    def fields(
        self, uid: str, container: str, restart_count: int
    ) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The ``kubernetes`` and ``container`` parts of the file's documents; None: unknown."""
        ...

    def collection(self, uid: str, container: str) -> CollectionHints:
        """What the pod's ``observer.dev/*`` annotations ask for this container's logs."""
        ...


@dataclass(slots=True)
class TailCounts:
    files_opened: int = 0
    files_closed: int = 0
    truncations: int = 0
    bytes_read: int = 0
    bytes_lost_to_rotation: int = 0
    """Bytes of rotated files compressed and deleted before they were read (see above)."""
    records_without_metadata: int = 0
    """Documents made while their pod was unknown to the metadata cache (when there is one)."""
    decode: DecodeCounts = field(default_factory=DecodeCounts)


@dataclass(eq=False, slots=True)
class TailedFile:
    key: str
    path: Path
    origin: Origin
    handle: int
    device_inode: tuple[int, int]
    offset: int
    """The next byte to read; lines before it are decoded or in the decoder's partials."""
    decoder: Decoder
    idle_polls: int = 0
    metadata_version: int = -1
    """The metadata cache's version when this file's metadata was last looked up."""
    enriched: bool = False
    """Its documents carry the pod's metadata (kept once found, also after the pod is gone)."""
    opened: int = 0
    """Its place among the files opened in this run."""
    first_written: float = math.inf
    """When its first line was written, by the runtime's timestamp: the files of a container
    are read in that order, whatever names the scans last saw them under."""
    workload: str = ""
    """Its pod's workload (`workload_of`), once the metadata cache has told."""
    size: int = 0
    """Its size when last seen (at a scan, or when reading reached its end)."""
    caught_up_at: float = 0.0
    """Wall-clock time when reading last reached its end: what is still unread was
    written after that."""

    container_directory: str = ""
    """The path's directory (renames stay in it): a container's files are read in order."""

    def __post_init__(self) -> None:
        self.container_directory = os.path.dirname(self.path)


def fingerprint(head: bytes, device_inode: tuple[int, int]) -> str | None:
    """Device, inode and a checksum of the first line, given the file's first
    FINGERPRINT_BYTES; None until a first line exists."""
    checksum = _first_line_checksum(head)
    if checksum is None:
        return None
    return f"{device_inode[0]}:{device_inode[1]}:{checksum}"


def _first_line_checksum(head: bytes) -> str | None:
    """crc32 of the first line (at most FINGERPRINT_BYTES of it), given the file's head."""
    head = head[:FINGERPRINT_BYTES]
    newline = head.find(b"\n")
    if newline < 0 and len(head) < FINGERPRINT_BYTES:
        return None
    first = head if newline < 0 else head[:newline]
    return f"{zlib.crc32(first):08x}"


def gzip_head_and_size(handle: int, size: int) -> tuple[bytes, int]:
    """The first FINGERPRINT_BYTES of a gzip file's content, and the content's size
    modulo 2^32 (ISIZE, the last four bytes: RFC 1952, section 2.3.1)."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    head = b""
    position = 0
    while len(head) < FINGERPRINT_BYTES and position < size and not inflater.eof:
        chunk = os.pread(handle, 16384, position)
        if not chunk:
            break
        position += len(chunk)
        head += inflater.decompress(chunk, FINGERPRINT_BYTES - len(head))
    trailer = os.pread(handle, 4, size - 4) if size >= 4 else b""
    return head, int.from_bytes(trailer, "little")


def multiline_joiner(settings: PodLogsConfig, origin: Origin) -> Joiner | None:
    """The multiline settings of one file: the first override that matches it, else the defaults."""
    multiline = settings.multiline
    enabled, languages = multiline.enabled, multiline.languages
    for override in multiline.overrides:
        if selected(origin, override, _NOTHING):
            enabled = enabled if override.enabled is None else override.enabled
            languages = languages if override.languages is None else override.languages
            break
    if not enabled or not languages:
        return None
    return Joiner(
        rules_for(frozenset(languages)),
        multiline.max_lines,
        settings.max_line_bytes,
        multiline.max_wait,
    )


def selected(origin: Origin, include: PodLogFilter, exclude: PodLogFilter) -> bool:
    def matches(rule: PodLogFilter, everything_when_empty: bool) -> bool:
        checks = (
            (rule.namespaces, origin.namespace),
            (rule.pods, origin.pod),
            (rule.containers, origin.container),
        )
        relevant = [(patterns, value) for patterns, value in checks if patterns]
        if not relevant:
            return everything_when_empty
        return all(
            any(fnmatch.fnmatchcase(value, p) for p in patterns) for patterns, value in relevant
        )

    return matches(include, True) and not matches(exclude, False)


_NOTHING = PodLogFilter()


class Tailer:
    """Reads every selected file of the tree into batches on `queue`, in order per file."""

    def __init__(
        self,
        settings: PodLogsConfig,
        checkpoints: CheckpointStore,
        queue: asyncio.Queue[Batch],
        clock: Callable[[], float] = time.monotonic,
        metadata: PodMetadata | None = None,
    ) -> None:
        self.settings = settings
        self.metadata = metadata
        self.root = settings.root
        self.checkpoints = checkpoints
        self.queue = queue
        self.clock = clock
        self.counts = TailCounts()
        self.record_counts = LogRecordCounts()
        self.files: dict[tuple[int, int], TailedFile] = {}
        self._ignored: set[tuple[int, int, int, int]] = set()
        """`_unchanged` of rotated files read to their end and closed."""
        self._compressed: set[tuple[int, int]] = set()
        """(device, inode) of .gz files already accounted for, so scans skip them."""
        self._without_first_line: dict[tuple[int, int], tuple[Path, int]] = {}
        """Files seen with no complete first line yet: (device, inode) → (path, size)."""
        self._first_install = not checkpoints.checkpoints
        """No state at all at start: compressed files on disk are history, not loss."""
        self._once = False
        self._wake = asyncio.Event()
        self._backlog = False
        self._rescan = False

    def wake(self) -> None:
        """Files were created, renamed or deleted (an inotify event): scan and read now."""
        self._rescan = True
        self._wake.set()

    async def run(self, once: bool = False) -> None:
        """Follow the tree until cancelled; with `once`, return when every file is at its end."""
        loop = asyncio.get_running_loop()
        next_scan = 0.0
        self._once = once
        try:
            while True:
                self._wake.clear()
                if loop.time() >= next_scan or self._rescan:
                    self._rescan = False
                    self.scan()
                    next_scan = loop.time() + self.settings.rescan_interval
                else:
                    self._open_files_given_a_first_line()
                progressed = await self.read_all()
                await self.close_finished(once)
                if once and not progressed:
                    return
                if not once and not self._backlog:
                    # Growing files are read once per poll_interval, not at each write: a
                    # pass costs a few system calls per open file, whatever it finds, and
                    # lines read together are decoded and shipped together. What was left
                    # unread (a full read, a newer file waiting for its older one) is read
                    # at once.
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
                    # cancellation that races with the event being set (CPython gh-86296).
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.settings.poll_interval):
                            await self._wake.wait()
        finally:
            for tailed in list(self.files.values()):
                self._close(tailed)

    # --- discovery -----------------------------------------------------------------------

    def _candidates(self) -> Iterator[tuple[Path, os.stat_result]]:
        """Regular files three levels down, never through a symlink."""
        for pod in _scandir(self.root):
            if not pod.is_dir(follow_symlinks=False):
                continue
            for container in _scandir(Path(pod.path)):
                if not container.is_dir(follow_symlinks=False):
                    continue
                for entry in _scandir(Path(container.path)):
                    if ".log" not in entry.name:
                        continue
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if stat.S_ISREG(info.st_mode):
                        yield Path(entry.path), info

    def scan(self) -> None:
        present = set()
        compressed = []
        self._without_first_line.clear()  # each is considered again below
        for path, info in self._candidates():
            present.add(_unchanged(info))
            if path.name.endswith(".gz"):
                compressed.append((path, info))
            else:
                self._consider(path, info)
        self._ignored &= present  # forget files that are gone, so the set stays small
        # After every file was considered: a source still on disk is open by now.
        self._account_compressed(compressed)
        self._first_install = False

    def _consider(self, path: Path, info: os.stat_result) -> None:
        device_inode = (info.st_dev, info.st_ino)
        tailed = self.files.get(device_inode)
        if tailed is not None:
            tailed.size = info.st_size
            if tailed.path != path:
                # Renamed by rotation: same file, new name, which the checkpoint follows so
                # that it is pruned (or its .gz accounted for) under the name it ends with.
                tailed.path = path
                self.checkpoints.track(tailed.key, str(path), tailed.offset)
            return
        if _unchanged(info) in self._ignored:
            return
        origin = Origin.from_path(self.root, path)
        if origin is None or not selected(origin, self.settings.include, self.settings.exclude):
            return
        self._open(path, info, origin)

    def _open(self, path: Path, info: os.stat_result, origin: Origin) -> None:
        device_inode = (info.st_dev, info.st_ino)
        try:
            handle = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return  # gone between the scan and the open; a later scan will see the truth
        head = os.pread(handle, FINGERPRINT_BYTES, 0)
        key = fingerprint(head, device_inode)
        if key is None:
            os.close(handle)
            self._without_first_line[device_inode] = (path, info.st_size)
            return
        self._without_first_line.pop(device_inode, None)
        offset, replay = self.checkpoints.resume_point(key) or (0, None)
        if offset > info.st_size:
            # Truncated while we were away (copytruncate): all of it is new.
            offset, replay = 0, None
        self.checkpoints.track(key, str(path), offset, replay)
        decoder = Decoder(
            origin,
            self.settings.max_line_bytes,
            self.counts.decode,
            multiline_joiner(self.settings, origin),
        )
        decoder.replay(replay)
        tailed = self.files[device_inode] = TailedFile(
            key,
            path,
            origin,
            handle,
            device_inode,
            offset,
            decoder,
            first_written=first_line_time(head),
            opened=self.counts.files_opened,
            size=info.st_size,
        )
        tailed.caught_up_at = self._unread_since(tailed)
        if self.metadata is not None:
            self._enrich(tailed, self.metadata)
        self.counts.files_opened += 1
        log.debug("Tailing a log file.", extra={"path": str(path), "offset": offset})

    def _open_files_given_a_first_line(self) -> None:
        """The runtime creates a container's file when the container starts, and its first
        line can come much later. Writes wake nothing (inotify is not asked for them), so
        such files are looked at on every pass, not only at the next rescan: a new
        container's first lines are often the ones that say why it failed."""
        for device_inode, (path, size) in list(self._without_first_line.items()):
            try:
                info = os.stat(path, follow_symlinks=False)
            except OSError:
                info = None
            if info is None or (info.st_dev, info.st_ino) != device_inode:
                del self._without_first_line[device_inode]  # gone or replaced: scans see it
            elif info.st_size != size:
                self._consider(path, info)

    # --- reading -------------------------------------------------------------------------

    async def read_all(self) -> bool:
        """One pass over every file, oldest first per container; True if anything was read.

        Afterwards `_backlog` says whether a file was left with lines still unread.
        """
        progressed = False
        self._backlog = False
        # Containers whose older file still had lines, and whether they were new ones.
        draining: dict[str, bool] = {}
        loop = asyncio.get_running_loop()
        step_began = loop.time()
        for tailed in sorted(self.files.values(), key=_reading_order):
            # A container's older file is read to its end before its newer ones.
            older_read = draining.get(tailed.container_directory)
            if older_read is not None:
                # Not polled, so not known to be at its end: it must not be closed as idle
                # (a deleted file with unread lines would lose them).
                tailed.idle_polls = 0
                self._backlog |= older_read
                continue
            if self._rescan:
                # A file was created or renamed: open it now, not after this pass, which can
                # be long while the queue is full; a rotated file compressed before it is
                # open would be lost.
                self._rescan = False
                self.scan()
            read = await self._read(tailed)
            progressed |= read
            if read and loop.time() - step_began > _LONGEST_STEP:
                await asyncio.sleep(0)
                step_began = loop.time()
            # A stack trace still held counts as unread: it goes before the newer file's lines.
            if read or tailed.decoder.joining:
                draining[tailed.container_directory] = read
        return progressed

    async def _read(self, tailed: TailedFile) -> bool:
        metadata = self.metadata
        if metadata is not None and tailed.metadata_version != metadata.version:
            self._enrich(tailed, metadata)
        data, advance = self._whole_lines(tailed)
        if not advance:
            tailed.idle_polls += 1
            if tailed.decoder.joining:
                # A stack trace still open: emit it once its stream is quiet (at once with
                # --once, where this is the end of the file).
                return await self._flush(tailed, None if self._once else self.clock())
            return False
        tailed.idle_polls = 0
        start = tailed.offset
        documents = tailed.decoder.decode(data, start, self.clock())
        tailed.offset = start + advance
        self.counts.bytes_read += advance
        await self._hand_over(tailed, documents)
        return True

    async def _flush(self, tailed: TailedFile, now: float | None) -> bool:
        """Hand over the stack traces the decoder still holds (every one when `now` is None)."""
        documents = tailed.decoder.flush(now)
        if documents:
            await self._hand_over(tailed, documents)
        return bool(documents)

    def _enrich(self, tailed: TailedFile, metadata: PodMetadata) -> None:
        """Give the file's decoder its pod's metadata, once per file and per cache change.

        A pod the cache does not know (yet, or the API server is unreachable) leaves the
        path's fields, marked; a file that had metadata keeps it when the pod is forgotten.
        """
        tailed.metadata_version = metadata.version
        origin = tailed.origin
        found = metadata.fields(origin.uid, origin.container, origin.restart_count)
        if found is not None:
            tailed.decoder.set_metadata(*found)
            tailed.workload = workload_of(found[0])
            tailed.decoder.steer(
                metadata.collection(origin.uid, origin.container), self.settings.multiline
            )
            tailed.enriched = True
        elif not tailed.enriched:
            tailed.decoder.set_metadata(None, None)

    async def _hand_over(self, tailed: TailedFile, documents: list[Document]) -> None:
        if self.metadata is not None and not tailed.enriched:
            self.counts.records_without_metadata += len(documents)
        self.record_counts.count(tailed.origin.namespace, tailed.workload, documents)
        handover = self.checkpoints.hand_over(
            tailed.key, *tailed.decoder.resume_point(tailed.offset)
        )
        await self.queue.put(Batch(documents, handover))

    def _whole_lines(self, tailed: TailedFile) -> tuple[bytes, int]:
        """The complete lines after the offset, and how many bytes of the file they span.

        A line still being written waits for its newline. A line with no newline within
        max_line_bytes (plus room for the runtime's prefix) is cut there and handed on as
        a line of its own, so that one endless line cannot hold memory or stop the file.
        """
        size = self.settings.read_bytes
        limit = self.settings.max_line_bytes + 65536
        while True:
            data = os.pread(tailed.handle, size, tailed.offset)
            if len(data) < size:
                tailed.size = tailed.offset + len(data)
                tailed.caught_up_at = time.time()
            else:
                self._backlog = True
            end = data.rfind(b"\n") + 1
            if end:
                return data[:end], end
            if len(data) < size:
                return b"", 0
            if size >= limit:
                return data + b"\n", len(data)
            size = min(size * 2, limit)

    # --- how far behind ------------------------------------------------------------------

    def open_workloads(self) -> set[tuple[str, str]]:
        """(namespace, workload) of every open file."""
        return {(tailed.origin.namespace, tailed.workload) for tailed in self.files.values()}

    def checkpoint_lag(self, now: float) -> tuple[int, float]:
        """Bytes of the open files not yet acknowledged by every sink, and the age in
        seconds of the oldest of them at wall-clock time `now`.

        The age is that of the oldest batch read and not settled, or, for bytes not read
        yet, the time since reading last reached the file's end: an upper bound, exact
        when reading stopped (backpressure).
        """
        behind_total = 0
        oldest = now
        for tailed in self.files.values():
            behind = max(tailed.size, tailed.offset) - (self.checkpoints.offset(tailed.key) or 0)
            if behind <= 0:
                continue
            behind_total += behind
            read_at = self.checkpoints.oldest_pending(tailed.key)
            if read_at is not None:
                oldest = min(oldest, read_at)
            if tailed.size > tailed.offset:
                oldest = min(oldest, tailed.caught_up_at)
        return behind_total, max(now - oldest, 0.0)

    def _unread_since(self, tailed: TailedFile) -> float:
        """For a file just opened: since when its unread part has been waiting, at most."""
        now = time.time()
        if tailed.offset >= tailed.size:
            return now
        if tailed.offset == 0:
            return min(tailed.first_written, now)
        return min(self.checkpoints.checkpoints[tailed.key].updated, now)

    # --- closing -------------------------------------------------------------------------

    async def close_finished(self, once: bool) -> None:
        """Close files that are drained and will not grow: deleted, or rotated away."""
        for tailed in list(self.files.values()):
            if tailed.idle_polls == 0:
                continue
            info = os.fstat(tailed.handle)
            if info.st_size < tailed.offset:
                await self._flush(tailed, None)
                self._truncated(tailed, info)
                continue
            # The runtime may append to a renamed file until it reopens: wait one more poll.
            settled = once or tailed.idle_polls > 1
            if settled and (info.st_nlink == 0 or self._rotated_away(tailed)):
                # No line will come to end a stack trace; emitted first, so that what the
                # resume offset holds back below is only a partial line.
                await self._flush(tailed, None)
                if (
                    not once
                    and info.st_nlink
                    and tailed.decoder.resume_offset(tailed.offset) < tailed.offset
                ):
                    # A partial line's last part may still come: the runtime writes to the
                    # renamed file until it reopens. Reopened after it grew, the file would
                    # be read again from the partial, repeating the lines that followed it.
                    continue
                self._close(tailed)
                # Finished: its checkpoint remembers that across restarts, this set
                # spares reopening it at every scan until it is compressed away.
                self._ignored.add(_unchanged(info))

    def _rotated_away(self, tailed: TailedFile) -> bool:
        if not tailed.path.name.endswith(".log"):
            return True
        try:
            info = os.lstat(tailed.path)
        except FileNotFoundError:
            return True
        return (info.st_dev, info.st_ino) != tailed.device_inode

    def _truncated(self, tailed: TailedFile, info: os.stat_result) -> None:
        """copytruncate: the file restarted at zero; it is a new file in the same inode."""
        self.counts.truncations += 1
        log.info(
            "A log file was truncated; reading it again from the start.",
            extra={"path": str(tailed.path), "previous_offset": tailed.offset},
        )
        self._close(tailed)
        self._open(tailed.path, info, tailed.origin)

    def stale_checkpoints(self) -> list[str]:
        """Checkpoints of files that are closed, settled, and no longer on disk.

        A file known by its live name (`0.log`) and renamed since (`0.log.<time>`), not yet
        opened under its new name, keeps its checkpoint, or it would be read again from its
        start; the kubelet keeps a few rotations only, so these stay few. A file
        compressed into `.gz` keeps it too until a scan has accounted for the .gz (which
        then forgets it): it tells how much was read.
        """
        open_keys = {tailed.key for tailed in self.files.values()}
        listings: dict[str, list[str]] = {}

        def on_disk(path: str) -> bool:
            if os.path.lexists(path) or os.path.lexists(path + ".gz"):
                return True
            if not path.endswith(".log"):
                return False  # a rotated name is final; only compression renames it again
            directory, name = os.path.split(path)
            if directory not in listings:
                try:
                    listings[directory] = os.listdir(directory)
                except OSError:
                    listings[directory] = []
            return any(entry.startswith(name + ".") for entry in listings[directory])

        return [
            key
            for key, checkpoint in self.checkpoints.checkpoints.items()
            if key not in open_keys
            and not self.checkpoints.has_pending(key)
            and not on_disk(checkpoint.path)
        ]

    # --- compressed rotations: what was lost -----------------------------------------------

    def _account_compressed(self, compressed: list[tuple[Path, os.stat_result]]) -> None:
        """Count the bytes of each new .gz that were never read (see the module docstring)."""
        self._compressed &= {(info.st_dev, info.st_ino) for _, info in compressed}
        sources: dict[tuple[str, str], str] | None = None
        open_keys = {tailed.key for tailed in self.files.values()}
        for path, info in compressed:
            device_inode = (info.st_dev, info.st_ino)
            if device_inode in self._compressed:
                continue
            source = path.with_name(path.name.removesuffix(".gz"))
            origin = Origin.from_path(self.root, source)
            if origin is None or not selected(origin, self.settings.include, self.settings.exclude):
                self._compressed.add(device_inode)  # not a log this agent reads
                continue
            try:
                handle = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                key = f"gz:{device_inode[0]}:{device_inode[1]}:{zlib.crc32(os.pread(handle, FINGERPRINT_BYTES, 0)):08x}"
                if key in self.checkpoints.checkpoints:  # accounted for before a restart
                    self._compressed.add(device_inode)
                    continue
                head, size = gzip_head_and_size(handle, info.st_size)
            except (OSError, zlib.error):
                head, size = b"", 0
            finally:
                os.close(handle)
            if sources is None:
                sources = self._checkpoints_by_first_line()
            checksum = _first_line_checksum(head)
            if checksum is None:
                # Not a whole first line: still being written by something other than the
                # kubelet (which renames a finished .tmp), or damaged. Judged at a later scan.
                continue
            read = sources.get((str(path.parent), checksum))
            if read is not None:
                if read in open_keys or self.checkpoints.has_pending(read):
                    continue  # still being read through its descriptor: judge once closed
                if os.path.lexists(source):
                    continue  # the kubelet deletes the source just after; judge then
                offset = self.checkpoints.offset(read) or 0
                lost, why = max(0, size - offset), "compressed before it was read to its end"
                self.checkpoints.forget(read)
            elif self._first_install:
                lost, why = 0, ""
            else:
                lost, why = size, "created, rotated and compressed without being read"
            self.checkpoints.track(key, str(path), info.st_size)
            self._compressed.add(device_inode)
            if lost:
                self._lost_to_rotation(path, lost, why)

    def _checkpoints_by_first_line(self) -> dict[tuple[str, str], str]:
        """Checkpoint keys of log files by (directory, first-line checksum)."""
        found = {}
        for key, checkpoint in self.checkpoints.checkpoints.items():
            if key.startswith("gz:"):
                continue
            directory, _, _ = checkpoint.path.rpartition("/")
            found[(directory, key.rpartition(":")[2])] = key
        return found

    def _lost_to_rotation(self, path: Path, lost: int, why: str) -> None:
        self.counts.bytes_lost_to_rotation += lost
        log.warning(
            "Log lines were lost: a rotated file was compressed before it was read.",
            extra={"path": str(path), "bytes_lost": lost, "reason": why},
        )

    def _close(self, tailed: TailedFile) -> None:
        os.close(tailed.handle)
        del self.files[tailed.device_inode]
        self.counts.files_closed += 1


def _unchanged(info: os.stat_result) -> tuple[int, int, int, int]:
    """Device, inode, size and modification time: a finished file that has not changed.

    Not the inode and size alone: a compressed rotation frees its inode, which the next
    file of the same size (the kubelet rotates at a size) may reuse, and would be skipped.
    """
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def _reading_order(tailed: TailedFile) -> tuple[str, int, float, int]:
    # Names are no guide: a scan may not have seen a file renamed before it was deleted, or
    # may see the rotated file and the new live file in the same pass. The runtime's
    # timestamps are: a newer file's first line was written after the older file's.
    return (
        tailed.container_directory,
        tailed.origin.restart_count,
        tailed.first_written,
        tailed.opened,
    )


_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)")


def first_line_time(head: bytes) -> float:
    """When the first line of a file was written, in nanoseconds since the epoch, from its
    CRI or docker json-file time (RFC 3339 with up to nine fraction digits, trailing zeros
    trimmed, as Go's RFC3339Nano writes it); infinity when it cannot be read (such a file is
    taken as the newest of its container)."""
    first = head.partition(b"\n")[0]
    try:
        if first.startswith(b"{"):
            stamp = str(orjson.loads(first)["time"])
        else:
            stamp = first.partition(b" ")[0].decode("ascii")
    except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        return math.inf
    parsed = _RFC3339.fullmatch(stamp)
    if parsed is None:
        return math.inf
    seconds, fraction, zone = parsed.groups()
    when = datetime.fromisoformat(seconds + ("+00:00" if zone == "Z" else zone))
    return int(when.timestamp()) * 1_000_000_000 + int((fraction or "").ljust(9, "0"))


def _scandir(path: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as entries:
            return list(entries)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []
