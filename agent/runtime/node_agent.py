"""NodeAgent: join, follow the controller's config, and keep capture, certs and listeners in step.

Startup order matters for failing closed: the outbound listener is up before any workload is
enrolled, and the HBONE listeners of a workload exist only once it has an SVID. While the
controller is away the agent keeps its last good state and certificates (static stability).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from agent.admin import HttpEndpoint, Response, set_log_level
from agent.certs.manager import CertificateManager, CertState
from agent.inbound import Inbound
from agent.outbound import OutboundProxy
from agent.runtime.capture import Capture
from agent.state import NodeState, StateRejectedError, workload_name
from agent.telemetry import Telemetry
from agent.tunnel.delivery import Delivery
from weft.api.convert import ConfigUpdate
from weft.controller_client import (
    ControllerClient,
    Credentials,
    IssuedCertificate,
    NodeIdentity,
    follow_discovery,
    join_node,
)
from weft.errors import UsageError
from weft.hbone import HbonePool
from weft.pki import certs_from_pem, key_from_pem, key_to_pem

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
    admin_address: tuple[str, int] = ("127.0.0.1", 15000)
    metrics_address: tuple[str, int] = ("0.0.0.0", 15020)
    pin_root: Path = Path("/sys/fs/bpf/weft")


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
        self.config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        descriptor = os.open(self.node_pem, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as out:
            out.write(identity.chain_pem + key_to_pem(identity.key))
        log.info("joined as node %s; certificate saved in %s", identity.node, self.node_pem)
        return identity

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
        credentials: Credentials = identity.credentials()
        client = ControllerClient(config.controller, credentials)

        async def issue(csr: bytes) -> IssuedCertificate:
            return await client.create_certificate(csr)

        self.certs = CertificateManager(issue, identity.bundle_pem)
        self.pool = HbonePool(self.certs.client_context)
        self.inbound = Inbound(
            lambda: self.state, self.certs, self.telemetry, config.agent_address, config.hbone_port
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
                "/certs": lambda q: Response.json(self.certs.report()),
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
                    lambda: credentials,
                    config.node,
                    self.apply,
                    self.stop,
                    on_disconnect=self._disconnected,
                )
            ),
            asyncio.create_task(self._reconcile_forever()),
        ]
        try:
            await self.stop.wait()
        finally:
            await self.close(client)

    async def close(self, client: ControllerClient) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.outbound.close()
        await self.inbound.close()
        await self.pool.close()
        await self.certs.close()
        await self.admin.close()
        await self.metrics.close()
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
