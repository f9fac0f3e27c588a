"""A waypoint fed by the controller: join for its own SVID, watch its configuration, renew.

Bootstrap (as a node agent joins, but for a Waypoint resource): redeem a one-time token from
`weft controller token create --waypoint NS/NAME` with a CSR for the waypoint's own SPIFFE ID;
the key never leaves this process. Then, over mTLS with that SVID: DiscoveryService.Watch with
`subscribe.waypoint`, recompiling on every version and ACKing it, or NACKing it and keeping the
last good configuration; and CreateCertificate at half life, reloading the TLS contexts in place.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from waypoint import svid_store
from waypoint.channel import Reader, Writer
from waypoint.compiler import CompileError
from waypoint.discovery import WaypointView
from waypoint.fastpath.backend import FastUpstream
from waypoint.fastpath.pool import dial_tcp
from waypoint.outbound import EndpointRoute, HboneOutbound
from waypoint.proxy import WaypointProxy
from waypoint.svid import WaypointSvid, utc_now
from waypoint.upstream import connect_tcp
from weft.api.convert import ConfigUpdate
from weft.controller_client import (
    ControllerClient,
    IssuedCertificate,
    follow_discovery,
    join_as,
)
from weft.hbone import HbonePool
from weft.identity import Identity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ControllerOptions:
    controller: str  # host:port of the controller's mTLS gRPC (15012)
    join_address: str  # host:port of its join listener (15013)
    token: str
    bundle_pem: bytes  # the mesh trust bundle, to verify the controller while joining
    name: str
    namespace: str
    service_account: str
    trust_domain: str
    state_dir: Path | None = None  # where the SVID is kept across restarts (svid_store)


class NoCredentialError(Exception):
    """Neither a saved SVID nor a join token: the waypoint cannot get an identity."""


async def join(options: ControllerOptions) -> WaypointSvid:
    """The SVID saved in the state dir while valid, else one bought with the join token."""
    identity = Identity.for_workload(
        options.namespace, options.service_account, options.trust_domain
    )
    if options.state_dir is not None:
        saved = svid_store.load(options.state_dir, identity, utc_now())
        if saved is not None:
            log.info("using the SVID saved in %s", options.state_dir)
            return saved
    if not options.token:
        where = f"no valid SVID saved in {options.state_dir} and " if options.state_dir else ""
        raise NoCredentialError(f"{where}no join token")
    joined = await join_as(
        options.join_address, options.token, identity.uri, bundle_pem=options.bundle_pem
    )
    svid = WaypointSvid(identity, joined.key, joined.chain_pem, joined.bundle_pem)
    if options.state_dir is not None:
        svid_store.save(options.state_dir, svid)
    return svid


class DiscoveryFeed:
    """Keeps a proxy configured from the controller: apply, compile, ACK or NACK."""

    def __init__(
        self,
        options: ControllerOptions,
        svid: WaypointSvid,
        proxy: WaypointProxy,
        on_applied: Callable[[int], None] | None = None,
    ) -> None:
        self.options = options
        self.svid = svid
        self.proxy = proxy
        self.view = WaypointView(options.name, options.namespace, options.trust_domain)
        self.applied_version = 0  # 0: no configuration yet (not ready)
        self.last_error = ""
        self._on_applied = on_applied
        self.pool = HbonePool(svid.client_context)
        state_dir = options.state_dir
        if state_dir is not None:
            svid.on_renewed = lambda renewed: svid_store.save(state_dir, renewed)
        self.outbound = HboneOutbound(self.pool, svid.identity, self._route, options.name)

    def _route(self, endpoint: str) -> EndpointRoute | None:
        return self.view.route_to(endpoint)  # the view in force when the connection is made

    @property
    def subject(self) -> str:
        return f"waypoint:{self.options.namespace}/{self.options.name}"

    async def connect(self, endpoint: str) -> tuple[Reader, Writer]:
        """An endpoint in the mesh through its node agent (HBONE, as this waypoint); one
        outside the mesh over plain TCP, as a node agent would."""
        if self.view.route_to(endpoint) is None:
            return await connect_tcp(endpoint)
        return await self.outbound.connect(endpoint)

    async def fast_dial(self, endpoint: str, factory: Callable[[], FastUpstream]) -> FastUpstream:
        """The fast path's connect, chosen as connect() chooses: HBONE in the mesh, else TCP."""
        if self.view.route_to(endpoint) is None:
            return await dial_tcp(endpoint, factory)
        return await self.outbound.dial(endpoint, factory)

    async def apply(self, update: ConfigUpdate) -> str | None:
        """None when the update is in force; otherwise why not (the NACK's text)."""
        try:
            view = self.view.apply(update)
            compiled = view.compile()
        except (CompileError, ValueError) as error:
            self.last_error = str(error)
            log.warning("configuration version %d refused: %s", update.version, error)
            return str(error)
        self.view = view
        self.proxy.update(compiled.config, compiled.endpoints)
        self.applied_version = update.version
        self.last_error = ""
        services = ", ".join(f"{s.hostname}:{s.port}" for s in compiled.config.services)
        log.info("configuration version %d applied: %s", update.version, services or "nothing")
        if self._on_applied is not None:
            self._on_applied(update.version)
        return None

    def dump(self) -> dict[str, object]:
        """What /config_dump shows: the version in force, the last refusal, what is served."""
        return {
            "waypoint": f"{self.options.namespace}/{self.options.name}",
            "version": self.applied_version,
            "last_error": self.last_error,
            "services": [f"{s.hostname}:{s.port}" for s in self.proxy.config.services],
            "routes": {
                f"{s.hostname}:{s.port}": [r.name for r in s.routes]
                for s in self.proxy.config.services
            },
            "endpoints": {k: list(v) for k, v in sorted(self.proxy.endpoints.items())},
            # connections (tunnels) the fast path handed to the general path, and those it serves
            "general_connections": self.proxy.general_connections,
            "fast_connections": len(self.proxy.fast_fronts),
            "certificate": self.svid.report(),
        }

    async def issue(self, csr_pem: bytes) -> IssuedCertificate:
        async with ControllerClient(self.options.controller, self.svid.credentials()) as client:
            return await client.create_certificate(csr_pem)

    async def run(self, stop: asyncio.Event) -> None:
        """Follow discovery and keep the SVID renewed until `stop` is set."""
        renewal = asyncio.get_running_loop().create_task(self.svid.keep_renewed(self.issue))
        try:
            await follow_discovery(
                self.options.controller,
                self.svid.credentials,
                self.subject,
                self.apply,
                stop,
                on_disconnect=lambda reason: log.warning(
                    "controller stream ended (%s); serving version %d", reason, self.applied_version
                ),
                waypoint=f"{self.options.namespace}/{self.options.name}",
            )
        finally:
            renewal.cancel()
            await asyncio.gather(renewal, return_exceptions=True)

    async def close(self) -> None:
        await self.outbound.close()
        await self.pool.close()
