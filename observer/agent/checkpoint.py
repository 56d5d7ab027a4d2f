"""Checkpoints: how far each log file has been delivered, kept across restarts.

A file's checkpoint is the byte offset up to which every sink has acknowledged every line
(principle "acknowledge end to end"): the source file is the buffer, and a crash replays
from the checkpoint. Batches of one file can be acknowledged out of order (several bulk
requests in flight), so the checkpoint advances only over a prefix of settled batches.

A file's checkpoint is where reading resumes: the start of its oldest line not yet
delivered. When stdout and stderr interleave partial lines, or a stack trace is still being
joined, lines of the other stream after that point were delivered already; the checkpoint
then carries a `Replay`, which tells the decoder which of the lines read again to skip.

The state file is JSON, written atomically (write, fsync, rename, fsync the directory). A
corrupt file is moved aside and reported, and the agent starts from the files' beginnings
rather than crash-looping: replaying is safe because delivery is idempotent.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

from observer.agent.state_file import StateFile, write_atomically

log = logging.getLogger(__name__)

STATE_FILE = "checkpoints.json"
FORMAT_VERSION = 1


@dataclass(slots=True, frozen=True)
class Replay:
    """What reading again from a checkpoint must skip: everything before `until` was
    delivered except the lines of each stream in `streams` from that stream's offset on.
    A line of stream s at offset o is new iff o >= streams.get(s, until); lines that are
    no stream's (malformed ones) count as the stream ""."""

    until: int
    streams: dict[str, int]

    def to_json(self) -> dict[str, object]:
        return {"until": self.until, "streams": self.streams}

    @classmethod
    def from_json(cls, raw: object) -> Replay | None:
        if raw is None:
            return None
        if not isinstance(raw, dict):
            raise TypeError(f"replay: expected an object, got {raw!r}")
        return cls(int(raw["until"]), {str(k): int(v) for k, v in raw["streams"].items()})


@dataclass(slots=True)
class Checkpoint:
    path: str
    offset: int
    updated: float
    replay: Replay | None = None


@dataclass(slots=True)
class Handover:
    """A batch of one file given to the sinks; reading resumes at `end` once it settles."""

    key: str
    end: int
    replay: Replay | None = None
    settled: bool = False
    read_at: float = 0.0
    """When its lines were read: the age of the oldest data not yet delivered."""


class CheckpointStore:
    def __init__(self, state_dir: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = state_dir / STATE_FILE
        self._file = StateFile(self.path)
        self.clock = clock
        self.checkpoints: dict[str, Checkpoint] = {}
        self._pending: dict[str, deque[Handover]] = {}
        """Per file, the handovers not yet settled, oldest first."""
        self._dirty = False
        self.corrupt_files = 0

    def load(self) -> None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        try:
            state = orjson.loads(raw)
            if state.get("version") != FORMAT_VERSION:
                raise ValueError(f"unknown format version {state.get('version')!r}")
            self.checkpoints = {
                key: Checkpoint(
                    entry["path"],
                    int(entry["offset"]),
                    float(entry["updated"]),
                    Replay.from_json(entry.get("replay")),
                )
                for key, entry in state["files"].items()
            }
        except (orjson.JSONDecodeError, ValueError, KeyError, TypeError, AttributeError) as error:
            self.corrupt_files += 1
            aside = self.path.with_suffix(f".corrupt-{int(self.clock())}")
            self.path.rename(aside)
            log.error(
                "The checkpoint file is corrupt; moved it aside and reading files from their "
                "start. Delivery is idempotent, so replayed lines are not duplicated.",
                extra={"path": str(self.path), "moved_to": str(aside), "error": str(error)},
            )
            self.checkpoints = {}

    def offset(self, key: str) -> int | None:
        checkpoint = self.checkpoints.get(key)
        return checkpoint.offset if checkpoint else None

    def resume_point(self, key: str) -> tuple[int, Replay | None] | None:
        """Where reading a file resumes: after its last batch handed over, else the checkpoint.

        A file closed and opened again within one run (a rotated file that the runtime
        appended to after the tailer closed it) may still have batches unacknowledged;
        reading again from the checkpoint would deliver them twice.
        """
        pending = self._pending.get(key)
        if pending:
            return pending[-1].end, pending[-1].replay
        checkpoint = self.checkpoints.get(key)
        return (checkpoint.offset, checkpoint.replay) if checkpoint else None

    def track(self, key: str, path: str, offset: int, replay: Replay | None = None) -> None:
        """Start tracking a file whose delivery begins (or resumes) at `offset`."""
        self._pending.setdefault(key, deque())
        if key not in self.checkpoints:
            self.checkpoints[key] = Checkpoint(path, offset, self.clock(), replay)
            self._dirty = True
        else:
            self.checkpoints[key].path = path

    def hand_over(self, key: str, end: int, replay: Replay | None = None) -> Handover:
        """Record a batch given to the sinks, after which reading would resume at `end`
        (skipping what `replay` says); `settle` it once every sink acknowledged it."""
        handover = Handover(key, end, replay, read_at=self.clock())
        self._pending[key].append(handover)
        return handover

    def oldest_pending(self, key: str) -> float | None:
        """When the oldest batch of a file that is not settled yet was read; None: none."""
        pending = self._pending.get(key)
        return pending[0].read_at if pending else None

    def settle(self, handover: Handover) -> None:
        """Every sink acknowledged the batch: advance over the settled prefix."""
        handover.settled = True
        pending = self._pending.get(handover.key)
        advanced = None
        while pending and pending[0].settled:
            advanced = pending.popleft()
        if advanced is not None:
            checkpoint = self.checkpoints[handover.key]
            checkpoint.offset = advanced.end
            checkpoint.replay = advanced.replay
            checkpoint.updated = self.clock()
            self._dirty = True

    def has_pending(self, key: str) -> bool:
        return bool(self._pending.get(key))

    def forget(self, key: str) -> None:
        """A file fully delivered and gone from disk needs no checkpoint any more."""
        self._pending.pop(key, None)
        if self.checkpoints.pop(key, None) is not None:
            self._dirty = True

    def save(self) -> None:
        """Write the state file now, waiting for the disk on this thread."""
        state = self._changed_state()
        if state is not None:
            try:
                write_atomically(self.path, state)
            except BaseException:
                self._dirty = True
                raise

    async def save_off_loop(self) -> None:
        """Write the state file, the disk's waits in a thread; writes stay in order."""
        state = self._changed_state()
        if state is not None:
            try:
                await self._file.write(state)
            except BaseException:
                self._dirty = True  # not known to be on disk (a cancelled wait included)
                raise

    def _changed_state(self) -> bytes | None:
        """The state as it is now, if it changed since the last save began."""
        if not self._dirty:
            return None
        self._dirty = False
        return orjson.dumps(
            {
                "version": FORMAT_VERSION,
                "files": {
                    key: {"path": c.path, "offset": c.offset, "updated": c.updated}
                    | ({"replay": c.replay.to_json()} if c.replay else {})
                    for key, c in self.checkpoints.items()
                },
            }
        )
