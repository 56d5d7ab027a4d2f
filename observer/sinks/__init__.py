"""Where records are written. Each sink takes batches and says when it has settled them."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

Document = dict[str, Any]


class Sink(Protocol):
    """A destination for documents, acknowledging each batch once it is settled.

    Settled means stored, found already stored, or put in a dead-letter store with the
    reason. Only then may the source's checkpoint move past the batch.
    """

    name: str

    async def start(self) -> None: ...

    async def submit(self, documents: list[Document], source: str) -> asyncio.Future[None]:
        """Take a batch read from the file identified by `source`.

        Waits while the sink holds as much as it may (backpressure), then returns a future
        that completes when every document of the batch is settled.
        """

    def ready(self) -> bool:
        """Whether the sink can take documents now (for /readyz)."""

    async def stop(self) -> None:
        """Release connections. Unsettled batches stay unsettled: they are read again later."""
