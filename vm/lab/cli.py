"""`weft lab`: the network-namespace lab's up, down, status, exec and traffic commands."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from vm.lab import cleanup, processes
from vm.lab.lab import Lab, require_root
from vm.lab.session import SessionLock
from vm.lab.state import DEFAULT_STATE_DIR, StateStore
from vm.lab.topology import DEFAULT_TOPOLOGY, load_topology, parse_topology, with_workers
from weft.errors import ExitCode, UsageError

EPILOG = """\
examples:
  sudo weft lab up --demo                 # 3 nodes (control, node1, node2) + the demo shop
  sudo weft lab up --demo --nodes 4       # 4 workers; demo workloads keep their nodes
  sudo weft lab up --replace              # tear down whatever runs (or crashed), build afresh
  sudo weft lab status                    # nodes, workloads, IPs, services, processes
  sudo weft lab status -o json
  sudo weft lab exec frontend -- curl -s http://10.96.0.11:8080/products
  sudo weft lab exec node1 -- ip route    # a node name runs the command in the node netns
  sudo weft lab traffic --requests 200    # the demo's load client; exit 1 on any error
  sudo weft lab logs frontend -n 20       # the end of a lab process's log
  sudo weft lab down                      # idempotent; also cleans up after a crash
  sudo weft lab up --vagrant              # the same nodes as VMs (libvirt/qemu, vm/README.md)
  sudo weft lab down --vagrant            # destroys the VMs, their networks and libvirtd

The lab lives in network namespaces weft-<node> and weft-<node>-<workload>, the cgroup
subtree weft/ of cgroup v2, and /run/weft/lab (state.json, logs/). Topology: vm/topology.yaml.
"""


def register(parser: argparse.ArgumentParser, name: str) -> None:
    parser.epilog = EPILOG
    parser.add_argument(
        "--state-dir",
        default=str(DEFAULT_STATE_DIR),
        help=f"where the lab records itself (default: {DEFAULT_STATE_DIR})",
    )
    sub = parser.add_subparsers(dest="lab_command", metavar="COMMAND")

    up = _subparser(sub, "up", "build the lab (and the demo shop with --demo)")
    up.add_argument(
        "-f",
        "--file",
        default=str(DEFAULT_TOPOLOGY),
        help="topology file (default: vm/topology.yaml)",
    )
    up.add_argument("--nodes", type=int, metavar="N", help="number of worker nodes")
    up.add_argument("--demo", action="store_true", help="deploy the demo shop and its services")
    up.add_argument(
        "--mesh",
        action="store_true",
        help="also start the controller and node agents (vm/lab/mesh.py); with --demo, the "
        "demo's waypoints and L7 resources too (demo/waypoint.yaml)",
    )
    up.add_argument(
        "--replace", action="store_true", help="tear down a running or crashed lab first"
    )
    _add_vagrant(up, "boot the topology's nodes as Vagrant VMs instead (vm/vagrant/, slow)")
    _add_wait(up)
    up.set_defaults(func=cmd_up)

    down = _subparser(sub, "down", "stop every lab process and remove the lab")
    _add_vagrant(down, "destroy the Vagrant lab's VMs, networks, volumes and libvirtd")
    _add_wait(down)
    down.set_defaults(func=cmd_down)

    status = _subparser(sub, "status", "nodes, workloads, services and processes (exit 4: down)")
    status.add_argument("-o", "--output", choices=("table", "json"), default="table")
    status.set_defaults(func=cmd_status)

    exec_ = _subparser(sub, "exec", "run a command in a workload (or node) and return its code")
    exec_.add_argument("target", help="a workload name, or a node name for the node's netns")
    exec_.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARG...]")
    exec_.set_defaults(func=cmd_exec)

    logs = _subparser(sub, "logs", "the end of a lab process's log (demo workloads, agents...)")
    logs.add_argument("name", help="the process name (a demo workload's name, or spawn()'s name)")
    logs.add_argument("-n", "--lines", type=int, default=40, help="how many lines (default 40)")
    logs.set_defaults(func=cmd_logs)

    traffic = _subparser(sub, "traffic", "run the demo's load client and print its report")
    traffic.add_argument("--requests", type=int, default=200, help="HTTP requests (default 200)")
    traffic.add_argument(
        "--duration-limit",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="stop sending after this long (default 60)",
    )
    traffic.add_argument("--json", action="store_true", help="the report as JSON")
    traffic.set_defaults(func=cmd_traffic)


def _add_vagrant(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--vagrant", action="store_true", help=help)


def _add_wait(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="if a test session or benchmark is using the lab, wait this long for it (default 0)",
    )


def _subparser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help: str
) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=help,
        description=help,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def cmd_up(args: argparse.Namespace) -> int:
    require_root("weft lab up")
    if args.vagrant:
        from vm.vagrant.cli import vagrant_up

        return vagrant_up(args)
    topology = load_topology(args.file)
    if args.nodes is not None:
        topology = with_workers(topology, args.nodes)
    lab = Lab(topology, args.state_dir)
    console = Console(stderr=True)
    started = time.monotonic()
    session = SessionLock()
    session.acquire(wait=args.wait, on_wait=console.print)

    def progress(step: str) -> None:
        status.update(f"[bold]{step}[/]")
        console.print(f"  {time.monotonic() - started:5.2f} s  {step}")

    try:
        with console.status("starting", spinner="dots") as status:
            lab.up(demo=args.demo, replace=args.replace, progress=progress)
            if args.mesh:
                from vm.lab.mesh import up_mesh
                from vm.lab.waypoints import DEMO_WAYPOINTS

                up_mesh(lab, progress, waypoints=DEMO_WAYPOINTS if args.demo else ())
    finally:
        session.release()
    elapsed = time.monotonic() - started
    if lab.last_cleanup is not None and not lab.last_cleanup.empty:
        console.print(f"cleaned up first: {lab.last_cleanup.summary()}")
    workloads = lab.workloads()
    console.print(
        f"[green]lab up[/] in {elapsed:.2f} s: {len(topology.nodes)} nodes, "
        f"{len(workloads)} workloads"
        + (f", {len(topology.demo.services)} services" if args.demo else "")
        + f" (state: {lab.store.path})"
    )
    console.print("next: 'sudo weft lab status', 'sudo weft lab traffic', 'sudo weft lab down'")
    return ExitCode.OK


def cmd_down(args: argparse.Namespace) -> int:
    require_root("weft lab down")
    if args.vagrant:
        from vm.vagrant.cli import vagrant_down

        return vagrant_down(args)
    store = StateStore(args.state_dir)
    state = store.load()
    topology = (
        parse_topology(state.topology, str(store.path))
        if state is not None and state.topology
        else load_topology()
    )
    started = time.monotonic()
    session = SessionLock()
    session.acquire(wait=args.wait, on_wait=lambda line: print(line, file=sys.stderr))
    try:
        report = Lab(topology, args.state_dir).down()
    finally:
        session.release()
    print(f"lab down in {time.monotonic() - started:.2f} s: {report.summary()}")
    return ExitCode.OK


def cmd_status(args: argparse.Namespace) -> int:
    require_root("weft lab status")
    store = StateStore(args.state_dir)
    state = store.load()
    if state is None or not state.topology:
        status: dict[str, Any] = {
            "state": "down",
            "stateFile": str(store.path),
            "leftovers": cleanup.find_leftovers(),
        }
    else:
        topology = parse_topology(state.topology, str(store.path))
        status = Lab(topology, args.state_dir).status()
    if args.output == "json":
        from weft.cli import print_json

        print_json(status)
    else:
        print_status_tables(status, Console())
    return ExitCode.OK if status["state"] != "down" else ExitCode.UNAVAILABLE


def print_status_tables(status: dict[str, Any], console: Console) -> None:
    if status["state"] == "down":
        console.print("no lab is running; start one with 'sudo weft lab up --demo'")
        if status["leftovers"]:
            console.print(
                f"[yellow]leftovers of an earlier lab[/]: {status['leftovers']}; "
                "'sudo weft lab down' removes them (so does the next 'up')"
            )
        return
    built = status.get("buildSeconds")
    console.print(
        f"lab [bold]{status['state']}[/]"
        + (f", built in {built:.2f} s" if built else "")
        + f"; state in {status['stateFile']}"
    )
    nodes = Table("node", "role", "fabric IP", "pod CIDR", "netns", title="nodes")
    for n in status["nodes"]:
        netns = _present(n["netns"], n["netnsPresent"])
        nodes.add_row(n["name"], n["role"], n["ip"], n["podCIDR"] or "-", netns)
    console.print(nodes)
    alive = {p["workload"]: p for p in status["processes"] if p["workload"]}
    workloads = Table(
        "workload", "namespace", "node", "IP", "ports", "process", "netns", title="workloads"
    )
    for w in status["workloads"]:
        p = alive.get(w["name"])
        process = "idle" if p is None else _alive(p)
        workloads.add_row(
            w["name"],
            w["namespace"],
            w["node"],
            w["ip"],
            ",".join(map(str, w["ports"])) or "-",
            process,
            _present(w["netns"], w["netnsPresent"]),
        )
    console.print(workloads)
    if status["services"]:
        services = Table("service", "VIP", "ports", "endpoints", title="services (nftables DNAT)")
        for s in status["services"]:
            services.add_row(
                f"{s['name']}.{s['namespace']}",
                s["vip"],
                ",".join(map(str, s["ports"])),
                ", ".join(s["endpoints"]) or "[red]none[/]",
            )
        console.print(services)
    others = [p for p in status["processes"] if not p["workload"]]
    if others:
        table = Table("process", "node", "pid", "alive", "log", title="node processes")
        for p in others:
            table.add_row(p["name"], p["node"] or "-", str(p["pid"]), _alive(p), p["log"])
        console.print(table)


def _present(netns: str, present: bool) -> str:
    return netns if present else f"[red]{netns} (missing)[/]"


def _alive(p: dict[str, Any]) -> str:
    return f"[green]pid {p['pid']}[/]" if p["alive"] else f"[red]dead (see {p['log']})[/]"


def cmd_exec(args: argparse.Namespace) -> int:
    require_root("weft lab exec")
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError("no command given: weft lab exec WORKLOAD -- COMMAND [ARG...]")
    lab = Lab.attach(args.state_dir)
    names = {w.name: w for w in lab.workloads()}
    if args.target in names:
        w = names[args.target]
        argv = processes.wrap(w.netns, Path(w.cgroup), command)
    elif any(n.name == args.target for n in lab.topology.nodes):
        argv = processes.wrap(
            lab.node_netns(args.target), Path(lab.cgroup_path(args.target)), command
        )
    else:
        raise UsageError(
            f"no workload or node named '{args.target}' "
            f"(workloads: {', '.join(sorted(names))}; "
            f"nodes: {', '.join(n.name for n in lab.topology.nodes)})"
        )
    # The terminal is passed through so interactive commands and pipes behave as usual.
    return subprocess.call(argv)


def cmd_logs(args: argparse.Namespace) -> int:
    require_root("weft lab logs")
    lab = Lab.attach(args.state_dir)
    matches = [p for p in lab.processes() if p.name == args.name]
    if not matches:
        known = ", ".join(sorted({p.name for p in lab.processes()})) or "none"
        raise UsageError(f"the lab has no process named '{args.name}' (processes: {known})")
    process = matches[-1]
    state = "running" if processes.is_running(process) else "not running"
    print(f"# {process.log} (pid {process.pid}, {state})")
    print(processes.log_tail(process.log, args.lines))
    return ExitCode.OK


def cmd_traffic(args: argparse.Namespace) -> int:
    require_root("weft lab traffic")
    if args.requests < 1 or args.duration_limit <= 0:
        raise UsageError("--requests must be >= 1 and --duration-limit > 0")
    lab = Lab.attach(args.state_dir)
    result = lab.traffic(args.requests, args.duration_limit, json_report=args.json)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    if result.returncode != 0:
        print(
            f"weft lab traffic: the load client reported errors (exit code {result.returncode}); "
            "'weft lab status' shows which processes are alive, logs are in "
            f"{lab.store.log_dir}",
            file=sys.stderr,
        )
        return ExitCode.FAILED
    return ExitCode.OK
