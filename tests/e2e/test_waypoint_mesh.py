"""The demo's waypoints in the mesh: capture -> agent -> HBONE -> waypoint -> HBONE -> agent -> pod.

One mesh for the module (controller, agents, the waypoints of shop and ratings fed by the
controller, demo/waypoint.yaml applied). Clients run inside demo workloads, so every request
is captured by eBPF and carried by the real agents and waypoints.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vm.lab.lab import Lab
from vm.lab.mesh import MeshInfo, down_mesh, up_mesh, weft_on_control
from vm.lab.waypoints import DEMO_WAYPOINT_RESOURCES, DEMO_WAYPOINTS, waypoint_http

pytestmark = pytest.mark.lab

REVIEWS = ("10.96.0.12", 8080)
RATINGS = "10.96.0.20:9090"

# Sends requests over one keep-alive connection (a new one after a close or an error) until
# COUNT are done or SECONDS have passed; prints [[sent_at, status, x-demo-version, reason], ...].
PROBE = r"""
import http.client, json, sys, time
host, port, method, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
count, seconds = int(sys.argv[5]), float(sys.argv[6])
deadline = time.monotonic() + seconds
out = []
conn = http.client.HTTPConnection(host, port, timeout=5)
while len(out) < count and time.monotonic() < deadline:
    sent = time.time()
    try:
        conn.request(method, path)
        r = conn.getresponse()
        body = r.read()
        text = body[:40].decode("latin-1") if r.status >= 400 else ""
        reason = r.getheader("x-weft-reason") or text
        out.append([sent, r.status, r.getheader("x-demo-version") or "", reason])
        if (r.getheader("connection") or "").lower() == "close":
            conn.close()
    except Exception as e:
        out.append([sent, 0, "", repr(e)])
        conn.close()
print(json.dumps(out))
"""


def probe(
    lab: Lab,
    workload: str,
    count: int,
    *,
    method: str = "GET",
    path: str = "/reviews/1",
    seconds: float = 30.0,
) -> list[list[object]]:
    result = lab.exec(
        workload,
        [sys.executable, "-c", PROBE, *map(str, REVIEWS), method, path, str(count), str(seconds)],
        timeout=seconds + 20,
    )
    return list(json.loads(result.stdout))


@pytest.fixture(scope="module")
def mesh(lab: Lab) -> Iterator[MeshInfo]:
    info = up_mesh(lab, waypoints=DEMO_WAYPOINTS)
    try:
        yield info
    finally:
        down_mesh(lab, info)


def apply_yaml(lab: Lab, tmp_path: Path, name: str, text: str) -> float:
    """`weft apply -f` on the control node; returns when it returned (time.time())."""
    path = tmp_path / name
    path.write_text(text)
    weft_on_control(lab, "apply", "-f", str(path))
    return time.time()


def canary(v1: int, v2: int) -> str:
    return f"""\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: reviews, namespace: shop}}
spec:
  parentRefs: [{{group: "", kind: Service, name: reviews, port: 8080}}]
  rules:
  - backendRefs:
    - {{name: reviews-v1, port: 8080, weight: {v1}}}
    - {{name: reviews-v2, port: 8080, weight: {v2}}}
    timeouts: {{request: 5s}}
"""


def waypoint_metrics(lab: Lab, namespace: str) -> str:
    wp = next(w for w in DEMO_WAYPOINTS if w.namespace == namespace)
    status, body = waypoint_http(lab, wp.workload, "/metrics")
    assert status == 200, body
    return body


def test_canary_splits_90_10_and_moves_to_v2_within_1_s_of_apply(
    lab: Lab, mesh: MeshInfo, tmp_path: Path
) -> None:
    results = probe(lab, "frontend", 2000)
    assert len(results) == 2000
    statuses = {r[1] for r in results}
    assert statuses == {200}, [r for r in results if r[1] != 200][:5]
    v2_share = 100.0 * sum(1 for r in results if r[2] == "v2") / len(results)
    print(f"reviews v2 share over 2000 requests: {v2_share:.1f} %")
    assert 7.0 <= v2_share <= 13.0
    # the route is in the waypoint's metrics, reported as the waypoint
    metrics = waypoint_metrics(lab, "shop")
    assert 'reporter="waypoint"' in metrics
    assert 'source_principal="spiffe://cluster.local/ns/shop/sa/frontend"' in metrics

    # now 0/100, while a client keeps sending: new requests are v2 within 1 s of the apply
    during: list[list[object]] = []
    runner = threading.Thread(
        target=lambda: during.extend(probe(lab, "frontend", 10**6, seconds=5))
    )
    runner.start()
    try:
        time.sleep(1.5)
        applied = apply_yaml(lab, tmp_path, "all-v2.yaml", canary(0, 100))
        runner.join(30)
        after = [r for r in during if float(r[0]) >= applied + 1.0]
        assert len(after) > 50, len(after)
        assert {r[2] for r in after} == {"v2"}
        last_v1 = max((float(r[0]) for r in during if r[2] == "v1"), default=0.0)
        print(f"last v1 request sent {last_v1 - applied:+.3f} s after 'weft apply' returned")
        assert last_v1 < applied + 1.0
    finally:
        runner.join(30)
        weft_on_control(lab, "apply", "-f", str(DEMO_WAYPOINT_RESOURCES))


def test_l7_authorization_admits_frontend_get_and_denies_delete_and_others(
    lab: Lab, mesh: MeshInfo
) -> None:
    [[_, status, _, _]] = probe(lab, "frontend", 1)
    assert status == 200
    [[_, status, _, reason]] = probe(lab, "frontend", 1, method="DELETE")
    assert status == 403
    assert "RBAC: access denied" in str(reason) or "rbac" in str(reason)
    [[_, status, _, reason]] = probe(lab, "loadgen", 1)
    assert status == 403
    # the demo itself (frontend -> reviews through the waypoint) keeps working
    result = lab.traffic(requests=20, duration_limit=30)
    assert result.returncode == 0, result.stdout + result.stderr


GRPC_PROBE = r"""
import json, sys, grpc
from demo import ratings_pb2, ratings_pb2_grpc
out = {}
with grpc.insecure_channel(sys.argv[1]) as channel:
    stub = ratings_pb2_grpc.RatingsStub(channel)
    reply, call = stub.GetRating.with_call(ratings_pb2.GetRatingRequest(product_id=1), timeout=5)
    out["unary"] = [call.code().name, reply.product_id]
    try:
        stub.GetRating(ratings_pb2.GetRatingRequest(product_id=999), timeout=5)
        out["missing"] = ["OK", ""]
    except grpc.RpcError as e:
        out["missing"] = [e.code().name, e.details()]
    stream = stub.WatchRatings(
        ratings_pb2.WatchRatingsRequest(product_id=2, count=5, interval_ms=1), timeout=5)
    out["stream"] = [[m.sequence for m in stream], stream.code().name]
    try:
        list(stub.WatchRatings(ratings_pb2.WatchRatingsRequest(product_id=2, count=0), timeout=5))
        out["invalid"] = ["OK", ""]
    except grpc.RpcError as e:
        out["invalid"] = [e.code().name, e.details()]
print(json.dumps(out))
"""


def test_grpc_unary_and_streaming_keep_status_codes_and_trailers_through_the_waypoint(
    lab: Lab, mesh: MeshInfo
) -> None:
    before = waypoint_metrics(lab, "ratings").count("\n")
    result = lab.exec("loadgen", [sys.executable, "-c", GRPC_PROBE, RATINGS], timeout=30)
    out = json.loads(result.stdout)
    assert out["unary"] == ["OK", 1]
    assert out["missing"][0] == "NOT_FOUND"
    assert out["stream"] == [[1, 2, 3, 4, 5], "OK"]
    assert out["invalid"][0] == "INVALID_ARGUMENT"
    metrics = waypoint_metrics(lab, "ratings")
    assert 'destination_service="ratings.ratings.svc.cluster.local"' in metrics
    assert 'grpc_response_status="5"' in metrics or 'response_code="200"' in metrics
    assert metrics.count("\n") >= before
