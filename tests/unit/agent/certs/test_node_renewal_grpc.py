"""renew_node against the real controller over gRPC mTLS on loopback (no root)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.unit.controller.controller_testkit import (
    TRUST_DOMAIN,
    grpc_address,
    join,
    start_controller,
)
from weft.controller_client import renew_node
from weft.pki import certs_from_pem, node_uri, uri_san


def test_a_node_renews_its_own_certificate_with_a_new_key_over_mtls(tmp_path: Path) -> None:
    controller = start_controller(tmp_path / "state")
    try:
        first = join(controller, "node1")
        renewed = asyncio.run(
            renew_node(grpc_address(controller), first, trust_domain=TRUST_DOMAIN)
        )
        # and the renewed certificate authenticates the next renewal
        again = asyncio.run(
            renew_node(grpc_address(controller), renewed, trust_domain=TRUST_DOMAIN)
        )
    finally:
        controller.stop(grace=0.2)
    leaves = [certs_from_pem(i.chain_pem)[0] for i in (first, renewed, again)]
    assert len({leaf.serial_number for leaf in leaves}) == 3
    assert [uri_san(leaf) for leaf in leaves] == [node_uri(TRUST_DOMAIN, "node1")] * 3
    assert renewed.key.public_key() != first.key.public_key()
    assert leaves[1].public_key() == renewed.key.public_key()
    assert renewed.node == "node1"
