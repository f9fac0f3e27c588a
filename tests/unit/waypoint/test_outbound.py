"""HBONE out of the waypoint: the proxy reaches a backend through a node agent's HBONE server."""

from __future__ import annotations

import asyncio

import pytest
from waypoint_testing import (
    FRONTEND,
    HOST,
    REVIEWS_V1,
    WAYPOINT_ID,
    Backend,
    Client,
    TestCa,
    agent_connect,
    destination_agent,
    hello_backend,
)

from waypoint.config import Route, ServiceConfig, WaypointConfig
from waypoint.fastpath.pool import dial_tcp
from waypoint.outbound import EndpointRoute, HboneOutbound
from waypoint.proxy import WaypointProxy
from waypoint.telemetry import RequestRecord
from waypoint.upstream import connect_tcp
from weft.hbone import HbonePool, HboneServer
from weft.identity import Identity
from weft.tls import client_context, server_context

AGENT_ID = Identity.parse("spiffe://cluster.local/ns/weft-system/sa/agent-node-b")
ROUTES = (Route("r", backends=(REVIEWS_V1,)),)


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "general"])
def test_requests_reach_the_backend_through_the_destination_agent(fast_path: bool) -> None:
    ca = TestCa()
    tunnels: list[tuple[Identity, str]] = []
    baggage: list[str] = []
    records: list[RequestRecord] = []

    async def authorize(
        peer: Identity, authority: str, headers: tuple[tuple[str, str], ...]
    ) -> bool:
        tunnels.append((peer, authority))
        baggage.extend(value for name, value in headers if name == "baggage")
        return True

    async def main() -> list[int]:
        backend = await asyncio.start_server(hello_backend, "127.0.0.1", 0)
        endpoint = f"127.0.0.1:{backend.sockets[0].getsockname()[1]}"
        agent = HboneServer(server_context(ca.issue(AGENT_ID), ca.bundle), authorize, agent_connect)
        await agent.start("127.0.0.1", 0)
        impostor = HboneServer(
            server_context(ca.issue(FRONTEND), ca.bundle), authorize, agent_connect
        )
        await impostor.start("127.0.0.1", 0)
        routes = {
            endpoint: EndpointRoute(("127.0.0.1", agent.port), AGENT_ID),
            "10.9.9.9:80": EndpointRoute(("127.0.0.1", impostor.port), AGENT_ID),
        }
        svid = ca.issue(WAYPOINT_ID)
        pool = HbonePool(lambda source: client_context(svid, ca.bundle))
        outbound = HboneOutbound(pool, WAYPOINT_ID, routes.get, "waypoint")
        statuses = []
        for endpoints in ([endpoint], ["10.9.9.9:80"], ["10.8.8.8:80"]):
            proxy = WaypointProxy(
                WaypointConfig(services=(ServiceConfig(HOST, 9080, ROUTES),)),
                {REVIEWS_V1.authority: endpoints},
                connect=outbound.connect,
                fast_dial=outbound.dial if fast_path else None,
                access_log=records.append,
            )
            _, port = await proxy.start()
            client = await Client.connect(port)
            statuses.append((await client.get("/")).response.status)
            assert proxy.general_connections == (0 if fast_path else 1)
            client.close()
            await proxy.close()
        await outbound.close()
        await agent.close()  # servers before the pool: see test_inbound's note
        await impostor.close()
        await pool.close()
        backend.close()
        return statuses

    statuses = asyncio.run(asyncio.wait_for(main(), 20))
    # through the agent; an agent proving the wrong identity; an endpoint no agent fronts
    assert statuses == [200, 503, 503]
    assert tunnels[0] == (WAYPOINT_ID, tunnels[0][1])
    assert tunnels[0][1].startswith("127.0.0.1:")
    # named for the destination agent's telemetry, in the namespace its certificate proves
    assert baggage[0] == f"k8s.namespace.name={WAYPOINT_ID.namespace},k8s.deployment.name=waypoint"
    assert [r.response_flags for r in records] == [
        "-",
        "upstream_connect_error",
        "upstream_connect_error",
    ]


def test_through_hbone_the_proxy_answers_as_over_tcp() -> None:
    """Keep-alive reuse, a backend closing after an answer or instead of one: the same statuses,
    flags and backend connections whether endpoints are reached over TCP or over HBONE, on the
    general path and on the fast path."""
    ca = TestCa()

    async def scenario(over_hbone: bool, fast_path: bool = False) -> list[object]:
        backend = await Backend("b").start()
        records: list[RequestRecord] = []
        async with destination_agent(ca) as outbound:
            proxy = WaypointProxy(
                WaypointConfig(services=(ServiceConfig(HOST, 9080, ROUTES),)),
                {REVIEWS_V1.authority: [backend.endpoint]},
                connect=outbound.connect if over_hbone else connect_tcp,
                fast_dial=(outbound.dial if over_hbone else dial_tcp) if fast_path else None,
                access_log=records.append,
            )
            _, port = await proxy.start()
            client = await Client.connect(port)
            # /close-after: the backend closes after answering, so the next request needs a new
            # connection; /reset: it closes without answering
            targets = ("/a", "/b", "/close-after", "/c", "/reset", "/d")
            statuses = [(await client.get(target)).response.status for target in targets]
            assert proxy.general_connections == (0 if fast_path else 1)
            client.close()
            await proxy.close()
        await backend.stop()
        return [statuses, [r.response_flags for r in records], backend.connections]

    async def main() -> None:
        over_tcp = await scenario(over_hbone=False)
        assert over_tcp == [
            [200, 200, 200, 200, 503, 200],
            ["-", "-", "-", "-", "upstream_reset", "-"],
            3,
        ]
        assert await scenario(over_hbone=True) == over_tcp
        # the fast path: its backend connections are tunnels through the agent, or TCP
        assert await scenario(over_hbone=True, fast_path=True) == over_tcp
        assert await scenario(over_hbone=False, fast_path=True) == over_tcp

    asyncio.run(asyncio.wait_for(main(), 20))
