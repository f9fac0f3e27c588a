"""`weft certs` and `weft config-dump`: read a node agent's admin endpoint (port 15000).

The admin port listens on the node's loopback only; `--node` enters a lab node's network
namespace (/run/netns/weft-<node>) to reach it, as `kubectl exec` would on a real cluster.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path
from typing import Any

from weft.errors import UnavailableError, UsageError

DEFAULT_ADMIN = "127.0.0.1:15000"
NETNS_DIR = Path("/run/netns")


def fetch(path: str, admin: str, node: str | None) -> Any:
    """GET http://<admin><path> (inside the node's netns when `node` is given), as JSON."""
    argv = ["curl", "-sS", "-m", "5", "-f", f"http://{admin}{path}"]
    if node is not None:
        netns = NETNS_DIR / f"weft-{node}"
        if not netns.exists():
            raise UsageError(
                f"no network namespace {netns} for node '{node}'",
                hint="is the lab up ('weft lab status')? on a real node, run without --node",
            )
        argv = ["nsenter", f"--net={netns}", *argv]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=15, check=False)
    if result.returncode != 0:
        where = f" on node {node}" if node else ""
        raise UnavailableError(
            f"the agent's admin endpoint http://{admin}{path}{where} did not answer: "
            f"{result.stderr.strip() or result.returncode}",
            hint="is 'weft agent run' running there? its admin port is 15000 (--admin)",
        )
    return json.loads(result.stdout)


def cmd_certs(args: argparse.Namespace) -> int:
    rows = fetch("/certs", args.admin, args.node)
    if args.output == "json":
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"workload certificates{f' on {args.node}' if args.node else ''}")
    for column in ("identity", "serial", "not before", "not after", "state"):
        table.add_column(column, overflow="fold")
    for row in rows:
        state = row["state"] + (f" ({row['last_error']})" if row.get("last_error") else "")
        table.add_row(
            row["identity"], row["serial"][:16], row["not_before"], row["not_after"], state
        )
    Console().print(table)
    return 0


def cmd_config_dump(args: argparse.Namespace) -> int:
    print(json.dumps(fetch("/config_dump", args.admin, args.node), indent=2))
    return 0


def register_admin_family(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--node", help="a lab node: reach its agent inside netns weft-NODE")
    parser.add_argument("--admin", default=DEFAULT_ADMIN, help="the agent's admin host:port")
    if name == "certs":
        parser.add_argument("-o", "--output", choices=("table", "json"), default="table")
        parser.set_defaults(func=cmd_certs)
    else:
        parser.set_defaults(func=cmd_config_dump)
