"""`weft agent ...`: attach, inspect and detach a node's eBPF capture, and enroll workloads by hand.

The node agent does all of this by itself; these commands are for operators and for the lab:
they see and change exactly what the agent would (the pinned links and maps of a scope).
"""

from __future__ import annotations

import argparse
import os
import subprocess
from dataclasses import asdict
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from agent.bpf.libbpf import AttachType
from agent.bpf.links import cgroup_id, pinned_links
from agent.bpf.maps import Enrollment, Inbound, Mode, NodeMaps
from agent.bpf.programs import NODE
from agent.capture.splice import splice_report
from weft.errors import NotRootError, UnavailableError, UsageError

DEFAULT_PIN_ROOT = Path("/sys/fs/bpf/weft")

AGENT_EXAMPLES = """\
examples:
  sudo weft agent attach --scope node-a \\
       --workloads-cgroup /sys/fs/cgroup/unified/weft/node-a/workloads
  sudo weft agent enroll --scope node-a --cgroup /sys/fs/cgroup/unified/weft/node-a/workloads/web \\
       --agent-addr 10.88.1.1 --inbound strict
  sudo weft agent maps --scope node-a            # links, enrolled workloads and their counters
  sudo weft agent maps --scope node-a -o json
  sudo weft agent detach --scope node-a --purge  # detach every program and drop the maps
"""


def _require_root(operation: str) -> None:
    if os.geteuid() != 0:
        raise NotRootError(operation)


def _scope_dir(args: argparse.Namespace) -> Path:
    return Path(args.pin_root) / str(args.scope)


def _open_maps(args: argparse.Namespace) -> NodeMaps:
    return NodeMaps(_scope_dir(args) / "maps")


def _cgroup(path: str, flag: str) -> Path:
    cgroup = Path(path)
    if not (cgroup / "cgroup.procs").is_file():
        raise UsageError(
            f"{flag} {path}: not a cgroup v2 directory",
            hint="give a directory under the cgroup2 mount (here /sys/fs/cgroup/unified)",
        )
    return cgroup


def cmd_attach(args: argparse.Namespace) -> int:
    _require_root("weft agent attach")
    from agent.bpf.loader import Loader  # compiles with bcc: only imported when attaching

    loader = Loader(args.scope, pin_root=Path(args.pin_root), outbound_port=args.outbound_port)
    workloads = _cgroup(args.workloads_cgroup, "--workloads-cgroup")
    for a in loader.attach(NODE, workloads):
        verb = "reused" if a.reused else "attached"
        print(f"{verb:8} {a.function:<22} link {a.link_id:<6} prog {a.prog_id:<6} {a.link_pin}")
    return 0


def cmd_detach(args: argparse.Namespace) -> int:
    _require_root("weft agent detach")
    from agent.bpf.loader import Loader

    loader = Loader(args.scope, pin_root=Path(args.pin_root))
    names = loader.detach()
    print(f"detached {', '.join(names)}" if names else f"scope '{args.scope}': nothing attached")
    if args.purge:
        loader.remove()
        print(f"removed {loader.scope_dir}")
        # The plaintext-inbound redirect of this network namespace (the node's), if any.
        from agent.runtime.plaintext_redirect import purge_commands

        for argv in purge_commands():
            subprocess.run(argv, capture_output=True, timeout=10, check=False)
    return 0


def cmd_enroll(args: argparse.Namespace) -> int:
    _require_root("weft agent enroll")
    cgroup = _cgroup(args.cgroup, "--cgroup")
    enrollment = Enrollment(
        Mode[args.mode.upper()], Inbound[args.inbound.upper()], IPv4Address(args.agent_addr)
    )
    with _open_maps(args) as maps:
        maps.enroll(cgroup_id(cgroup), enrollment)
    print(f"enrolled {cgroup} (cgroup id {cgroup_id(cgroup)}): {args.mode}, {args.inbound}")
    return 0


def cmd_unenroll(args: argparse.Namespace) -> int:
    _require_root("weft agent unenroll")
    cgroup = _cgroup(args.cgroup, "--cgroup")
    with _open_maps(args) as maps:
        found = maps.unenroll(cgroup_id(cgroup))
    print(f"unenrolled {cgroup}" if found else f"{cgroup} was not enrolled")
    return 0


def maps_report(scope_dir: Path, maps: NodeMaps) -> dict[str, Any]:
    """Everything `weft agent maps` shows, as plain data."""
    links = [{**asdict(link), "pin": str(link.pin)} for link in pinned_links(scope_dir / "links")]
    workloads = []
    for cg_id, enrollment in sorted(maps.enrollments().items()):
        stats = maps.stats(cg_id)
        workloads.append(
            {
                "cgroup_id": cg_id,
                "mode": enrollment.mode.name.lower(),
                "inbound": enrollment.inbound.name.lower(),
                "agent_addr": str(enrollment.agent_addr),
                "counters": asdict(stats) if stats is not None else None,
            }
        )
    splice = splice_report(scope_dir / "links", maps)
    return {"scope": scope_dir.name, "links": links, "workloads": workloads, "splice": splice}


def cmd_maps(args: argparse.Namespace) -> int:
    _require_root("weft agent maps")
    with _open_maps(args) as maps:
        report = maps_report(_scope_dir(args), maps)
    if args.output == "json":
        from weft.cli import print_json

        print_json(report)
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    links = Table(title=f"eBPF links of scope '{args.scope}'")
    for column in ("program", "link", "prog", "attach type", "target id"):
        links.add_column(column)
    for link in report["links"]:
        links.add_row(
            link["function"],
            str(link["link_id"]),
            str(link["prog_id"]),
            _attach_type_name(link["attach_type"]),
            str(link["target_id"]) if link["target_id"] else "[red]gone[/red]",
        )
    console.print(links)
    workloads = Table(title="enrolled workloads")
    counters = ("captured", "passed", "inbound_dropped", "spliced_bytes")
    for column in ("cgroup id", "mode", "inbound", "agent addr", *counters):
        workloads.add_column(column.replace("_", " "))
    for w in report["workloads"]:
        c = w["counters"] or {}
        workloads.add_row(
            str(w["cgroup_id"]),
            w["mode"],
            w["inbound"],
            w["agent_addr"],
            *(str(c.get(k, "-")) for k in counters),
        )
    console.print(workloads)
    splice = report["splice"]
    pairs = Table(title=f"same-node splice: {splice['mode']} (sk_msg pairs)")
    columns = ("socket", "sends_to", "mode", "passed_tcp_bytes", "forwarded_bytes", "direct_bytes")
    for column in columns:
        pairs.add_column(column.replace("_", " "))
    for pair in splice["pairs"]:
        pairs.add_row(*(str(pair[k]) for k in columns))
    console.print(pairs)
    return 0


def _attach_type_name(value: int) -> str:
    try:
        return AttachType(value).name.lower()
    except ValueError:
        return str(value)


def _not_in_this_build(args: argparse.Namespace) -> int:
    raise UnavailableError(
        f"'weft {args.family}' is not implemented in this build",
        hint="'weft agent maps' shows what the eBPF capture is doing on this node",
    )


def _add_scope(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scope", required=True, help="the node name the agent loads under")
    parser.add_argument("--pin-root", default=str(DEFAULT_PIN_ROOT), help=argparse.SUPPRESS)


def register(parser: argparse.ArgumentParser, name: str) -> None:
    if name in ("certs", "config-dump"):
        from agent.admin_cli import register_admin_family  # reads the agent's admin port

        register_admin_family(parser, name)
        return
    if name != "agent":
        parser.set_defaults(func=_not_in_this_build, family=name)
        return
    parser.epilog = AGENT_EXAMPLES
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    attach = sub.add_parser("attach", help="load and attach the node's eBPF programs (idempotent)")
    _add_scope(attach)
    attach.add_argument("--workloads-cgroup", required=True, help="cgroup holding the workloads")
    attach.add_argument("--outbound-port", type=int, default=15001)
    attach.set_defaults(func=cmd_attach)

    detach = sub.add_parser("detach", help="detach every program of a scope")
    _add_scope(detach)
    detach.add_argument("--purge", action="store_true", help="also drop the scope's maps")
    detach.set_defaults(func=cmd_detach)

    enroll = sub.add_parser("enroll", help="enroll a workload cgroup in capture")
    _add_scope(enroll)
    enroll.add_argument("--cgroup", required=True)
    enroll.add_argument("--agent-addr", required=True, help="the agent's address as seen by it")
    enroll.add_argument("--mode", choices=("ambient", "none"), default="ambient")
    enroll.add_argument("--inbound", choices=("permissive", "strict"), default="permissive")
    enroll.set_defaults(func=cmd_enroll)

    unenroll = sub.add_parser("unenroll", help="remove a workload's enrollment entry")
    _add_scope(unenroll)
    unenroll.add_argument("--cgroup", required=True)
    unenroll.set_defaults(func=cmd_unenroll)

    maps = sub.add_parser("maps", help="dump links, enrolled workloads and their counters")
    _add_scope(maps)
    maps.add_argument("-o", "--output", choices=("table", "json"), default="table")
    maps.set_defaults(func=cmd_maps)

    from agent.main import register_run  # the node agent's runtime lives in agent/runtime

    register_run(sub.add_parser("run", help="run the node agent (capture, HBONE, certs, config)"))
