"""IdentityService over real gRPC + mTLS on loopback: join, node-scoped issuance, rotation."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

import grpc
import pytest
from controller_testkit import (
    TRUST_DOMAIN,
    bundle_pem,
    grpc_address,
    join,
    join_address,
    register,
    workload_doc,
)
from cryptography import x509

from controller.admin_client import AdminClient
from controller.ca_files import CAFiles
from controller.server import Controller
from weft.controller_client import ControllerClient, Credentials, NodeIdentity
from weft.errors import UnavailableError
from weft.pki import build_csr, certs_from_pem, generate_key, uri_san, verify_chain

NOW = dt.datetime.now(dt.UTC)


def request_svid(controller: Controller, node: NodeIdentity, uri: str) -> tuple[bytes, bytes]:
    async def call() -> tuple[bytes, bytes]:
        async with ControllerClient(grpc_address(controller), node.credentials()) as client:
            issued = await client.create_certificate(build_csr(generate_key(), uri))
            return issued.chain_pem, issued.bundle_pem

    return asyncio.run(call())


def status_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        asyncio.run(call)  # type: ignore[arg-type]
    return exc.value.code()


@pytest.fixture
def two_nodes(controller: Controller) -> Controller:
    register(
        controller,
        workload_doc("frontend-1", "n1", sa="frontend", ip="10.1.1.1"),
        workload_doc("cart-1", "n2", sa="cart", ip="10.1.2.1"),
    )
    return controller


def test_node_gets_an_svid_for_its_workload_that_verifies_with_exact_san(
    two_nodes: Controller,
) -> None:
    n1 = join(two_nodes, "n1")
    uri = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/frontend"
    chain_pem, bundle = request_svid(two_nodes, n1, uri)
    chain = certs_from_pem(chain_pem)
    assert uri_san(chain[0]) == uri
    san = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(uri)]
    verify_chain(chain[0], chain[1:], certs_from_pem(bundle), dt.datetime.now(dt.UTC))
    lifetime = chain[0].not_valid_after_utc - chain[0].not_valid_before_utc
    assert dt.timedelta(hours=24) <= lifetime <= dt.timedelta(hours=24, minutes=2)


def test_workload_on_another_node_is_refused_and_audited(
    two_nodes: Controller, caplog: pytest.LogCaptureFixture
) -> None:
    n1 = join(two_nodes, "n1")
    uri = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/cart"
    with caplog.at_level(logging.WARNING, logger="weft.controller.audit"):
        code = status_of(_svid_call(two_nodes, n1, uri))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    [line] = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert "node=n1" in line
    assert f"identity={uri}" in line
    assert "no workload with this identity is registered on node 'n1'" in line


def _svid_call(controller: Controller, node: NodeIdentity, uri: str) -> object:
    async def call() -> None:
        async with ControllerClient(grpc_address(controller), node.credentials()) as client:
            await client.create_certificate(build_csr(generate_key(), uri))

    return call()


def test_made_up_identity_is_refused(two_nodes: Controller) -> None:
    n1 = join(two_nodes, "n1")
    uri = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/does-not-exist"
    assert status_of(_svid_call(two_nodes, n1, uri)) == grpc.StatusCode.PERMISSION_DENIED


def test_reused_join_token_is_refused(controller: Controller) -> None:
    token = controller.store.create_join_token("n1", 60, dt.datetime.now(dt.UTC).timestamp())
    join(controller, "n1", token)
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        join(controller, "n1", token)
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "already used" in str(exc.value.details())


def test_expired_join_token_is_refused(controller: Controller) -> None:
    past = dt.datetime.now(dt.UTC).timestamp() - 120
    token = controller.store.create_join_token("n1", 60, past)
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        join(controller, "n1", token)
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "expired" in str(exc.value.details())


def test_token_for_one_node_cannot_join_another(controller: Controller) -> None:
    token = controller.store.create_join_token("n1", 60, dt.datetime.now(dt.UTC).timestamp())
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        join(controller, "n2", token)
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_join_port_serves_nothing_but_joining(controller: Controller) -> None:
    async def call() -> None:
        creds = Credentials(bundle_pem(controller))  # no client certificate
        async with ControllerClient(join_address(controller), creds) as client:
            await client.create_certificate(
                build_csr(generate_key(), "spiffe://cluster.local/ns/a/sa/b")
            )

    assert status_of(call()) == grpc.StatusCode.UNAUTHENTICATED


def test_node_renews_its_own_certificate(controller: Controller) -> None:
    n1 = join(controller, "n1")
    chain_pem, _ = request_svid(controller, n1, f"spiffe://{TRUST_DOMAIN}/weft/node/n1")
    assert uri_san(certs_from_pem(chain_pem)[0]) == f"spiffe://{TRUST_DOMAIN}/weft/node/n1"
    assert [c.node for c in controller.store.node_certificates()] == ["n1"]


def test_node_certificate_cannot_use_the_admin_service(controller: Controller) -> None:
    n1 = join(controller, "n1")
    with (
        AdminClient(grpc_address(controller), n1.credentials()) as admin,
        pytest.raises(UnavailableError, match="is not the admin"),
    ):
        admin.status()


def test_certs_from_old_and_new_root_both_verify_during_rotation(two_nodes: Controller) -> None:
    n1 = join(two_nodes, "n1")
    uri = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/frontend"
    old_chain, _ = request_svid(two_nodes, n1, uri)
    files = CAFiles(two_nodes.config.state_dir)
    files.rotate(dt.timedelta(hours=1), dt.datetime.now(dt.UTC))
    # The node's certificate chains to the old root, still trusted during the overlap.
    new_chain, bundle = request_svid(two_nodes, n1, uri)
    roots = certs_from_pem(bundle)
    assert len(roots) == 2
    now = dt.datetime.now(dt.UTC)
    old, new = certs_from_pem(old_chain), certs_from_pem(new_chain)
    assert (
        verify_chain(old[0], old[1:], roots, now)[-1]
        != verify_chain(new[0], new[1:], roots, now)[-1]
    )
    later = now + dt.timedelta(hours=2)
    with pytest.raises(ValueError, match="no issuer"):
        verify_chain(old[0], old[1:], files.bundle(later), now)


def test_joined_node_reads_the_trust_bundle(controller: Controller) -> None:
    n1 = join(controller, "n1")

    async def call() -> bytes:
        async with ControllerClient(grpc_address(controller), n1.credentials()) as client:
            return await client.trust_bundle()

    assert asyncio.run(call()) == bundle_pem(controller)
