"""A waypoint as the controller's client, over real gRPC + mTLS on loopback: it joins with a
waypoint token for its own SVID, watches only what it serves, recompiles and ACKs each version,
NACKs a configuration it cannot compile (keeping the last good one) and renews its SVID."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from controller_testkit import (
    TRUST_DOMAIN,
    admin_credentials,
    bundle_pem,
    grpc_address,
    join,
    join_address,
    namespace_doc,
    register,
    workload_doc,
)
from cryptography import x509

from controller.admin_client import AdminClient
from controller.ca_files import CAFiles
from controller.identity_service import IssuancePolicy
from controller.server import Controller, ControllerConfig
from controller.waypoints import token_subject
from waypoint.config import WaypointConfig
from waypoint.discovery_client import ControllerOptions, DiscoveryFeed, NoCredentialError
from waypoint.discovery_client import join as join_waypoint
from waypoint.proxy import WaypointProxy
from weft.controller_client import ControllerClient, join_as
from weft.model import Kind, ResourceKey
from weft.pki import build_csr, certs_from_pem, generate_key, uri_san

WAYPOINT_URI = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/waypoint"
SHOP: list[dict[str, Any]] = [
    {**namespace_doc("shop"), "metadata": {"name": "shop", "labels": {
        "weft.io/dataplane-mode": "ambient", "weft.io/use-waypoint": "waypoint"}}},
    namespace_doc("other"),
    workload_doc("reviews-v1", "n1", app="reviews", sa="reviews", ip="10.1.1.5"),
    workload_doc("reviews-v2", "n2", app="reviews", sa="reviews", ip="10.1.2.5"),
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "reviews", "namespace": "shop"},
     "spec": {"clusterIP": "10.96.0.12", "selector": {"app": "reviews"},
              "ports": [{"port": 8080, "targetPort": 8080}]}},
    {"apiVersion": "weft.io/v1", "kind": "Waypoint",
     "metadata": {"name": "waypoint", "namespace": "shop"},
     "spec": {"address": "10.1.2.9", "node": "n2"}},
]  # fmt: skip


def route(name: str, namespace: str = "shop", status: int | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"backendRefs": [{"name": "reviews", "port": 8080}]}
    if status is not None:
        rule["filters"] = [{"type": "RequestRedirect", "requestRedirect": {"statusCode": status}}]
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "reviews", "port": 8080}],
            "rules": [rule],
        },
    }


def apply(controller: Controller, *bodies: dict[str, Any]) -> None:
    register(controller, *bodies)


def delete(controller: Controller, key: ResourceKey) -> None:
    with AdminClient(grpc_address(controller), admin_credentials(controller)) as admin:
        admin.delete([key])


def options(controller: Controller, token: str, name: str = "waypoint") -> ControllerOptions:
    return ControllerOptions(
        controller=grpc_address(controller),
        join_address=join_address(controller),
        token=token,
        bundle_pem=bundle_pem(controller),
        name=name,
        namespace="shop",
        service_account="waypoint",
        trust_domain=TRUST_DOMAIN,
    )


def waypoint_token(controller: Controller, namespace: str = "shop", name: str = "waypoint") -> str:
    now = dt.datetime.now(dt.UTC).timestamp()
    return controller.store.create_join_token(token_subject(namespace, name), 60, now)


DENIED = grpc.StatusCode.PERMISSION_DENIED


async def first_update_status(client: ControllerClient, node: str, waypoint: str) -> object:
    """The status code a Watch ends with before its first update (None if one arrives)."""
    try:
        async for _ in client.watch(node, waypoint):
            return None
    except grpc.aio.AioRpcError as error:
        return error.code()
    return None


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


def test_waypoint_joins_watches_what_it_serves_and_follows_changes(
    controller: Controller,
) -> None:
    apply(controller, *SHOP, route("canary"), route("elsewhere", namespace="other"))
    token = waypoint_token(controller)

    async def main() -> None:
        svid = await join_waypoint(options(controller, token))
        assert uri_san(certs_from_pem(svid.chain_pem)[0]) == WAYPOINT_URI
        proxy = WaypointProxy(WaypointConfig(services=()), {})
        feed = DiscoveryFeed(options(controller, token), svid, proxy)
        stop = asyncio.Event()
        running = asyncio.create_task(feed.run(stop))
        try:
            await until(lambda: feed.applied_version > 0)
            [service] = proxy.config.services
            assert (service.hostname, service.port) == ("reviews.shop.svc.cluster.local", 8080)
            assert [r.name for r in service.routes] == ["shop/canary/0"]
            assert sorted(proxy.endpoints["reviews.shop:8080"]) == [
                "10.1.1.5:8080",
                "10.1.2.5:8080",
            ]
            # HTTPRoutes of other namespaces are not this waypoint's business
            assert not any(k.namespace == "other" for k in feed.view.resources if k.name)
            # endpoints in the mesh are reached over HBONE as their own workload identity
            reached = feed.view.route_to("10.1.2.5:8080")
            assert reached is not None
            assert reached.peer == ("10.1.2.5", 15008)
            assert reached.peer_identity.uri.endswith("/ns/shop/sa/reviews")
            # a change: applied, recompiled and ACKed
            before = feed.applied_version
            await asyncio.to_thread(apply, controller, route("second"))
            await until(lambda: feed.applied_version > before)
            assert [r.name for r in proxy.config.services[0].routes] == [
                "shop/canary/0",
                "shop/second/0",
            ]

            def acked() -> int:
                states = {s.node: s for s in controller.hub.agents()}
                return states["waypoint:shop/waypoint"].acked_version

            await until(lambda: acked() > before)
            # a renewal over mTLS with its own SVID: same identity, new certificate
            serial = svid.leaf.serial_number
            svid.install(await feed.issue(build_csr(svid.key, WAYPOINT_URI)))
            assert svid.leaf.serial_number != serial
            assert svid.renewals == 1
            # deleting its Waypoint leaves nothing to compile: NACKed, the last good config stays
            good = proxy.config
            gone = ResourceKey(Kind.WAYPOINT, "shop", "waypoint")
            await asyncio.to_thread(delete, controller, gone)
            await until(lambda: feed.last_error != "")
            assert "no Waypoint shop/waypoint" in feed.last_error
            assert proxy.config is good
            await until(
                lambda: any(
                    s.nack_error and s.node == "waypoint:shop/waypoint"
                    for s in controller.hub.agents()
                )
            )
        finally:
            stop.set()
            await asyncio.wait_for(running, 10)
            await feed.close()

    asyncio.run(main())


def test_waypoint_credentials_are_good_for_its_own_identity_and_config_only(
    controller: Controller,
) -> None:
    apply(
        controller,
        *SHOP,
        {"apiVersion": "weft.io/v1", "kind": "Waypoint",
         "metadata": {"name": "other", "namespace": "shop"},
         "spec": {"address": "10.1.2.10", "node": "n2", "serviceAccount": "other"}},
    )  # fmt: skip

    async def main() -> None:
        # a waypoint token buys exactly that waypoint's identity...
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await join_as(
                join_address(controller),
                waypoint_token(controller),
                f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/reviews",
                bundle_pem=bundle_pem(controller),
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "the token is for" in (refused.value.details() or "")
        svid = await join_waypoint(options(controller, waypoint_token(controller)))
        async with ControllerClient(grpc_address(controller), svid.credentials()) as client:
            # ...renews only itself...
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.create_certificate(
                    build_csr(generate_key(), f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/reviews")
                )
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            # ...watches only its own configuration, and never a node's
            for node, waypoint in (("x", "shop/other"), ("n2", "")):
                assert await first_update_status(client, node, waypoint) == DENIED
        # a node certificate cannot watch as a waypoint either
        node = await asyncio.to_thread(join, controller, "n2")
        async with ControllerClient(grpc_address(controller), node.credentials()) as client:
            assert await first_update_status(client, "n2", "shop/waypoint") == DENIED

    asyncio.run(main())


def test_waypoint_svid_is_renewed_at_half_life_and_new_handshakes_present_it(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    CAFiles(state).init(TRUST_DOMAIN, dt.datetime.now(dt.UTC))
    short = Controller(
        ControllerConfig(
            state_dir=state, listen="127.0.0.1", grpc_port=0, join_port=0, http_port=0,
            policy=IssuancePolicy(svid_lifetime=dt.timedelta(seconds=2)),
        )
    )  # fmt: skip
    short.start()
    try:
        apply(short, *SHOP)

        async def main() -> None:
            svid = await join_waypoint(options(short, waypoint_token(short)))
            feed = DiscoveryFeed(
                options(short, "unused"), svid, WaypointProxy(WaypointConfig(services=()), {})
            )

            async def presented_serial() -> int:
                _, writer = await asyncio.open_connection(
                    "127.0.0.1", port, ssl=svid.client_context(svid.identity)
                )
                der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
                writer.close()
                return int(x509.load_der_x509_certificate(der).serial_number)

            server = await asyncio.start_server(
                lambda r, w: w.close(), "127.0.0.1", 0, ssl=svid.server_context()
            )
            port = server.sockets[0].getsockname()[1]
            first = svid.leaf.serial_number
            assert await presented_serial() == first
            renewing = asyncio.create_task(svid.keep_renewed(feed.issue))
            try:
                await until(lambda: svid.renewals >= 1, timeout=5)  # due after ~1 s
            finally:
                renewing.cancel()
            assert svid.leaf.serial_number != first
            assert await presented_serial() == svid.leaf.serial_number  # reloaded in place
            server.close()
            await feed.close()

        asyncio.run(main())
    finally:
        short.stop(grace=0.2)


def test_waypoint_run_with_controller_names_what_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from weft.cli import main

    assert main(["waypoint", "run", "--controller", "127.0.0.1:15012"]) == 2
    assert "--join-token, --trust-bundle" in capsys.readouterr().err
    shop = tmp_path / "shop.yaml"
    shop.write_text("")
    argv = ["waypoint", "run", "--controller", "127.0.0.1:15012", "-f", str(shop)]
    assert main(argv) == 2
    assert "-f and --controller" in capsys.readouterr().err
    token = tmp_path / "token"
    token.write_text("weft-join.x.y\n")
    argv = ["waypoint", "run", "--controller", "127.0.0.1:1", "--join-token", str(token),
            "--trust-bundle", str(tmp_path / "missing.pem")]  # fmt: skip
    assert main(argv) == 2
    assert "--trust-bundle" in capsys.readouterr().err


def test_a_restarted_waypoint_uses_its_saved_svid_without_a_new_token(
    controller: Controller, tmp_path: Path
) -> None:
    apply(controller, *SHOP)
    state = tmp_path / "waypoint-state"
    first = replace(options(controller, waypoint_token(controller)), state_dir=state)

    async def main() -> None:
        svid = await join_waypoint(first)
        assert (state / "svid.pem").stat().st_mode & 0o777 == 0o600
        # a restart: the token is spent, the saved SVID is used
        again = await join_waypoint(replace(first, token=""))
        assert again.leaf.serial_number == svid.leaf.serial_number
        # renewals are saved too
        feed = DiscoveryFeed(replace(first, token=""), again, WaypointProxy(
            WaypointConfig(services=()), {}))  # fmt: skip
        again.install(await feed.issue(build_csr(again.key, WAYPOINT_URI)))
        await feed.close()
        third = await join_waypoint(replace(first, token=""))
        assert third.leaf.serial_number == again.leaf.serial_number != svid.leaf.serial_number
        # no saved SVID and no token: a clear refusal
        with pytest.raises(NoCredentialError, match="no join token"):
            await join_waypoint(replace(first, token="", state_dir=tmp_path / "empty"))

    asyncio.run(main())
