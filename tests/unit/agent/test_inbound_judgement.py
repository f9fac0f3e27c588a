"""Inbound's per-tunnel judgement memo: a repeated (peer, authority, header block) gives the same
record (a new one, with its own clock) without judging again, and a new node state judges anew
(a policy added in it denies)."""

from __future__ import annotations

import asyncio
import datetime as dt
from ipaddress import IPv4Address

from agent.certs.manager import CertificateManager
from agent.inbound import Inbound, _current
from agent.state import NodeState
from agent.telemetry import ConnectionRecord, Telemetry, access_line
from tests.resource_yaml import FRONTEND_PRINCIPAL, authorization_policy
from tests.unit.agent.issuer import InProcessIssuer
from tests.unit.agent.mesh_config import SHOP, node_state
from weft.identity import Identity

CATALOG = IPv4Address("10.88.2.2")  # SHOP's catalog, on node2
FRONTEND = Identity.for_workload("shop", "frontend")
HEADERS = (
    ("forwarded", "for=10.88.1.2"),
    ("baggage", "k8s.namespace.name=shop,k8s.pod.name=frontend"),
)
DENY_FRONTEND = authorization_policy(
    "no-frontend", "shop", action="DENY", principals=[FRONTEND_PRINCIPAL]
)


def test_a_repeated_tunnel_is_judged_once_per_state() -> None:
    states = {"now": node_state("node2", SHOP)}
    telemetry = Telemetry()
    judged: list[str] = []

    class Counted(Inbound):
        def _authorize(self, state: NodeState, *args: object) -> tuple[ConnectionRecord, bool]:
            judged.append(str(state.version))
            return super()._authorize(state, *args)  # type: ignore[arg-type]

    async def tunnel() -> tuple[bool, ConnectionRecord | None]:
        allowed = await authorize(FRONTEND, "10.88.2.2:8080", HEADERS)
        return allowed, _current.get()

    certs = CertificateManager(InProcessIssuer(dt.timedelta(hours=1)), b"")
    inbound = Counted(lambda: states["now"], certs, telemetry, IPv4Address("10.88.2.1"))
    authorize = inbound._authorizer(CATALOG)
    first_allowed, first = asyncio.run(tunnel())
    second_allowed, second = asyncio.run(tunnel())
    assert first_allowed
    assert second_allowed
    assert first is not None
    assert second is not None
    assert first is not second
    assert len(judged) == 1  # the second tunnel's record came from the memo
    assert second.started >= first.started
    assert access_line(second) == access_line(first)
    assert (first.src, first.source_workload, first.destination_service) == (
        "10.88.1.2", "frontend", "catalog.shop",
    )  # fmt: skip

    states["now"] = node_state("node2", SHOP, DENY_FRONTEND)
    denied_allowed, _ = asyncio.run(tunnel())
    assert not denied_allowed
    assert len(judged) == 2  # a new state: judged again
    assert (
        b'weft_connections_refused_total{direction="inbound",reason="denied"} 1.0'
        in telemetry.exposition()
    )
