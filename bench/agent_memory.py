"""Agent memory with 100 local workloads and 1,000 open meshed connections (issue #6's figure).

`sudo python -m bench.agent_memory` builds its own lab (under the machine-wide lab lock), adds
WORKLOADS idle workloads on node1 in the meshed namespace `shop` (one service account each, so
one SVID and one HBONE listener each) and an echo server on node2 behind a Service, brings the
mesh up, and reads both agents' RSS: idle, with CONNECTIONS connections open from CLIENTS of
the workloads to the echo service (each one echoed once, so it really crossed the mesh: node1's
agent -> HBONE -> node2's agent), and after they closed. Everything is bounded in count and
time; the lab is removed at the end. Result: bench/results/<ts>-agent-memory.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.lab_lock import lab_session_lock
from vm.lab.lab import Lab
from vm.lab.mesh import MeshInfo, agent_http, down_mesh, up_mesh, weft_on_control
from vm.lab.state import DEFAULT_STATE_DIR
from vm.lab.topology import load_topology
from weft.errors import UnavailableError

RESULTS = Path(__file__).parent / "results"
NAMESPACE = "shop"  # meshed (ambient) in the default topology
SERVER = "mem-server"
SERVER_VIP = "10.96.251.1"
PORT = 7000
CLIENT_LIFETIME = 180  # seconds a client holds its connections at most

CLIENT = """\
import json, os, socket, sys, time
address, count, status, stop, lifetime = sys.argv[1], int(sys.argv[2]), sys.argv[3], \\
    sys.argv[4], float(sys.argv[5])
sockets, errors = [], []
for i in range(count):
    try:
        s = socket.create_connection((address, 7000), timeout=10)
        s.sendall(b"m")
        if s.recv(1) != b"m":
            raise OSError("no echo")
        sockets.append(s)
    except OSError as e:
        errors.append(repr(e))
with open(status + ".tmp", "w") as f:
    json.dump({"open": len(sockets), "errors": errors[:5]}, f)
os.replace(status + ".tmp", status)
deadline = time.monotonic() + lifetime
while time.monotonic() < deadline and not os.path.exists(stop):
    time.sleep(0.2)
"""


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of `pid`, in KiB, from /proc."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def agents_rss(info: MeshInfo) -> dict[str, dict[str, int]]:
    return {node: rss_kib(pid) for node, pid in sorted(info.agent_pids.items())}


def wait(done: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise UnavailableError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.5)


def config_dump(lab: Lab, node: str) -> dict[str, Any]:
    status, body = agent_http(lab, node, "/config_dump", port=15000)
    if status != 200:
        raise UnavailableError(f"agent on {node}: /config_dump answered {status}")
    result: dict[str, Any] = json.loads(body)
    return result


def build(lab: Lab, workloads: int, say: Callable[[str], None]) -> None:
    say(f"adding {workloads} workloads on node1 and {SERVER} on node2")
    for i in range(workloads):
        lab.add_workload(f"mem-{i}", "node1", NAMESPACE, f"mem-{i}", {"app": f"mem-{i}"})
    lab.add_workload(SERVER, "node2", NAMESPACE, SERVER, {"app": SERVER})
    lab.spawn(SERVER, [sys.executable, "-m", "demo.echo", "--port", str(PORT)], SERVER)


def service_yaml() -> str:
    return (
        "apiVersion: v1\nkind: Service\n"
        f"metadata: {{name: {SERVER}, namespace: {NAMESPACE}}}\n"
        f"spec: {{clusterIP: {SERVER_VIP}, selector: {{app: {SERVER}}},"
        f" ports: [{{name: tcp, port: {PORT}, targetPort: {PORT}}}]}}\n"
    )


def open_connections(
    lab: Lab, work: Path, clients: int, connections: int
) -> tuple[list[int], Path, int]:
    """Start `clients` client processes holding `connections` in total; (pids, stop file, open)."""
    script, stop = work / "client.py", work / "stop"
    script.write_text(CLIENT)
    per_client = [connections // clients + (i < connections % clients) for i in range(clients)]
    pids, statuses = [], []
    for i, count in enumerate(per_client):
        status = work / f"client-{i}.json"
        statuses.append(status)
        argv = [sys.executable, str(script), SERVER_VIP, str(count), str(status), str(stop),
                str(CLIENT_LIFETIME)]  # fmt: skip
        pids.append(lab.spawn(f"mem-{i}", argv, f"mem-client-{i}"))
    wait(lambda: all(s.exists() for s in statuses), 120, "the clients to open their connections")
    reports = [json.loads(s.read_text()) for s in statuses]
    opened = sum(int(r["open"]) for r in reports)
    errors = [e for r in reports for e in r["errors"]]
    if errors:
        print(f"client errors (first ones): {errors[:3]}", file=sys.stderr)
    return pids, stop, opened


def measure(
    workloads: int, connections: int, clients: int, say: Callable[[str], None]
) -> dict[str, Any]:
    lab = Lab(load_topology(), DEFAULT_STATE_DIR)
    say("building the lab")
    lab.up(demo=False, replace=True)
    info: MeshInfo | None = None
    try:
        build(lab, workloads, say)
        say("starting the controller and the agents")
        info = up_mesh(lab, say)
        mesh = info
        with tempfile.TemporaryDirectory(prefix="weft-agent-memory-") as raw:
            work = Path(raw)
            (work / "service.yaml").write_text(service_yaml())
            weft_on_control(lab, "apply", "-f", str(work / "service.yaml"))
            wait(
                lambda: any(s["vip"] == SERVER_VIP for s in config_dump(lab, "node1")["services"]),
                30, "node1 to know the echo service",
            )  # fmt: skip
            time.sleep(2)  # let start-up garbage settle before the idle figure
            idle = agents_rss(mesh)
            say(f"idle: {idle}; opening {connections} connections from {clients} workloads")
            started = time.monotonic()
            pids, stop, opened = open_connections(lab, work, clients, connections)
            open_seconds = time.monotonic() - started
            time.sleep(1)
            loaded = agents_rss(mesh)
            pool = config_dump(lab, "node1")["hbone_pool"]
            say(f"{opened} open: {loaded}; pool {pool}")
            stop.touch()
            for pid in pids:
                lab.stop(pid)
            time.sleep(3)
            closed = agents_rss(mesh)
            say(f"closed: {closed}")
    finally:
        if info is not None:
            down_mesh(lab, info)
        lab.down()
    return {
        "kind": "agent-memory",
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "local_workloads_node1": workloads,
        "connections_requested": connections,
        "connections_open": opened,
        "client_workloads": clients,
        "seconds_to_open": round(open_seconds, 2),
        "path": "node1 workloads -> node1 agent -> HBONE (pooled) -> node2 agent -> echo on node2",
        "rss_kib": {"idle": idle, "open": loaded, "closed": closed},
        "rss_per_connection_kib": {
            node: round((loaded[node]["VmRSS"] - idle[node]["VmRSS"]) / max(opened, 1), 2)
            for node in idle
        },
        "hbone_pool_node1": pool,
        "loadavg_1m_after": os.getloadavg()[0],
        "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.agent_memory", description=__doc__)
    parser.add_argument("--workloads", type=int, default=100)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=20, help="workloads that open them")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--lock-wait", type=float, default=900, help="seconds to queue for the lab (default 900)"
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (it builds a lab): sudo python -m bench.agent_memory", file=sys.stderr)
        return 3
    if not 0 < args.clients <= args.workloads:
        parser.error("--clients must be between 1 and --workloads")

    def say(message: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)

    load_before = os.getloadavg()[0]
    with lab_session_lock(say, wait=args.lock_wait):
        result = measure(args.workloads, args.connections, args.clients, say)
    result["loadavg_1m_before"] = load_before
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f"{stamp}-agent-memory.json"
    path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    say(f"recorded {path}")
    print(json.dumps(result["rss_kib"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
