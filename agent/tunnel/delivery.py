"""Deliver HBONE addressed to a local workload (podIP:15008) to this agent instead of the pod.

As in Istio ambient, peers dial the endpoint's own address on 15008. The node answers for it:
a policy-routing rule sends TCP to port 15008 through a table of `local` routes, one per local
workload, and the agent listens on each workload address (ip_nonlocal_bind lets it bind them).
Each listener presents that workload's SVID, so the client checks the identity it meant to
reach. Everything here lives in the node's network namespace, which the agent runs in.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from ipaddress import IPv4Address
from pathlib import Path

from weft.errors import UnavailableError

ROUTE_TABLE = 15008
RULE_PRIORITY = 1500
NONLOCAL_BIND = Path("/proc/sys/net/ipv4/ip_nonlocal_bind")


def rule_command(port: int) -> list[str]:
    return [
        "ip", "rule", "add", "priority", str(RULE_PRIORITY), "ipproto", "tcp",
        "dport", str(port), "lookup", str(ROUTE_TABLE),
    ]  # fmt: skip


def route_commands(add: Iterable[IPv4Address], remove: Iterable[IPv4Address]) -> list[list[str]]:
    commands = [
        ["ip", "route", "replace", "local", f"{a}/32", "dev", "lo", "table", str(ROUTE_TABLE)]
        for a in sorted(add)
    ]
    commands += [
        ["ip", "route", "del", "local", f"{a}/32", "dev", "lo", "table", str(ROUTE_TABLE)]
        for a in sorted(remove)
    ]
    return commands


class Delivery:
    """The node's rule and routes for HBONE delivery, kept equal to the local workloads."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.addresses: set[IPv4Address] = set()

    def install(self) -> None:
        """The sysctl and the rule (idempotent: an agent restart finds them in place)."""
        try:
            NONLOCAL_BIND.write_text("1\n")
        except OSError as err:
            raise UnavailableError(
                f"cannot set {NONLOCAL_BIND}: {err.strerror}",
                hint="the agent must run as root in the node's network namespace",
            ) from err
        existing = _run(["ip", "rule", "show", "priority", str(RULE_PRIORITY)], check=False)
        if f"lookup {ROUTE_TABLE}" not in existing:
            _run(rule_command(self.port))

    def update(self, addresses: Iterable[IPv4Address]) -> None:
        wanted = set(addresses)
        for command in route_commands(wanted - self.addresses, self.addresses - wanted):
            _run(command, check=command[2] != "del")
        self.addresses = wanted


def _run(argv: list[str], check: bool = True) -> str:
    completed = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    if check and completed.returncode != 0:
        raise UnavailableError(
            f"'{' '.join(argv)}' failed: {completed.stderr.strip()}",
            hint="HBONE delivery to this node's workloads needs policy routing (iproute2)",
        )
    return completed.stdout
