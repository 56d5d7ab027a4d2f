"""The agent's state files, written off the event loop on a real filesystem."""

from __future__ import annotations

import asyncio
from pathlib import Path

from observer.agent.state_file import StateFile


async def test_writes_land_in_the_order_asked_even_when_a_caller_is_cancelled(
    tmp_path: Path,
) -> None:
    """Twenty saves asked at once end with the last one on disk; a save whose caller was
    cancelled still finishes, before the next one, so it cannot overwrite a newer state."""
    state = StateFile(tmp_path / "state" / "checkpoints.json")
    writes = [asyncio.create_task(state.write(b'{"n": %d}' % n)) for n in range(20)]
    await asyncio.sleep(0)  # every write has been asked
    writes[-1].cancel()
    await asyncio.wait(writes)

    await state.write(b'{"n": "after"}')

    assert state.path.read_bytes() == b'{"n": "after"}'
    assert not state.path.with_suffix(".tmp").exists()
    assert all(write.cancelled() or write.exception() is None for write in writes)
