"""HBONE out of the waypoint: the proxy reaches a backend through a node agent's HBONE server."""

from __future__ import annotations

import asyncio

from waypoint_testing import (
    FRONTEND,
    HOST,
    REVIEWS_V1,
    WAYPOINT_ID,
    Client,
    TestCa,
    hello_backend,
)

from waypoint.config import Route, ServiceConfig, WaypointConfig
from waypoint.outbound import EndpointRoute, HboneOutbound
from waypoint.proxy import WaypointProxy
from waypoint.telemetry import RequestRecord
from waypoint.upstream import connect_tcp
from weft.hbone import HbonePool, HboneServer
from weft.identity import Identity
from weft.tls import client_context, server_context

AGENT_ID = Identity.parse("spiffe://cluster.local/ns/weft-system/sa/agent-node-b")
ROUTES = (Route("r", backends=(REVIEWS_V1,)),)


def test_requests_reach_the_backend_through_the_destination_agent() -> None:
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
        agent = HboneServer(server_context(ca.issue(AGENT_ID), ca.bundle), authorize, connect_tcp)
        await agent.start("127.0.0.1", 0)
        impostor = HboneServer(
            server_context(ca.issue(FRONTEND), ca.bundle), authorize, connect_tcp
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
                access_log=records.append,
            )
            _, port = await proxy.start()
            client = await Client.connect(port)
            statuses.append((await client.get("/")).response.status)
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
