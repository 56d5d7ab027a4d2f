"""Where the collector replicas are: a headless Service's DNS name, or a static list.

A headless Service (`clusterIP: None`) answers a DNS query for its name with the address
of every ready pod behind it, so resolving `endpoint` every `resolve_interval` follows
replicas as they come and go. An answer that fails or is empty keeps the last good set
(a DNS hiccup must not empty the ring and move every trace), and is logged and counted.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence

log = logging.getLogger(__name__)

Lookup = Callable[[str, int], Awaitable[list[str]]]
"""host, port → addresses (injected so tests can play the DNS)."""


async def system_lookup(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return [str(info[4][0]) for info in infos]


def endpoint_of(address: str, port: int) -> str:
    """`10.0.0.1:4317`, `[fd00::1]:4317`: the gRPC target of one replica."""
    if isinstance(ipaddress.ip_address(address), ipaddress.IPv6Address):
        return f"[{address}]:{port}"
    return f"{address}:{port}"


class EndpointResolver:
    def __init__(
        self,
        endpoint: str,
        static_endpoints: Sequence[str],
        interval: float,
        on_change: Callable[[list[str]], None],
        lookup: Lookup = system_lookup,
    ) -> None:
        self.endpoint = endpoint
        self.static_endpoints = list(static_endpoints)
        self.interval = interval
        self.on_change = on_change
        self.lookup = lookup
        self.failures = 0
        self.resolved = asyncio.Event()
        """Set once a non-empty replica set is known."""

    async def run(self) -> None:
        """Resolve now and every interval, until cancelled; a static list is set once."""
        if self.static_endpoints:
            self.on_change(sorted(set(self.static_endpoints)))
            self.resolved.set()
            return
        host, _, port = self.endpoint.rpartition(":")
        host = host.strip("[]")
        while True:
            await self.resolve_once(host, int(port))
            await asyncio.sleep(self.interval)

    async def resolve_once(self, host: str, port: int) -> None:
        try:
            addresses = await self.lookup(host, port)
        except OSError as error:
            self._failed(host, str(error))
            return
        endpoints = sorted({endpoint_of(address, port) for address in addresses})
        if not endpoints:
            self._failed(host, "no addresses")
            return
        self.on_change(endpoints)
        self.resolved.set()

    def _failed(self, host: str, error: str) -> None:
        self.failures += 1
        # Once at the first failure and then every 12th (a minute at the default 5 s),
        # so a long outage is visible without a line per attempt.
        if self.failures % 12 == 1:
            log.warning(
                "The collector replicas could not be resolved; the last known set is kept.",
                extra={"host": host, "error": error, "failures": self.failures},
            )
