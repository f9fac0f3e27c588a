"""The node agent's remaining promises, end to end in the lab (real eBPF, real mTLS, real netns).

One mesh for the module, in this order: the fabric as scapy sees it (only TLS to 15008, no
payload in clear; in clear once the namespace is disabled) with a long-lived connection across
`weft namespace disable|enable`; plaintext inbound 15006 for PERMISSIVE workloads; bad input on
15008, the expired client certificate among it; an agent restarted while the controller is
down; workload certificate renewal under load (agents restarted with a short --svid-ttl).
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from controller.ca_files import CAFiles
from tests.e2e.lab_checks import (
    CATALOG,
    CATALOG_VIP,
    ECHO_VIP,
    access_log,
    agent_metrics,
    applied,
    http_status,
    metric_total,
    raw_echo,
    wait_for,
)
from tests.resource_yaml import CATALOG_CALLERS, peer_authentication
from vm.lab.lab import Lab
from vm.lab.mesh import (
    MeshInfo,
    agent_argv,
    agent_http,
    control_node,
    reset_preexisting_connections,
    start_agent,
    start_controller,
    wait_agent_ready,
    weft_on_control,
)
from weft.pki import build_csr, cert_to_pem, generate_key, key_to_pem, parse_csr

pytestmark = pytest.mark.lab

MARKER = "weft-fabric-marker-5f3a9c"


def in_mesh(lab: Lab, node: str, workload: str) -> bool:
    _, body = agent_http(lab, node, "/config_dump", port=15000)
    rows = json.loads(body)["local_workloads"] if body.startswith("{") else []
    return any(r["workload"] == workload and r["in_mesh"] for r in rows)


# --- the fabric, with scapy ------------------------------------------------------------------

SNIFFER = """\
import json, os, sys, time
from scapy.all import IP, TCP, AsyncSniffer

marker, control, stop_file = sys.argv[1].encode(), sys.argv[2], sys.argv[3]
limit = float(sys.argv[4])
flows, ports, hits, clear_http, opened, listening = {}, set(), 0, 0, set(), set()

def seen(packet):
    global hits, clear_http
    if IP not in packet or TCP not in packet or control in (packet[IP].src, packet[IP].dst):
        return
    tcp = packet[TCP]
    flow = (packet[IP].src, tcp.sport, packet[IP].dst, tcp.dport)
    if tcp.flags.S and not tcp.flags.A:
        opened.add(flow)  # a connection that starts while we watch: its first bytes are known
        listening.add((packet[IP].dst, tcp.dport))
    payload = bytes(tcp.payload)
    if not payload:
        return
    # The service side of a packet is the end a SYN was sent to; for a connection opened before
    # we watched, 15008 if either end is HBONE, else the lower port (not a sure guess: a bench in
    # the same lab session lets ephemeral ports start at 1024).
    if (packet[IP].dst, tcp.dport) in listening:
        ports.add(tcp.dport)
    elif (packet[IP].src, tcp.sport) in listening:
        ports.add(tcp.sport)
    elif 15008 in (tcp.sport, tcp.dport):
        ports.add(15008)
    else:
        ports.add(tcp.sport if tcp.sport < tcp.dport else tcp.dport)
    if flow in opened:
        flows.setdefault(flow, payload[:2].hex())
    hits += marker in payload
    clear_http += b"HTTP/1.1" in payload

sniffer = AsyncSniffer(iface="br0", prn=seen, store=False)
sniffer.start()
time.sleep(1.0)
print("sniffing", flush=True)
deadline = time.monotonic() + limit
while time.monotonic() < deadline and not os.path.exists(stop_file):
    time.sleep(0.1)
sniffer.stop()
print(json.dumps({
    "flows": len(flows), "service_ports": sorted(ports), "marker_hits": hits,
    "clear_http": clear_http,
    "first_bytes": sorted(set(flows.values())),
}))
"""


def sniff_fabric(lab: Lab, tmp_path: Path, traffic: Callable[[], None]) -> dict[str, object]:
    """scapy on the fabric bridge (netns weft-fabric) while `traffic()` runs; a summary."""
    script, stop = tmp_path / "sniff.py", tmp_path / "stop"
    script.write_text(SNIFFER)
    stop.unlink(missing_ok=True)
    control = control_node(lab)
    sniffer = subprocess.Popen(
        ["ip", "netns", "exec", "weft-fabric", sys.executable, str(script), MARKER,
         str(control.ip), str(stop), "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert sniffer.stdout is not None
        assert sniffer.stdout.readline().strip() == "sniffing", sniffer.stderr
        traffic()
    finally:
        stop.touch()
        out, err = sniffer.communicate(timeout=30)
    assert sniffer.returncode == 0, err
    summary: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return summary


def marked_requests(lab: Lab, count: int) -> None:
    """loadgen (node1) -> catalog (node2): new connections whose request carries MARKER."""
    for _ in range(count):
        status = http_status(lab, "loadgen", f"http://{CATALOG_VIP}:8080/products?m={MARKER}")
        assert status not in ("", "000"), status


LONG_LIVED = """\
import json, os, socket, sys, time
status, stop = sys.argv[1], sys.argv[2]
s = socket.create_connection((sys.argv[3], 7000), timeout=5)
deadline, done = time.monotonic() + 240, 0
try:
    while time.monotonic() < deadline and not os.path.exists(stop):
        message = b"ping %d " % done * 16
        s.sendall(message)
        got = b""
        while len(got) < len(message):
            chunk = s.recv(65536)
            assert chunk, "closed"
            got += chunk
        assert got == message, got[:40]
        done += 1
        with open(status + ".tmp", "w") as f:
            json.dump({"roundtrips": done}, f)
        os.replace(status + ".tmp", status)
        time.sleep(0.1)
except Exception as e:
    with open(status + ".tmp", "w") as f:
        json.dump({"roundtrips": done, "error": repr(e)}, f)
    os.replace(status + ".tmp", status)
"""


class LongLivedEcho:
    """A raw TCP connection from loadgen to the echo service, exchanging every 0.1 s (bounded:
    240 s at most, or until stopped)."""

    def __init__(self, lab: Lab, tmp_path: Path) -> None:
        self.lab = lab
        self.status, self.stop_file = tmp_path / "echo.json", tmp_path / "echo.stop"
        script = tmp_path / "long_lived.py"
        script.write_text(LONG_LIVED)
        self.pid = lab.spawn(
            "loadgen",
            [sys.executable, str(script), str(self.status), str(self.stop_file), ECHO_VIP],
            "long-lived-echo",
        )
        wait_for(lambda: self.roundtrips() > 0, 10, "the long-lived echo connection")

    def report(self) -> dict[str, object]:
        try:
            return dict(json.loads(self.status.read_text()))
        except (FileNotFoundError, ValueError):
            return {"roundtrips": 0}

    def roundtrips(self) -> int:
        report = self.report()
        assert "error" not in report, f"the long-lived connection broke: {report}"
        return int(str(report["roundtrips"]))

    def still_working(self) -> None:
        before = self.roundtrips()
        wait_for(lambda: self.roundtrips() >= before + 5, 10, "more echo round trips")

    def close(self) -> None:
        if not self.stop_file.exists():
            self.stop_file.touch()
            time.sleep(0.3)
            self.lab.stop(self.pid)


def test_fabric_shows_only_tls_to_15008_and_the_payload_once_the_namespace_is_disabled(
    lab: Lab, mesh: MeshInfo, tmp_path: Path
) -> None:
    echo = LongLivedEcho(lab, tmp_path)
    try:

        def meshed_traffic() -> None:
            marked_requests(lab, 5)
            result = lab.traffic(requests=30, duration_limit=30)
            assert result.returncode == 0, result.stdout + result.stderr

        meshed = sniff_fabric(lab, tmp_path, meshed_traffic)
        print(f"meshed: {meshed}")
        assert meshed["service_ports"] == [15008], meshed  # between nodes: HBONE only
        # every connection opened meanwhile starts with a TLS handshake record, both ways
        assert set(meshed["first_bytes"]) <= {"1603"}, meshed  # type: ignore[call-overload]
        assert meshed["marker_hits"] == 0, meshed
        assert meshed["clear_http"] == 0, meshed
        echo.still_working()

        weft_on_control(lab, "namespace", "disable", "shop")
        try:
            wait_for(lambda: not in_mesh(lab, "node1", "shop/loadgen"), 15, "shop disabled")
            echo.still_working()  # opened through the mesh: it survives the switch
            clear = sniff_fabric(lab, tmp_path, lambda: marked_requests(lab, 5))
            print(f"disabled: {clear}")
            # The check can fail: new connections now cross the fabric in clear.
            assert int(str(clear["marker_hits"])) >= 1, clear
            assert 8080 in clear["service_ports"], clear  # type: ignore[operator]
        finally:
            weft_on_control(lab, "namespace", "enable", "shop")
        wait_for(lambda: in_mesh(lab, "node1", "shop/loadgen"), 15, "shop enabled again")
        echo.still_working()
        echo.close()
        reset_preexisting_connections(lab, ["shop"])  # keep-alives opened while it was off
        again = sniff_fabric(lab, tmp_path, lambda: marked_requests(lab, 3))
        assert again["marker_hits"] == 0, again
        assert again["service_ports"] == [15008], again
    finally:
        echo.close()


# --- plaintext inbound (15006) -----------------------------------------------------------------

STRICT_CATALOG = peer_authentication("catalog-strict", "shop", "STRICT", app="catalog")


def plaintext_opened(lab: Lab, node: str, workload: str) -> float:
    return metric_total(
        agent_metrics(lab, node),
        "istio_tcp_connections_opened_total",
        reporter="destination",
        destination_workload=workload,
        connection_security_policy="none",
    )


def test_plaintext_to_a_permissive_workload_goes_through_the_agent_under_policy(
    lab: Lab, mesh: MeshInfo, tmp_path: Path
) -> None:
    catalog = f"http://{lab.workload_ip('catalog')}:8080/products"
    before = plaintext_opened(lab, "node2", "catalog")
    # legacy-client is outside the mesh (no SVID): same node as catalog, through its agent
    assert http_status(lab, "legacy-client", catalog) == "200"
    assert plaintext_opened(lab, "node2", "catalog") > before
    assert any(
        r.get("route") == "plaintext"
        and r.get("destination_workload") == "catalog"
        and r.get("source_workload") == "legacy-client"
        for r in access_log(lab, "node2")
    )
    # across nodes too: legacy-client (node2) -> echo's pod (node1), raw TCP with half-close
    echo_before = plaintext_opened(lab, "node1", "echo")
    assert raw_echo(lab, "legacy-client", lab.workload_ip("echo"))
    assert plaintext_opened(lab, "node1", "echo") > echo_before

    with applied(lab, tmp_path, "principals.yaml", CATALOG_CALLERS):
        # a rule naming principals never admits a client without an identity
        wait_for(lambda: http_status(lab, "legacy-client", catalog) == "000", 15, "refusal")
        assert http_status(lab, "frontend", CATALOG) == "200"
        assert any(
            r.get("route") == "plaintext"
            and r.get("outcome") == "denied"
            and r.get("policy") == "shop/catalog-callers"
            for r in access_log(lab, "node2")
        )
    wait_for(lambda: http_status(lab, "legacy-client", catalog) == "200", 15, "allowed again")

    with applied(lab, tmp_path, "strict.yaml", STRICT_CATALOG):
        wait_for(
            lambda: http_status(lab, "legacy-client", catalog, timeout=2) == "000", 15, "a drop"
        )
        opened = plaintext_opened(lab, "node2", "catalog")
        assert http_status(lab, "legacy-client", catalog, timeout=2) == "000"
        assert plaintext_opened(lab, "node2", "catalog") == opened  # dropped, not relayed
        assert http_status(lab, "frontend", CATALOG) == "200"
    wait_for(lambda: http_status(lab, "legacy-client", catalog) == "200", 15, "PERMISSIVE again")


# --- bad input on 15008 ------------------------------------------------------------------------

PROBE = """\
import json, socket, ssl, sys
import h2.config, h2.connection, h2.events, h2.exceptions

target, other, good_cert, good_key, old_cert, old_key = sys.argv[1:7]

def tls(cert=None, key=None, alpn=("h2",)):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(list(alpn))
    return ctx.wrap_socket(socket.create_connection((target, 15008), timeout=4))

def drained(sock):
    try:
        return "closed" if sock.recv(65536) == b"" else "answered"
    except (ssl.SSLError, OSError) as e:
        return "closed"

def connect(headers, cert=good_cert, key=good_key, alpn=("h2",)):
    try:
        sock = tls(cert, key, alpn)
    except (ssl.SSLError, OSError) as e:
        return "closed"
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False))
    conn.initiate_connection()
    try:
        conn.send_headers(1, headers)
        sock.sendall(conn.data_to_send())
        while True:
            data = sock.recv(65536)
            if not data:
                return "closed"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    return "status " + dict(event.headers)[b":status"].decode()
                if isinstance(event, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                    return "closed"
            sock.sendall(conn.data_to_send())
    except (ssl.SSLError, OSError, h2.exceptions.ProtocolError):
        return "closed"

def authority(a):
    return [(":method", "CONNECT"), (":authority", a)]

results = {}
raw = socket.create_connection((target, 15008), timeout=4)
raw.sendall(b"\\x00garbage\\r\\n" * 64)
results["garbage"] = drained(raw)
try:
    s = tls()
    s.sendall(b"PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n" + bytes(9))
    results["no_certificate"] = drained(s)
except (ssl.SSLError, OSError):
    results["no_certificate"] = "closed"
results["wrong_alpn"] = connect(authority(f"{target}:8080"), alpn=("http/1.1",))
results["expired_certificate"] = connect(authority(f"{target}:8080"), old_cert, old_key)
results["malformed_connect"] = connect([(":method", "CONNECT"), (":path", "/")])
results["oversized_connect"] = connect(authority(f"{target}:8080") + [("x-big", "a" * 200000)])
results["not_this_node"] = connect(authority(f"{other}:7000"))
results["valid"] = connect(authority(f"{target}:8080"))
print(json.dumps(results))
"""


def mesh_certificate(
    mesh: MeshInfo, tmp_path: Path, name: str, *, lifetime: dt.timedelta, ago: dt.timedelta
) -> tuple[Path, Path]:
    """A certificate for shop/frontend from the mesh's own CA (the controller's state dir)."""
    ca = CAFiles(mesh.state_dir / "controller").load()
    key = generate_key()
    request = parse_csr(build_csr(key, "spiffe://cluster.local/ns/shop/sa/frontend"))
    now = dt.datetime.now(dt.UTC) - ago
    chain = ca.issue(request.public_key, request.uri, lifetime, now)
    cert, key_file = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert.write_bytes(b"".join(cert_to_pem(c) for c in chain))
    key_file.write_bytes(key_to_pem(key))
    return cert, key_file


def test_bad_input_on_15008_gets_its_status_or_a_close_and_the_agent_keeps_serving(
    lab: Lab, mesh: MeshInfo, tmp_path: Path
) -> None:
    good = mesh_certificate(
        mesh, tmp_path, "good", lifetime=dt.timedelta(hours=1), ago=dt.timedelta()
    )
    expired = mesh_certificate(
        mesh, tmp_path, "expired", lifetime=dt.timedelta(minutes=5), ago=dt.timedelta(hours=2)
    )
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    result = lab.node_exec(
        "node1",
        [sys.executable, str(script), lab.workload_ip("catalog"), lab.workload_ip("echo"),
         *map(str, good), *map(str, expired)],
        check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    outcome = json.loads(result.stdout)
    print(outcome)
    assert outcome["valid"] == "status 200"  # the probe itself speaks HBONE correctly
    assert outcome["garbage"] == "closed"
    assert outcome["no_certificate"] == "closed"
    assert outcome["wrong_alpn"] == "closed"
    assert outcome["expired_certificate"] == "closed"  # signed by the mesh CA, but expired
    assert outcome["malformed_connect"] == "status 400"
    assert outcome["oversized_connect"] in ("closed", "status 400", "status 431")
    assert outcome["not_this_node"] in ("status 401", "status 503")
    # and the agent still serves everyone else
    assert http_status(lab, "frontend", CATALOG) == "200"
    status, _ = agent_http(lab, "node2", "/healthz/ready")
    assert status == 200


# --- static stability across an agent restart --------------------------------------------------


def test_an_agent_restarted_while_the_controller_is_down_serves_known_destinations(
    lab: Lab, mesh: MeshInfo
) -> None:
    lab.stop(mesh.controller_pid)
    try:
        lab.stop(mesh.agent_pids["node1"])
        mesh.agent_pids["node1"] = start_agent(lab, "node1", mesh.controller)
        # ready from the saved config and certificates alone: the controller is away
        wait_agent_ready(lab, "node1", mesh.agent_pids["node1"], timeout=15)
        # new connections: cross-node over HBONE (loadgen's saved SVID) and same node
        wait_for(
            lambda: http_status(lab, "loadgen", CATALOG) == "200",
            5, "loadgen -> catalog with the controller down",
        )  # fmt: skip
        assert raw_echo(lab, "loadgen", ECHO_VIP)
        _, body = agent_http(lab, "node1", "/config_dump", port=15000)
        assert json.loads(body)["version"] > 0
        log = (lab.store.log_dir / "agent-node1.log").read_text()
        assert "serving the saved config version" in log
        assert "PRIVATE KEY" not in log  # the saved keys are never logged
    finally:
        mesh.controller_pid = start_controller(lab)
    # the agent resyncs: a policy applied now reaches it
    lab.traffic(requests=10, duration_limit=20)


# --- certificate renewal under load ------------------------------------------------------------

SVID_TTL = 16  # seconds: renewed every ~8 s


def serials(lab: Lab, node: str) -> dict[str, str]:
    status, body = agent_http(lab, node, "/certs", port=15000)
    assert status == 200, body
    return {
        r["identity"]: r["serial"]
        for r in json.loads(body)
        if r["state"] == "valid" and r.get("kind") != "node"
    }


def test_workload_certificate_renewal_under_load_drops_no_connection(
    lab: Lab, mesh: MeshInfo, tmp_path: Path
) -> None:
    # agents restarted asking for short-lived SVIDs (the controller caps, never extends, a TTL),
    # without their saved (24 h) ones, as on a fresh node
    for node in ("node1", "node2"):
        lab.stop(mesh.agent_pids[node])
        (mesh.state_dir / "agents" / node / "svids.json").unlink(missing_ok=True)
        argv = [*agent_argv(lab, node, mesh.controller), "--svid-ttl", str(SVID_TTL)]
        mesh.agent_pids[node] = lab.node_spawn(node, argv, f"agent-{node}")
    for node in ("node1", "node2"):
        wait_agent_ready(lab, node, mesh.agent_pids[node])
    wait_for(
        lambda: all(
            r["not_after"] and dt.datetime.fromisoformat(str(r["not_after"]))
            < dt.datetime.now(dt.UTC) + dt.timedelta(seconds=SVID_TTL + 5)
            for node in ("node1", "node2")
            for r in json.loads(agent_http(lab, node, "/certs", port=15000)[1])
            if r.get("kind") != "node"
        ),
        30, "short-lived SVIDs on both agents",
    )  # fmt: skip
    lab.traffic(requests=10, duration_limit=20)  # keep-alives of the old agents go away
    first = {node: serials(lab, node) for node in ("node1", "node2")}
    echo = LongLivedEcho(lab, tmp_path)
    rounds = []
    try:
        started = time.monotonic()
        # bounded load: rounds of the demo mix for a full SVID lifetime, so every SVID is renewed
        # at least once, most twice, under it (<= 60 rounds, <= 60 s)
        while len(rounds) < 60 and time.monotonic() - started < SVID_TTL:
            result = lab.traffic(requests=40, duration_limit=30, json_report=True)
            assert result.returncode == 0, result.stdout + result.stderr  # zero failed requests
            rounds.append(result)
        echo.still_working()  # a connection older than every renewal keeps working
    finally:
        echo.close()
    for node in ("node1", "node2"):
        now = serials(lab, node)
        assert now.keys() == first[node].keys()
        assert all(now[i] != first[node][i] for i in now), (first[node], now)
    print(f"{len(rounds)} load rounds over {time.monotonic() - started:.1f} s, all without error")
