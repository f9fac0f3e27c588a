"""The running controller: store, catalog, CA, gRPC listeners (mTLS and join) and HTTP status.

Ports: `grpc_port` (15012) requires a client certificate from the trust bundle and serves the
Identity, Discovery and Admin services; `join_port` (15013) is server-authenticated TLS only and
accepts nothing but JoinNode and GetTrustBundle, for agents that have no node certificate yet
(grpcio cannot ask for an optional client certificate, so joining needs its own listener);
`http_port` (15014) serves /metrics and /healthz.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from concurrent import futures
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

import grpc

from controller.admin_service import AdminServicer
from controller.ca_files import CAFiles
from controller.catalog import Catalog
from controller.discovery import DiscoveryHub
from controller.discovery_service import DiscoveryServicer
from controller.http_status import StatusHTTPServer
from controller.identity_service import IdentityServicer, IssuancePolicy
from controller.metrics import AgentCollector, ControllerMetrics
from controller.store import Store
from controller.trust import TrustProvider
from weft.api.v1 import admin_pb2_grpc, identity_pb2_grpc
from weft.controller_client import DEFAULT_STATE_DIR
from weft.errors import UnavailableError

LOG = logging.getLogger("weft.controller")
MAX_MESSAGE_BYTES = 256 * 1024 * 1024  # a full snapshot of a large mesh is one message
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
]


@dataclass(frozen=True)
class ControllerConfig:
    state_dir: Path = DEFAULT_STATE_DIR
    listen: str = "0.0.0.0"
    grpc_port: int = 15012
    join_port: int = 15013
    http_port: int = 15014
    policy: IssuancePolicy = field(default_factory=IssuancePolicy)
    max_workers: int = 128  # each discovery stream holds one worker thread


class _RotatingCredentials:
    """Serves the current controller cert and trust bundle; picks up rotate-root on handshake."""

    def __init__(self, trust: TrustProvider) -> None:
        self.trust = trust
        self._served: tuple[int, bytes] = (-1, b"")

    def _config(self) -> grpc.ServerCertificateConfiguration:
        key, chain = self.trust.server_pair()
        bundle = self.trust.bundle_pem()
        self._served = (self.trust.generation, bundle)
        return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=bundle)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            current = (self.trust.generation, self.trust.bundle_pem())
        except Exception:  # a half-written rotation: keep serving what worked
            LOG.exception("reading the CA files failed; keeping the current TLS configuration")
            return None
        return None if current == self._served else self._config()

    def credentials(self, require_client_auth: bool) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._config(),
            self.fetch,  # type: ignore[arg-type]  # grpcio accepts None: "nothing changed"
            require_client_authentication=require_client_auth,
        )


class Controller:
    def __init__(self, config: ControllerConfig) -> None:
        self.config = config
        files = CAFiles(config.state_dir)
        if not files.exists():
            raise UnavailableError(
                f"no controller state in {config.state_dir}",
                hint=f"run 'weft controller init --state-dir {config.state_dir}' first",
            )
        self.started_at = time.time()
        self.store = Store(config.state_dir / "store.db")
        self.trust = TrustProvider(files, server_ips=_server_ips(config.listen))
        self.metrics = ControllerMetrics()
        self.hub = DiscoveryHub(Catalog.load(self.store))
        self.metrics.registry.register(
            AgentCollector(
                self.hub.agents, lambda: self.hub.catalog.revision, self.store.node_certificates
            )
        )
        self._grpc: grpc.Server | None = None
        self._http: StatusHTTPServer | None = None
        self.grpc_port = self.join_port = self.http_port = 0

    def start(self) -> None:
        server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=self.config.max_workers, thread_name_prefix="weft-grpc"
            ),
            options=GRPC_OPTIONS,
            maximum_concurrent_rpcs=self.config.max_workers - 4,
        )
        policy = self.config.policy
        identity_pb2_grpc.add_IdentityServiceServicer_to_server(
            IdentityServicer(self.store, self.trust, self.hub, self.metrics, policy), server
        )
        discovery = DiscoveryServicer(self.hub, self.trust.trust_domain, self.metrics)
        server.add_generic_rpc_handlers([discovery.handler()])
        admin_pb2_grpc.add_AdminServiceServicer_to_server(
            AdminServicer(self.store, self.trust, self.hub, self.metrics, self.started_at), server
        )
        creds = _RotatingCredentials(self.trust)
        listen = self.config.listen
        self.grpc_port = _bind(server, listen, self.config.grpc_port, creds.credentials(True))
        self.join_port = _bind(server, listen, self.config.join_port, creds.credentials(False))
        server.start()
        self._grpc = server
        self._http = StatusHTTPServer(
            listen, self.config.http_port, self.metrics.registry, self._health_problem
        )
        self.http_port = self._http.port
        self._http.start()
        self.metrics.revision.set(self.hub.catalog.revision)
        LOG.info(
            "controller serving: mTLS %s:%d, join %s:%d, http %s:%d, revision %d, %d resources",
            listen,
            self.grpc_port,
            listen,
            self.join_port,
            listen,
            self.http_port,
            self.hub.catalog.revision,
            len(self.hub.catalog),
        )

    def _health_problem(self) -> str | None:
        try:
            self.store.revision()
        except Exception as err:
            return f"store unreadable: {err}"
        if not self.trust.bundle():
            return "trust bundle is empty"
        return None

    def wait(self) -> None:
        if self._grpc is not None:
            self._grpc.wait_for_termination()

    def stop(self, grace: float = 1.0) -> None:
        """Stop serving; calling it again does nothing."""
        if self._grpc is None:
            return
        self.hub.close()
        self._grpc.stop(grace).wait(grace + 1)
        self._grpc = None
        if self._http is not None:
            self._http.stop()
            self._http = None
        self.store.close()


def _bind(server: grpc.Server, host: str, port: int, creds: grpc.ServerCredentials) -> int:
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_secure_port(address, creds)
    except RuntimeError as err:
        bound = 0
        LOG.debug("bind %s failed: %s", address, err)
    if bound == 0:
        raise UnavailableError(
            f"cannot listen on {address}",
            hint="another process may hold the port; choose another with --grpc-port/--join-port",
        )
    return bound


def _server_ips(listen: str) -> tuple[IPv4Address | IPv6Address, ...]:
    ips: list[IPv4Address | IPv6Address] = [IPv4Address("127.0.0.1")]
    try:
        address = ip_address(listen)
    except ValueError:
        return tuple(ips)
    if not address.is_unspecified and address not in ips:
        ips.append(address)
    return tuple(ips)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
