"""`weft stat [-n NS]`: per-service request rate, success rate and p50/p99 from the waypoints.

The waypoints are the Waypoint resources the controller knows (AdminService.Get, with the
admin credential), or the addresses given with --waypoint; each is scraped twice on its
metrics port (15020), --interval seconds apart, and weft.stat_metrics does the arithmetic.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request

import grpc

from weft.api.convert import resource_from_proto
from weft.api.v1 import admin_pb2, admin_pb2_grpc
from weft.controller_client import (
    CHANNEL_OPTIONS,
    Credentials,
    add_admin_flags,
    admin_credential_path,
    unavailable,
)
from weft.errors import UnavailableError, UsageError
from weft.model import Waypoint
from weft.stat_metrics import ServiceStat, parse_counts, service_stats

METRICS_PORT = 15020
EXAMPLES = """\
examples:
  weft stat                                # every service behind a waypoint, over 2 s
  weft stat -n shop --interval 5           # one namespace, a longer window
  weft stat --waypoint 10.88.2.5:15020 -o json   # scrape this waypoint, no controller needed
"""


def register(parser: argparse.ArgumentParser, name: str) -> None:
    del name
    parser.epilog = EXAMPLES
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("-n", "--namespace", help="only services of this namespace")
    parser.add_argument(
        "--interval", type=float, default=2.0, help="seconds between the two scrapes (default 2)"
    )
    parser.add_argument(
        "--waypoint", action="append", default=[], metavar="HOST:PORT",
        help="a waypoint's metrics address (repeat); default: every Waypoint the controller knows",
    )  # fmt: skip
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table")
    add_admin_flags(parser)
    parser.set_defaults(func=run)


def waypoints_from_controller(args: argparse.Namespace) -> list[str]:
    """The metrics address of every Waypoint resource."""
    credentials = Credentials.from_file(
        admin_credential_path(args.admin_credential, args.state_dir)
    )
    with grpc.secure_channel(
        args.controller, credentials.channel_credentials(), options=CHANNEL_OPTIONS
    ) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        try:
            reply = stub.Get(admin_pb2.GetRequest(kind="Waypoint"), timeout=10)
        except grpc.RpcError as err:
            raise unavailable(args.controller, err) from None
    addresses = []
    for message in reply.resources:
        waypoint = resource_from_proto(message).parsed.resource
        if isinstance(waypoint, Waypoint):
            addresses.append(f"{waypoint.address}:{METRICS_PORT}")
    return addresses


def scrape(address: str) -> str:
    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
            return str(response.read().decode("utf-8"))
    except (urllib.error.URLError, OSError) as err:
        raise UnavailableError(
            f"cannot scrape the waypoint metrics at {address}: {err}",
            hint="is the waypoint running, and is its metrics port reachable from here?",
        ) from None


def run(args: argparse.Namespace) -> int:
    if not 0.1 <= args.interval <= 300:
        raise UsageError(f"--interval {args.interval:g}: expected 0.1 to 300 seconds")
    addresses = list(args.waypoint) or waypoints_from_controller(args)
    if not addresses:
        print("no waypoints: nothing to show (apply a Waypoint and label a service or namespace "
              "with weft.io/use-waypoint)", file=sys.stderr)  # fmt: skip
        return 0
    started = time.monotonic()
    before = parse_counts(scrape(a) for a in addresses)
    time.sleep(args.interval)
    after = parse_counts(scrape(a) for a in addresses)
    rows = service_stats(before, after, time.monotonic() - started, args.namespace)
    if args.output == "json":
        json.dump([r.as_dict() for r in rows], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_table(rows)
    return 0


def _fmt(value: float | None, unit: str, scale: float = 1.0, digits: int = 1) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}{unit}"


def print_table(rows: list[ServiceStat]) -> None:
    header = ("NAMESPACE", "SERVICE", "RPS", "SUCCESS", "P50", "P99")
    lines = [header] + [
        (
            r.namespace,
            r.service,
            f"{r.rps:.1f}",
            _fmt(r.success_rate, "%", 100.0, 2),
            _fmt(r.p50_ms, "ms"),
            _fmt(r.p99_ms, "ms"),
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
