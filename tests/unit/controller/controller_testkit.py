"""Controller test kit: resource documents, a real controller on loopback, a joined node."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.controller_process import spawn_controller_process
from controller.admin_client import AdminClient
from controller.ca_files import CAFiles
from controller.server import Controller, ControllerConfig
from weft.controller_client import Credentials, NodeIdentity, join_node
from weft.pki import certs_to_pem
from weft.resources import Document, ParsedResource, parse_documents


def workload_doc(
    name: str,
    node: str,
    *,
    ns: str = "shop",
    app: str | None = None,
    sa: str = "default",
    ip: str = "10.1.0.1",
) -> dict[str, object]:
    return {
        "apiVersion": "weft.io/v1",
        "kind": "Workload",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": app or name}},
        "spec": {"address": ip, "node": node, "serviceAccount": sa},
    }


def service_doc(name: str, app: str, ns: str = "shop", vip: str = "10.96.0.1") -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "clusterIP": vip,
            "selector": {"app": app},
            "ports": [{"port": 80, "targetPort": 8080}],
        },
    }


def namespace_doc(name: str, mode: str = "ambient") -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {"weft.io/dataplane-mode": mode}},
    }


def parsed(*bodies: dict[str, object]) -> list[ParsedResource]:
    return parse_documents([Document("test.yaml", i, b) for i, b in enumerate(bodies)])


def ip_of(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


# --- a real controller on loopback ephemeral ports ----------------------------------------------


TRUST_DOMAIN = "cluster.local"


def start_controller(state_dir: Path) -> Controller:
    if not CAFiles(state_dir).exists():
        CAFiles(state_dir).init(TRUST_DOMAIN, dt.datetime.now(dt.UTC))
    controller = Controller(
        ControllerConfig(
            state_dir=state_dir, listen="127.0.0.1", grpc_port=0, join_port=0, http_port=0
        )
    )
    controller.start()
    return controller


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[Controller]:
    running = start_controller(tmp_path / "state")
    yield running
    running.stop(grace=0.2)


def admin_credentials(controller: Controller) -> Credentials:
    return Credentials.from_file(controller.config.state_dir / "admin.pem")


def grpc_address(controller: Controller) -> str:
    return f"127.0.0.1:{controller.grpc_port}"


def join_address(controller: Controller) -> str:
    return f"127.0.0.1:{controller.join_port}"


def register(controller: Controller, *bodies: dict[str, object]) -> None:
    with AdminClient(grpc_address(controller), admin_credentials(controller)) as admin:
        admin.apply([Document("test.yaml", i, b) for i, b in enumerate(bodies)])


def bundle_pem(controller: Controller) -> bytes:
    return certs_to_pem(CAFiles(controller.config.state_dir).bundle(dt.datetime.now(dt.UTC)))


def join(controller: Controller, node: str, token: str | None = None) -> NodeIdentity:
    if token is None:
        token = controller.store.create_join_token(node, 60, dt.datetime.now(dt.UTC).timestamp())
    return asyncio.run(
        join_node(
            join_address(controller),
            token,
            node,
            trust_domain=TRUST_DOMAIN,
            bundle_pem=bundle_pem(controller),
        )
    )


def spawn_controller(state_dir: Path) -> tuple[subprocess.Popen[str], str]:
    """`weft controller run` as a real child process; returns it and its gRPC address."""
    if not CAFiles(state_dir).exists():
        CAFiles(state_dir).init(TRUST_DOMAIN, dt.datetime.now(dt.UTC))
    started = spawn_controller_process(state_dir)
    return started.proc, started.grpc
