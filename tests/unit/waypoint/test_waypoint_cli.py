"""`weft waypoint compile|run`: from resource YAML to a serving waypoint, on loopback."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from waypoint_testing import FRONTEND, WAYPOINT_ID, TestCa

from weft.cli import main
from weft.hbone import HbonePool
from weft.tls import client_context

SHOP = """\
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {weft.io/use-waypoint: shop-waypoint}}
---
apiVersion: weft.io/v1
kind: Workload
metadata: {name: reviews-v1-1, namespace: shop, labels: {app: reviews, version: v1}}
spec: {address: 10.1.1.5, node: n1, serviceAccount: reviews}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  selector: {app: reviews}
  ports: [{name: http, port: 9080, targetPort: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v1, namespace: shop}
spec:
  selector: {app: reviews, version: v1}
  ports: [{name: http, port: 9080, targetPort: 9081}]
---
apiVersion: weft.io/v1
kind: Waypoint
metadata: {name: shop-waypoint, namespace: shop}
spec: {address: 10.1.3.2, node: n3}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, port: 9080}]
  rules:
  - backendRefs: [{name: reviews-v1, port: 9080}]
    filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier: {set: [{name: x-served-by, value: shop-waypoint}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: shop}
spec:
  targetRefs: [{group: "", kind: Service, name: reviews}]
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
"""


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    path = tmp_path / "shop.yaml"
    path.write_text(SHOP)
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _Hello(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = f"hello from {self.path}".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def backend() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_compile_prints_routes_policies_and_endpoints_of_selected_workloads(
    shop: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["waypoint", "compile", "-f", str(shop), "--name", "shop-waypoint", "--namespace", "shop"]
    )
    document = json.loads(capsys.readouterr().out)
    assert code == 0
    reviews = document["config"]["services"][0]
    assert reviews["hostname"] == "reviews.shop.svc.cluster.local"
    assert reviews["routes"][0]["name"] == "shop/reviews/0"
    assert reviews["routes"][0]["filters"][0]["type"] == "ResponseHeaderModifier"
    assert reviews["authorization_policies"][0]["name"] == "deny-admin"
    assert document["endpoints"]["reviews-v1.shop:9080"] == ["10.1.1.5:9081"]


def test_unknown_waypoint_is_a_usage_error_naming_it(
    shop: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["waypoint", "compile", "-f", str(shop), "--name", "nope", "--namespace", "shop"])
    assert code == 2
    assert "no Waypoint shop/nope" in capsys.readouterr().err


def test_malformed_endpoint_override_names_the_flag(
    shop: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    compile_shop = ["waypoint", "compile", "-f", str(shop), "--name", "shop-waypoint"]
    code = main([*compile_shop, "--namespace", "shop", "--endpoint", "reviews-v1.shop=127.0.0.1"])
    assert code == 2
    assert "--endpoint: expected NAME.NAMESPACE:PORT=IP:PORT" in capsys.readouterr().err


def test_run_serves_routes_policy_and_metrics_until_its_time_is_up(
    shop: Path, backend: int
) -> None:
    listen, admin = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "weft.cli", "waypoint", "run", "-f", str(shop),
         "--name", "shop-waypoint", "--namespace", "shop",
         "--listen", f"127.0.0.1:{listen}", "--admin", f"127.0.0.1:{admin}",
         "--endpoint", f"reviews-v1.shop:9080=127.0.0.1:{backend}", "--max-seconds", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for_port(process, listen)
        proxy = http.client.HTTPConnection("127.0.0.1", listen, timeout=5)
        proxy.request("GET", "/reviews/1", headers={"Host": "reviews.shop:9080"})
        served = proxy.getresponse()
        assert (served.status, served.read()) == (200, b"hello from /reviews/1")
        assert served.getheader("x-served-by") == "shop-waypoint"
        proxy.request("GET", "/admin/keys", headers={"Host": "reviews"})
        denied = proxy.getresponse()
        assert (denied.status, denied.read()) == (403, b"RBAC: access denied")
        proxy.close()
        metrics = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)
        metrics.request("GET", "/metrics")
        text = metrics.getresponse().read().decode()
        assert "istio_requests_total{" in text
        assert 'response_code="403"' in text
        metrics.close()
    finally:
        process.terminate()
        out, err = process.communicate(timeout=10)
    log_lines = [json.loads(line) for line in out.splitlines()]
    assert [line["response_code"] for line in log_lines] == [200, 403]
    assert "serving reviews.shop.svc.cluster.local:9080" in err


def test_hbone_without_an_svid_is_a_usage_error(
    shop: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_shop = [
        "waypoint",
        "run",
        "-f",
        str(shop),
        "--name",
        "shop-waypoint",
        "--namespace",
        "shop",
    ]
    code = main([*run_shop, "--hbone", "127.0.0.1:0", "--cert", "/nonexistent.pem"])
    assert code == 2
    assert "--key, --trust-bundle missing" in capsys.readouterr().err


def wait_for_port(process: subprocess.Popen[str], port: int) -> None:
    deadline = time.monotonic() + 15
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            assert time.monotonic() < deadline, "the waypoint never listened"
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            time.sleep(0.05)


def test_run_accepts_hbone_tunnels_to_a_service_vip(
    shop: Path, backend: int, tmp_path: Path
) -> None:
    ca = TestCa()
    waypoint_svid = ca.issue(WAYPOINT_ID)
    (tmp_path / "cert.pem").write_bytes(waypoint_svid.chain_pem)
    (tmp_path / "key.pem").write_bytes(waypoint_svid.key_pem)
    (tmp_path / "bundle.pem").write_bytes(ca.bundle)
    hbone = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "weft.cli", "waypoint", "run", "-f", str(shop),
         "--name", "shop-waypoint", "--namespace", "shop", "--listen", "off", "--admin", "off",
         "--hbone", f"127.0.0.1:{hbone}", "--cert", str(tmp_path / "cert.pem"),
         "--key", str(tmp_path / "key.pem"), "--trust-bundle", str(tmp_path / "bundle.pem"),
         "--endpoint", f"reviews-v1.shop:9080=127.0.0.1:{backend}", "--max-seconds", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    client_svid = ca.issue(FRONTEND)

    async def through_tunnel() -> bytes:
        pool = HbonePool(lambda source: client_context(client_svid, ca.bundle))
        try:
            stream = await pool.open_stream(
                FRONTEND, WAYPOINT_ID, ("127.0.0.1", hbone), "10.96.0.10:9080"
            )
            await stream.write(b"GET /hello HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n")
            received = b""
            while data := await asyncio.wait_for(stream.read(), 5):
                received += data
            return received
        finally:
            await pool.close()

    try:
        wait_for_port(process, hbone)
        received = asyncio.run(through_tunnel())
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=10)
    assert received.startswith(b"HTTP/1.1 200")
    assert received.endswith(b"hello from /hello")
    (log,) = [json.loads(line) for line in out.splitlines()]
    assert log["source_principal"] == FRONTEND.uri
