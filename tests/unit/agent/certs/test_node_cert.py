"""Node certificate renewal at half life, against the controller's real CA code (in-process)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable

from agent.certs.node_cert import NodeCertificate
from tests.unit.agent.issuer import InProcessIssuer, now
from weft.controller_client import Backoff, NodeIdentity
from weft.pki import build_csr, certs_from_pem, certs_to_pem, generate_key, node_uri, parse_csr

FAST = Backoff(initial=0.05, maximum=0.2)


class NodeSigner:
    """Stands in for IdentityService.CreateCertificate with a node CSR (scripted failures)."""

    def __init__(self, lifetime: dt.timedelta) -> None:
        self.issuer = InProcessIssuer(lifetime)
        self.lifetime = lifetime
        self.fail_next = 0
        self.calls = 0

    def first(self) -> NodeIdentity:
        return self.sign("node1")

    def sign(self, node: str) -> NodeIdentity:
        key = generate_key()
        request = parse_csr(build_csr(key, node_uri("cluster.local", node)))
        chain = self.issuer.ca.issue(request.public_key, request.uri, self.lifetime, now())
        return NodeIdentity(node, key, certs_to_pem(chain), self.issuer.bundle)

    async def renew(self, identity: NodeIdentity) -> NodeIdentity:
        self.calls += 1
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("controller unreachable (scripted)")
        return self.sign(identity.node)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


def serial(identity: NodeIdentity) -> int:
    return certs_from_pem(identity.chain_pem)[0].serial_number


def test_the_node_certificate_is_renewed_at_half_life_with_a_new_key_and_saved() -> None:
    async def scenario() -> None:
        signer = NodeSigner(dt.timedelta(seconds=2))
        first = signer.first()
        saved: list[NodeIdentity] = []
        holder = NodeCertificate(first, signer.renew, saved.append, backoff=FAST)
        task = asyncio.create_task(holder.keep_renewed())
        await asyncio.sleep(0.5)
        assert signer.calls == 0  # not due before half life (1 s)
        await until(lambda: signer.calls == 1)
        await until(lambda: bool(saved))
        assert saved == [holder.identity]
        assert serial(holder.identity) != serial(first)
        assert holder.identity.key.public_key() != first.key.public_key()
        assert holder.credentials().chain_pem == holder.identity.chain_pem
        assert holder.report()["state"] == "valid"
        task.cancel()

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_failed_renewals_back_off_and_keep_the_valid_certificate() -> None:
    async def scenario() -> None:
        signer = NodeSigner(dt.timedelta(seconds=2))
        first = signer.first()
        backoff = Backoff(initial=0.3, maximum=0.6)
        holder = NodeCertificate(first, signer.renew, lambda identity: None, backoff=backoff)
        signer.fail_next = 2
        task = asyncio.create_task(holder.keep_renewed())
        await until(lambda: signer.calls == 1)  # due at 1 s; it fails
        assert holder.identity is first  # still serving the old, still valid, certificate
        assert holder.report()["state"] == "renewing"
        assert "unreachable" in str(holder.report()["last_error"])
        await until(lambda: holder.identity is not first)  # after 0.3 s and 0.6 s of backoff
        assert signer.calls == 3
        assert serial(holder.identity) != serial(first)
        assert holder.report()["state"] == "valid"
        task.cancel()

    asyncio.run(asyncio.wait_for(scenario(), 20))
