"""`weft waypoint compile|run`: from resource YAML to a serving waypoint, on loopback."""

from __future__ import annotations

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

from weft.cli import main

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
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", listen), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, "the waypoint never listened"
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                time.sleep(0.05)
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
