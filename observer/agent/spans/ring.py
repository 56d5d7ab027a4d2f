"""A consistent hash ring on trace ids: which collector replica gets a trace.

Every agent must pick the same replica for a trace id without talking to the others, and
a replica joining or leaving must move only its share of traces (about 1/n). So:

- Each endpoint owns `points` positions on a 32-bit ring, at blake2b(endpoint, i): the
  same on every agent, independent of the order endpoints were listed in.
- The ring is cut into 2^16 slots; a slot belongs to the first position at or after its
  start (clockwise). The table of owners is computed once per change of endpoints, so a
  lookup is a CRC-32 of the trace id (C code, about 0.1 µs) and a list index.
- Removing an endpoint only reassigns the slots whose first position was one of its own;
  adding one only takes slots for itself. Every other trace stays where it was.

CRC-32 rather than Python's `hash`: that one is salted per process, and agents would
disagree. The OpenTelemetry Collector's loadbalancing exporter hashes trace ids the same
way (CRC-32 onto a ring of positions per endpoint).
"""

from __future__ import annotations

import bisect
import hashlib
import zlib
from collections.abc import Iterable

SLOT_BITS = 16
SLOTS = 1 << SLOT_BITS
SLOT_SHIFT = 32 - SLOT_BITS
DEFAULT_POINTS = 256
"""Positions per endpoint: the spread of shares shrinks as 1/sqrt(points) (about 6% here)."""


class HashRing:
    """Immutable: a change of endpoints builds a new ring."""

    def __init__(self, endpoints: Iterable[str], points: int = DEFAULT_POINTS) -> None:
        self.endpoints: tuple[str, ...] = tuple(sorted(set(endpoints)))
        self.points = points
        self.table: list[int] = _owners(self.endpoints, points) if self.endpoints else []

    def __len__(self) -> int:
        return len(self.endpoints)

    def index(self, trace_id: bytes) -> int:
        """The index in `endpoints` of the replica that owns this trace."""
        return self.table[zlib.crc32(trace_id) >> SLOT_SHIFT]

    def owner(self, trace_id: bytes) -> str:
        return self.endpoints[self.index(trace_id)]


def _position(endpoint: str, point: int) -> int:
    digest = hashlib.blake2b(f"{endpoint}#{point}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big")


def _owners(endpoints: tuple[str, ...], points: int) -> list[int]:
    positions = sorted(
        (_position(endpoint, point), index)
        for index, endpoint in enumerate(endpoints)
        for point in range(points)
    )
    keys = [position for position, _ in positions]
    table = []
    for slot_number in range(SLOTS):
        found = bisect.bisect_left(keys, slot_number << SLOT_SHIFT)
        table.append(positions[found % len(positions)][1])
    return table
