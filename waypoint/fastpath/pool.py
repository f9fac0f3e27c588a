"""The fast path's keep-alive backend connections: idle ones per endpoint, new ones dialled."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from waypoint.fastpath.backend import FastUpstream
from waypoint.resilience import Balancer


class FastPool:
    """Idle keep-alive connections to one backend's endpoints, and which endpoint is next."""

    def __init__(
        self,
        authority: str,
        endpoints: Sequence[str],
        balancer: Balancer,
        dial: Dial | None = None,
    ) -> None:
        self.authority = authority
        self.dial = dial or dial_tcp
        self.endpoints = tuple(endpoints)
        self.balancer = balancer
        self.idle: dict[str, list[FastUpstream]] = {endpoint: [] for endpoint in endpoints}
        self.retired = False

    def pick(self) -> str:
        endpoints = self.endpoints
        if len(endpoints) == 1:
            return endpoints[0]
        return self.balancer.pick(endpoints, ()) or endpoints[0]

    def take(self, endpoint: str) -> FastUpstream | None:
        idle = self.idle[endpoint]
        while idle:
            upstream = idle.pop()
            transport = upstream.transport
            if upstream.alive and transport is not None and not transport.is_closing():
                return upstream
        return None

    def give_back(self, upstream: FastUpstream) -> None:
        if self.retired or not upstream.alive:
            upstream.close()
        else:
            self.idle[upstream.endpoint].append(upstream)

    def retire(self) -> None:
        """Configuration changed: idle connections close now, busy ones when done."""
        self.retired = True
        for idle in self.idle.values():
            for upstream in idle:
                upstream.close()
            idle.clear()


# dial(endpoint "ip:port", protocol factory) -> the connected protocol; OSError (or
# TimeoutError) when the endpoint cannot be reached. TCP by default; HBONE in the mesh.
Dial = Callable[[str, Callable[[], FastUpstream]], Awaitable[FastUpstream]]


async def dial_tcp(endpoint: str, factory: Callable[[], FastUpstream]) -> FastUpstream:
    """A TCP connection to `endpoint` served by the protocol `factory` makes."""
    host, _, port = endpoint.rpartition(":")
    loop = asyncio.get_running_loop()
    _, upstream = await loop.create_connection(factory, host.strip("[]"), int(port))
    return upstream


async def pool_connect(pool: FastPool, endpoint: str, timeout_s: float) -> FastUpstream:
    """A new connection to `endpoint` (OSError or TimeoutError if it cannot be reached)."""
    async with asyncio.timeout(timeout_s):
        return await pool.dial(endpoint, lambda: FastUpstream(pool, endpoint))
