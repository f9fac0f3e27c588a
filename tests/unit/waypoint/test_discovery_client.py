"""waypoint.discovery_client.DiscoveryFeed's dialling: HBONE in the mesh, plain TCP outside it.

Real parts: the feed's own HbonePool and HboneOutbound over mutual TLS, a node agent's
HboneServer on the in-mesh workload's address and 15008 (a random 127/8 address, so no other
test's port is in the way), TCP listeners on loopback, and a view applied from operator YAML as
the controller sends it (no controller runs: the feed only dials here).
"""

from __future__ import annotations

import asyncio
import functools
import random

import yaml
from waypoint_testing import (
    TUNNEL_TIMEOUT_S,
    WAYPOINT_ID,
    TestCa,
    agent_connect,
    port_of,
    socket_listener,
)

from tests.resource_yaml import documents, namespace, workload
from waypoint.channel import SocketChannel
from waypoint.config import WaypointConfig
from waypoint.discovery import HBONE_PORT
from waypoint.discovery_client import ControllerOptions, DiscoveryFeed
from waypoint.fastpath.backend import FastUpstream
from waypoint.fastpath.pool import FastPool
from waypoint.proxy import WaypointProxy
from waypoint.resilience import RoundRobin
from waypoint.stream_transport import StreamTransport
from waypoint.svid import WaypointSvid
from waypoint.tunnel_channel import TunnelChannel
from weft.api.convert import ConfigUpdate, ReceivedResource
from weft.hbone import HboneServer
from weft.identity import Identity
from weft.pki import key_from_pem
from weft.resources import parse_body
from weft.tls import server_context

REVIEWS_ID = Identity.parse("spiffe://cluster.local/ns/shop/sa/reviews")
WAYPOINT_RESOURCE = (
    "apiVersion: weft.io/v1\nkind: Waypoint\n"
    "metadata: {name: waypoint, namespace: shop}\nspec: {address: 10.88.1.9, node: n1}\n"
)


def snapshot(text: str) -> ConfigUpdate:
    upserts = tuple(ReceivedResource(parse_body(body), 1) for body in yaml.safe_load_all(text))
    return ConfigUpdate(1, True, upserts, ())


def test_fast_dial_tunnels_to_in_mesh_endpoints_and_dials_tcp_outside_as_connect_does() -> None:
    ca = TestCa()
    mesh_ip = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
    tunnels: list[tuple[Identity, str]] = []

    async def authorize(
        peer: Identity, authority: str, headers: tuple[tuple[str, str], ...]
    ) -> bool:
        tunnels.append((peer, authority))
        return True

    async def main() -> None:
        in_mesh, in_mesh_accepted = await socket_listener(mesh_ip)
        outside, outside_accepted = await socket_listener("127.0.0.1")
        agent = HboneServer(
            server_context(ca.issue(REVIEWS_ID), ca.bundle), authorize, agent_connect
        )
        await agent.start(mesh_ip, HBONE_PORT)  # where route_to sends an in-mesh endpoint
        issued = ca.issue(WAYPOINT_ID)
        svid = WaypointSvid(WAYPOINT_ID, key_from_pem(issued.key_pem), issued.chain_pem, ca.bundle)
        options = ControllerOptions(
            controller="127.0.0.1:1", join_address="127.0.0.1:1", token="", bundle_pem=ca.bundle,
            name="waypoint", namespace="shop", service_account="waypoint",
            trust_domain="cluster.local",
        )  # fmt: skip
        feed = DiscoveryFeed(options, svid, WaypointProxy(WaypointConfig(services=()), {}))
        mesh_endpoint = f"{mesh_ip}:{port_of(in_mesh)}"
        outside_endpoint = f"127.0.0.1:{port_of(outside)}"
        update = snapshot(
            documents(
                namespace("shop"),
                namespace("legacy", ambient=False),
                workload("reviews", "shop", mesh_ip, "n1", service_account="reviews"),
                workload("old", "legacy", "127.0.0.1", "n1"),
                WAYPOINT_RESOURCE,
            )
        )
        assert await feed.apply(update) is None
        try:
            for endpoint, accepted, over_hbone in (
                (mesh_endpoint, in_mesh_accepted, True),
                (outside_endpoint, outside_accepted, False),
            ):
                before = len(tunnels)
                pool = FastPool("reviews.shop:8080", (endpoint,), RoundRobin(), feed.fast_dial)
                upstream = await asyncio.wait_for(
                    feed.fast_dial(endpoint, functools.partial(FastUpstream, pool, endpoint)),
                    TUNNEL_TIMEOUT_S,
                )
                transport = upstream.transport
                assert transport is not None
                assert isinstance(transport, StreamTransport) == over_hbone
                transport.write(b"fast")
                peer = await asyncio.wait_for(accepted.get(), TUNNEL_TIMEOUT_S)
                loop = asyncio.get_running_loop()
                assert await asyncio.wait_for(loop.sock_recv(peer, 10), TUNNEL_TIMEOUT_S) == b"fast"
                # the general path's connect() makes the same choice
                _, writer = await asyncio.wait_for(feed.connect(endpoint), TUNNEL_TIMEOUT_S)
                assert isinstance(writer, TunnelChannel if over_hbone else SocketChannel)
                writer.write(b"general")
                second = await asyncio.wait_for(accepted.get(), TUNNEL_TIMEOUT_S)
                assert await asyncio.wait_for(loop.sock_recv(second, 10), TUNNEL_TIMEOUT_S) == (
                    b"general"
                )
                # over HBONE, one tunnel each, opened as the waypoint to the endpoint; else none
                expected = [(WAYPOINT_ID, endpoint)] * 2 if over_hbone else []
                assert tunnels[before:] == expected
                upstream.close()
                writer.close()
                peer.close()
                second.close()
        finally:
            await agent.close()  # servers before the pool: see test_inbound's note
            await feed.close()
            in_mesh.close()
            outside.close()

    asyncio.run(asyncio.wait_for(main(), 20))
