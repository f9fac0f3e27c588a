"""NodeAgent: join, follow the controller's config, and keep capture, certs and listeners in step.

Startup order matters for failing closed: the outbound listener is up before any workload is
enrolled, and the HBONE listeners of a workload exist only once it has an SVID. While the
controller is away the agent keeps its last good state and certificates (static stability); both
are saved in the state directory on every change, so a restart while it is away serves them too.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from agent.admin import HttpEndpoint, Response, set_log_level
from agent.certs.manager import CertificateManager, CertState
from agent.certs.node_cert import NodeCertificate
from agent.certs.saved import load_svids, save_svids
from agent.inbound import Inbound
from agent.outbound import OutboundProxy
from agent.plaintext_inbound import PlaintextInbound, permissive_addresses
from agent.runtime.capture import Capture
from agent.runtime.last_good import LastGoodConfig, SavedConfigError
from agent.runtime.plaintext_redirect import PlaintextRedirect
from agent.state import NodeState, StateRejectedError, workload_name
from agent.telemetry import Telemetry
from agent.tunnel.delivery import Delivery
from weft.api.convert import ConfigUpdate
from weft.controller_client import (
    ControllerClient,
    IssuedCertificate,
    NodeIdentity,
    follow_discovery,
    join_node,
    renew_node,
)
from weft.errors import UsageError
from weft.hbone import HbonePool
from weft.pki import certs_from_pem, key_from_pem, key_to_pem
from weft.private_file import write_private

log = logging.getLogger(__name__)

# The lab's pod gateway: every workload reaches its node there (vm/lab/plumbing.POD_GATEWAY).
DEFAULT_AGENT_ADDRESS = IPv4Address("169.254.1.1")


def _no_capture(peer: tuple[str, int], local: tuple[str, int]) -> None:
    return None


@dataclass(frozen=True)
class AgentConfig:
    node: str
    controller: str  # host:port of the controller's mTLS gRPC (15012)
    join_address: str  # host:port of the controller's join endpoint (15013)
    trust_bundle: Path
    join_token: Path | None
    state_dir: Path
    workloads_cgroup: Path | None  # None: no eBPF capture (tests of the tunnel path)
    agent_address: IPv4Address = DEFAULT_AGENT_ADDRESS
    trust_domain: str = "cluster.local"
    outbound_port: int = 15001
    hbone_port: int = 15008
    plaintext_port: int = 15006
    admin_address: tuple[str, int] = ("127.0.0.1", 15000)
    metrics_address: tuple[str, int] = ("0.0.0.0", 15020)
    pin_root: Path = Path("/sys/fs/bpf/weft")
    svid_ttl: int = 0  # seconds of validity asked for workload certificates; 0: the controller's
    # HBONE data path: "native" (weft._native moves the bytes in C) or "python"
    data_path: str = "python"


@dataclass
class Readiness:
    config: bool = False
    capture: bool = False
    problems: list[str] = field(default_factory=list)


class NodeAgent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.state = NodeState(config.node, config.trust_domain)
        self.telemetry = Telemetry()
        self.readiness = Readiness()
        self.stop = asyncio.Event()
        self.last_disconnect = ""
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._clients: list[ControllerClient] = []
        self._client_identity: NodeIdentity | None = None
        self.last_good = LastGoodConfig(config.state_dir / "config.json", config.node)
        self.capture: Capture | None = None
        if config.workloads_cgroup is not None:
            self.capture = Capture(
                config.node,
                config.pin_root,
                config.workloads_cgroup,
                config.agent_address,
                config.outbound_port,
            )

    # --- node identity ----------------------------------------------------------------------

    @property
    def node_pem(self) -> Path:
        return self.config.state_dir / "node.pem"

    async def node_identity(self) -> NodeIdentity:
        """The node certificate saved by an earlier run, else a new one from the join token."""
        bundle = self.config.trust_bundle.read_bytes()
        saved = self._saved_identity(bundle)
        if saved is not None:
            log.info("using the node certificate in %s", self.node_pem)
            return saved
        if self.config.join_token is None:
            raise UsageError(
                f"node {self.config.node} has no saved certificate in {self.node_pem}",
                hint="pass --join-token FILE (create one with 'weft controller token create')",
            )
        token = self.config.join_token.read_text().strip()
        identity = await join_node(
            self.config.join_address,
            token,
            self.config.node,
            trust_domain=self.config.trust_domain,
            bundle_pem=bundle,
        )
        self._save_identity(identity)
        log.info("joined as node %s; certificate saved in %s", identity.node, self.node_pem)
        return identity

    def _save_identity(self, identity: NodeIdentity) -> None:
        write_private(self.node_pem, identity.chain_pem + key_to_pem(identity.key))

    async def _renew_node(self, identity: NodeIdentity) -> NodeIdentity:
        return await renew_node(
            self.config.controller, identity, trust_domain=self.config.trust_domain
        )

    def _controller(self) -> ControllerClient:
        """A client authenticated with the node's current certificate (renewal makes a new one;
        the old ones close with the agent, so no call in flight is cut)."""
        identity = self.node_cert.identity
        if not self._clients or self._client_identity is not identity:
            self._clients.append(ControllerClient(self.config.controller, identity.credentials()))
            self._client_identity = identity
        return self._clients[-1]

    # --- saved state (static stability) -----------------------------------------------------

    @property
    def svids_file(self) -> Path:
        return self.config.state_dir / "svids.json"

    def _save_svids(self) -> None:
        try:
            save_svids(self.svids_file, self.certs.bundle_pem, self.certs.export())
        except OSError as err:
            log.warning("cannot save the certificates in %s: %s", self.svids_file, err.strerror)

    def _restore(self) -> None:
        """Serve the saved config and certificates until the controller sends a snapshot."""
        saved = load_svids(self.svids_file, dt.datetime.now(dt.UTC))
        if saved is not None:
            bundle, svids = saved
            self.certs.bundle_pem = bundle
            for svid in svids:
                self.certs.restore(svid.identity, svid.key, svid.chain_pem)
        try:
            update = self.last_good.load()
            if update is None:
                return
            self.state = self.state.apply(update)
        except (SavedConfigError, StateRejectedError) as err:
            log.warning("the saved config is not usable (%s); waiting for the controller", err)
            return
        self.telemetry.config_version.set(self.state.version)
        self.readiness.config = True
        log.info(
            "serving the saved config version %d (%d resources) and %d saved certificates"
            " until the controller answers",
            update.version, len(self.state.resources), len(saved[1]) if saved else 0,
        )  # fmt: skip

    def _saved_identity(self, bundle: bytes) -> NodeIdentity | None:
        try:
            text = self.node_pem.read_bytes()
        except FileNotFoundError:
            return None
        start = text.find(b"-----BEGIN PRIVATE KEY-----")
        certs = certs_from_pem(text[:start] if start >= 0 else text)
        if start < 0 or not certs:
            return None
        if certs[0].not_valid_after_utc <= dt.datetime.now(dt.UTC):
            log.warning("the saved node certificate expired; joining again")
            return None
        return NodeIdentity(self.config.node, key_from_pem(text[start:]), text[:start], bundle)

    # --- running ----------------------------------------------------------------------------

    async def run(self) -> None:
        config = self.config
        identity = await self.node_identity()
        self.node_cert = NodeCertificate(identity, self._renew_node, self._save_identity)

        async def issue(csr: bytes) -> IssuedCertificate:
            return await self._controller().create_certificate(csr, config.svid_ttl)

        self.certs = CertificateManager(issue, identity.bundle_pem, on_issued=self._save_svids)
        self._restore()
        self.pool = HbonePool(self.certs.client_context, data_path=config.data_path)
        self.inbound = Inbound(
            lambda: self.state,
            self.certs,
            self.telemetry,
            config.agent_address,
            config.hbone_port,
            data_path=config.data_path,
        )
        self.delivery = Delivery(config.hbone_port)
        self.delivery.install()
        original = self.capture.original_destination if self.capture else _no_capture
        self.outbound = OutboundProxy(
            lambda: self.state,
            original,
            self.pool,
            self.inbound,
            self.telemetry,
            splice_maps=lambda: self.capture.maps if self.capture is not None else None,
        )
        await self.outbound.start(str(config.agent_address), config.outbound_port)
        self.plaintext: PlaintextInbound | None = None
        self.redirect: PlaintextRedirect | None = None
        if self.capture is not None:  # node plumbing: only where the agent owns the node's netns
            self.plaintext = PlaintextInbound(
                lambda: self.state, self.telemetry, config.agent_address, config.plaintext_port
            )
            await self.plaintext.start(str(config.agent_address))
            self.redirect = PlaintextRedirect(
                config.agent_address, config.plaintext_port, config.hbone_port
            )
            self.redirect.install()
        if self.capture is None:
            self.readiness.capture = True
        elif self.capture.open_pinned():
            # A restart: capture is still attached and the maps are pinned; serve at once and
            # reload the programs in the background.
            self.readiness.capture = True
            self._tasks.append(asyncio.create_task(self._attach()))
        else:
            await self._attach()
        self.admin = HttpEndpoint(
            {
                "/config_dump": lambda q: Response.json(self.config_dump()),
                # the workloads' SVIDs, then the node's own certificate (towards the controller)
                "/certs": lambda q: Response.json([*self.certs.report(), self.node_cert.report()]),
                "/logging": set_log_level,
            }
        )
        self.metrics = HttpEndpoint(
            {
                "/metrics": self._metrics,
                "/healthz/ready": self._ready,
                "/stats/prometheus": self._metrics,
            }
        )
        await self.admin.start(*config.admin_address)
        await self.metrics.start(*config.metrics_address)
        log.info(
            "agent %s: outbound %s:%d, HBONE :%d, admin %s:%d, metrics %s:%d",
            config.node, config.agent_address, config.outbound_port, config.hbone_port,
            *config.admin_address, *config.metrics_address,
        )  # fmt: skip
        self._tasks += [
            asyncio.create_task(
                follow_discovery(
                    config.controller,
                    self.node_cert.credentials,
                    config.node,
                    self.apply,
                    self.stop,
                    on_disconnect=self._disconnected,
                )
            ),
            asyncio.create_task(self._reconcile_forever()),
            asyncio.create_task(self.node_cert.keep_renewed()),
        ]
        if self.readiness.config:
            self._dirty.set()  # the saved config: listeners and enrollment now, not at the 1 s tick
        try:
            await self.stop.wait()
        finally:
            await self.close()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.outbound.close()
        if self.plaintext is not None:
            await self.plaintext.close()  # the redirect stays: plaintext fails closed meanwhile
        await self.inbound.close()
        await self.pool.close()
        await self.certs.close()
        await self.admin.close()
        await self.metrics.close()
        for client in self._clients:
            await client.close()
        if self.capture is not None:
            self.capture.close()  # links and maps stay pinned: capture keeps failing closed

    async def _attach(self) -> None:
        assert self.capture is not None
        await asyncio.to_thread(self.capture.attach)
        self.readiness.capture = True
        self._dirty.set()

    def _disconnected(self, reason: str) -> None:
        self.last_disconnect = reason
        log.warning(
            "controller %s: %s; serving the last good config (version %d), reconnecting",
            self.config.controller, reason, self.state.version,
        )  # fmt: skip

    async def apply(self, update: ConfigUpdate) -> str | None:
        """Discovery callback: None to ACK, the reason to NACK (the last good state stays)."""
        try:
            self.state = self.state.apply(update)
        except StateRejectedError as err:
            log.warning("config version %d rejected: %s", update.version, err)
            return str(err)
        self.telemetry.config_version.set(self.state.version)
        self.readiness.config = True
        try:
            self.last_good.record(update)
        except OSError as err:  # serving goes on; only a restart without the controller suffers
            log.warning("cannot save config version %d: %s", update.version, err.strerror)
        log.info(
            "config version %d applied (%s): %d resources, %d local workloads",
            update.version, "snapshot" if update.snapshot else "delta",
            len(self.state.resources), len(self.state.local_workloads()),
        )  # fmt: skip
        self._dirty.set()
        return None

    async def _reconcile_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._dirty.wait()
            self._dirty.clear()
            try:
                await self.reconcile()
            except Exception:
                log.exception("reconciling the node state failed; retrying in 1 s")

    async def reconcile(self) -> None:
        """Certificates, HBONE delivery and listeners, then enrollment, for the current state."""
        state = self.state
        if not self.readiness.config:
            return
        self.certs.ensure(state.local_identities())
        meshed = [w for w in state.local_workloads() if state.in_mesh(w)]
        self.delivery.update(w.address for w in meshed)
        await self.inbound.sync()
        if self.redirect is not None:
            self.redirect.update(permissive_addresses(state))
        if self.capture is not None:
            # Workloads without an SVID yet are enrolled too: their connections fail (closed)
            # until it arrives, rather than leaving the mesh.
            self.capture.enroll(state)
            self.readiness.problems = await asyncio.to_thread(self.capture.problems)
        counts: dict[str, int] = {}
        for row in self.certs.report():
            counts[str(row["state"])] = counts.get(str(row["state"]), 0) + 1
        for s in CertState:
            self.telemetry.certificates.labels(s.value).set(counts.get(s.value, 0))

    # --- endpoints --------------------------------------------------------------------------

    def ready_problems(self) -> list[str]:
        problems = []
        if not self.readiness.config:
            problems.append("no config from the controller yet")
        if not self.readiness.capture:
            problems.append("capture not attached")
        for identity in sorted(self.state.local_identities()):
            if not self.certs.has(identity):
                problems.append(f"no certificate for {identity}")
        for w in self.state.local_workloads():
            if self.state.in_mesh(w) and w.address not in self.inbound.servers:
                problems.append(f"no HBONE listener for {workload_name(w)} on {w.address}")
        return problems + self.readiness.problems

    def _ready(self, query: object) -> Response:
        problems = self.ready_problems()
        return Response.json(
            {"ready": not problems, "problems": problems}, 503 if problems else 200
        )

    def _metrics(self, query: object) -> Response:
        return Response(200, self.telemetry.exposition(), "text/plain; version=0.0.4")

    def config_dump(self) -> dict[str, Any]:
        state = self.state
        return {
            "node": state.node,
            "version": state.version,
            "controller": self.config.controller,
            "last_disconnect": self.last_disconnect,
            "node_certificate": self.node_cert.report(),
            "resources": len(state.resources),
            "local_workloads": [
                {
                    "workload": workload_name(w),
                    "address": str(w.address),
                    "identity": state.identity(w).uri,
                    "in_mesh": state.in_mesh(w),
                    "mtls": state.mtls_mode(w, 0).value,
                    "inbound_listener": w.address in self.inbound.servers,
                }
                for w in state.local_workloads()
            ],
            "services": [
                {
                    "service": f"{s.metadata.name}.{s.metadata.namespace}",
                    "vip": str(s.vip),
                    "ports": [p.port for p in s.ports],
                    "endpoints": [str(w.address) for w in state.workloads() if s.selects(w)],
                }
                for s in state.services()
            ],
            "hbone_pool": {
                "connections": self.pool.connection_count(),
                "handshakes": self.pool.stats.handshakes,
                "streams_opened": self.pool.stats.streams_opened,
            },
            "ready_problems": self.ready_problems(),
        }
