"""Micro-benchmark of the agents' per-connection cost on loopback: conn_client -> outbound -> HBONE
-> inbound -> echo_server, with the two agents' real data-path classes in two processes.

What `weft bench ... connrate` measures on weft-cross-node, without the lab: node1's
OutboundProxy (only the kernel's original-destination map is replaced, by a function naming the
server) and node2's Inbound, each with a CertificateManager fed by the controller's real CA, real
mTLS between them, the C echo_server and conn_client of bench/tools. It reports connections/s and
the CPU each agent spent per connection (utime + stime from /proc), and can profile each agent
with cProfile. Everything listens on 127.0.6.x; every load is bounded by seconds and a count.

    .venv/bin/python -m bench.agent_connrate --seconds 3 --parallel 8 --repeat 3
    .venv/bin/python -m bench.agent_connrate --profile /tmp/prof  # outbound.prof, inbound.prof
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime as dt
import multiprocessing
import multiprocessing.connection
import os
import pstats
import signal
import statistics
import subprocess
import sys
import time
from ipaddress import IPv4Address
from pathlib import Path

CLIENT_ADDRESS = "127.0.0.1"  # conn_client's source address: the frontend workload
SERVER_ADDRESS = "127.0.6.2"  # the server workload, node2; its agent's HBONE listener
AGENT_ADDRESS = "127.0.6.1"  # node1's outbound listener
ECHO_PORT = 7000
OUTBOUND_PORT = 15001
HBONE_PORT = 15008  # agent.outbound.HBONE_PORT: peers are dialled there

CLUSTER = f"""\
apiVersion: v1
kind: Namespace
metadata: {{name: shop, labels: {{weft.io/dataplane-mode: ambient}}}}
---
apiVersion: weft.io/v1
kind: Workload
metadata: {{name: client, namespace: shop, labels: {{app: client}}}}
spec: {{address: {CLIENT_ADDRESS}, node: node1, serviceAccount: client}}
---
apiVersion: weft.io/v1
kind: Workload
metadata: {{name: server, namespace: shop, labels: {{app: server}}}}
spec: {{address: {SERVER_ADDRESS}, node: node2, serviceAccount: server}}
---
apiVersion: v1
kind: Service
metadata: {{name: server, namespace: shop}}
spec:
  clusterIP: 10.96.0.11
  selector: {{app: server}}
  ports: [{{name: tcp, port: {ECHO_PORT}, targetPort: {ECHO_PORT}}}]
"""


def _node_state(node: str):  # type: ignore[no-untyped-def]
    import yaml

    from agent.state import NodeState
    from weft.api.convert import ConfigUpdate, ReceivedResource
    from weft.resources import parse_body

    upserts = tuple(ReceivedResource(parse_body(b), 1) for b in yaml.safe_load_all(CLUSTER))
    return NodeState(node).apply(ConfigUpdate(1, True, upserts, ()))


class _Issuer:
    """The controller's CA in-process (the same one for both agents: root passed as PEM)."""

    def __init__(self, root_pem: bytes, key_pem: bytes) -> None:
        from controller.ca import CertificateAuthority
        from weft.pki import certs_from_pem, key_from_pem

        self.ca = CertificateAuthority(
            "cluster.local", certs_from_pem(root_pem)[0], key_from_pem(key_pem)
        )
        self.bundle = root_pem

    async def __call__(self, csr: bytes):  # type: ignore[no-untyped-def]
        from weft.controller_client import IssuedCertificate
        from weft.pki import certs_to_pem, parse_csr

        request = parse_csr(csr)
        chain = self.ca.issue(
            request.public_key, request.uri, dt.timedelta(hours=2), dt.datetime.now(dt.UTC)
        )
        return IssuedCertificate(certs_to_pem(chain), self.bundle)


def _agent_process(
    side: str,
    root: tuple[bytes, bytes],
    profile: str,
    report: multiprocessing.connection.Connection,
    data_path: str = "python",
) -> None:
    import logging

    from agent.certs.manager import CertificateManager
    from agent.inbound import Inbound
    from agent.outbound import OutboundProxy
    from agent.telemetry import Telemetry
    from weft.hbone import HbonePool
    from weft.hbone.eventloop import new_event_loop

    logging.basicConfig(level=logging.WARNING)
    # The agent writes each connection's access-log line, as `weft agent run` does (to a file).
    logging.getLogger("weft.access").setLevel(logging.INFO)
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    node = "node1" if side == "outbound" else "node2"

    async def setup() -> object:
        issuer = _Issuer(*root)
        state = _node_state(node)
        certs = CertificateManager(issuer, issuer.bundle)
        certs.ensure(state.local_identities())
        for identity in state.local_identities():
            assert await certs.wait_issued(identity, 10)
        telemetry = Telemetry(open(os.devnull, "w"))  # noqa: SIM115 - the process's lifetime
        inbound = Inbound(
            lambda: state, certs, telemetry, IPv4Address(AGENT_ADDRESS), HBONE_PORT,
            data_path=data_path,
        )  # fmt: skip
        if side == "inbound":
            await inbound.sync()
            return inbound
        target = (IPv4Address(SERVER_ADDRESS), ECHO_PORT, 0)
        pool = HbonePool(certs.client_context, data_path=data_path)
        outbound = OutboundProxy(
            lambda: state, lambda peer, local: target, pool, inbound, telemetry
        )
        await outbound.start(AGENT_ADDRESS, OUTBOUND_PORT)
        return outbound

    agent = loop.run_until_complete(setup())
    profiler = cProfile.Profile() if profile else None
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    if profiler is not None:
        profiler.enable()  # from here on: the connections, not the setup
    report.send(os.getpid())
    loop.run_forever()
    _report_state(side, agent)
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(f"{profile}/{side}.prof")
        report.send(sum(calls for _, calls, *_ in pstats.Stats(profiler).stats.values()))
    os._exit(0)


def _report_state(side: str, agent: object) -> None:
    """What the agent still holds after the load (a growing count is a leak), on stderr."""
    import gc

    sessions = []
    if side == "outbound":
        pool = agent._pool  # type: ignore[attr-defined]
        sessions = [c.session for group in pool._connections.values() for c in group if c.session]
        connections = pool.connection_count()
        print(f"outbound: pool {pool.stats}, {connections} connections", file=sys.stderr)
    else:
        for _, server in agent.servers.values():  # type: ignore[attr-defined]
            sessions += list(server._sessions)
    # (streams Python knows, streams h2 or C holds): a native session has no h2 object
    held = [
        (len(s.streams), s.stats()["streams"] if hasattr(s, "stats") else len(s.core._h2.streams))
        for s in sessions
    ]
    print(
        f"{side}: sessions (streams, h2/C streams) {held}, objects {len(gc.get_objects())}",
        file=sys.stderr,
    )


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    from bench.loads.connrate import parse_conn_output
    from bench.native import build_tools
    from controller.ca import create_root
    from weft.pki import certs_to_pem, key_to_pem

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", default="", help="directory for outbound.prof/inbound.prof")
    parser.add_argument("--data-path", default="native", choices=("native", "python"))
    args = parser.parse_args(argv)
    tools = build_tools()
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    root, key = create_root("cluster.local", dt.datetime.now(dt.UTC))
    pems = (certs_to_pem([root]), key_to_pem(key))
    context = multiprocessing.get_context("spawn")
    echo = subprocess.Popen([str(tools.echo_server), SERVER_ADDRESS, str(ECHO_PORT)])
    children = []
    pids = []
    pipes = []
    connections = 0
    try:
        for side in ("inbound", "outbound"):
            parent, child = context.Pipe()
            process = context.Process(
                target=_agent_process, args=(side, pems, args.profile, child, args.data_path)
            )
            process.start()
            children.append(process)
            if not parent.poll(30):
                raise SystemExit(f"the {side} agent did not start")
            pids.append(parent.recv())
            pipes.append(parent)
        print(f"agents: inbound pid {pids[0]}, outbound pid {pids[1]}; load {os.getloadavg()}")
        rows = []
        for _ in range(args.repeat):
            before = [_cpu_seconds(pid) for pid in pids]
            started = time.monotonic()
            out = subprocess.run(
                [str(tools.conn_client), AGENT_ADDRESS, str(OUTBOUND_PORT), "1024",
                 f"{args.seconds:g}", "200000", str(args.parallel)],
                capture_output=True, text=True, timeout=args.seconds + 20, check=False,
            )  # fmt: skip
            wall = time.monotonic() - started
            run = parse_conn_output(out.stdout)
            cpu = [_cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True)]
            per = [c / max(run.connections, 1) * 1e6 for c in cpu]
            rows.append((run.rate, per[1], per[0]))
            connections += run.connections
            print(
                f"{run.rate:8.0f} conn/s  failures {run.failures}  outbound {per[1]:6.0f} us/conn"
                f"  inbound {per[0]:6.0f} us/conn  (cores {sum(cpu) / wall:.2f})"
                + (f"  [{out.stderr.strip()}]" if out.stderr.strip() else "")
            )
        if len(rows) > 1:
            med = [statistics.median(r[i] for r in rows) for i in range(3)]
            print(f"median: {med[0]:.0f} conn/s, outbound {med[1]:.0f} us, inbound {med[2]:.0f} us")
    finally:
        for process in children:
            if process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
            process.join(10)
        if args.profile and connections:
            for side, pipe in zip(("inbound", "outbound"), pipes, strict=True):
                if pipe.poll(5):
                    print(f"{side}: {pipe.recv() / connections:.0f} Python calls per connection")
        echo.terminate()
        echo.wait(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
