"""Waiting in async tests for a condition that real services make true."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def until(condition: Callable[[], object], within: float = 15.0) -> None:
    """Poll `condition` until it is true; TimeoutError after `within` seconds."""
    async with asyncio.timeout(within):
        while not condition():
            await asyncio.sleep(0.02)
