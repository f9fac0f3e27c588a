"""Steer plaintext TCP to this node's PERMISSIVE meshed workloads into the agent's 15006 listener.

In the node's network namespace, an nftables table `weft_plaintext` TPROXYs new connections
(SYN only) addressed to those workloads to the agent; the accepted socket keeps the original
destination as its local address. Its packets, and those of the agent's other transparent
sockets, are marked and routed to the local host (rule 1506, table 15006). Connections that
existed before a workload was added stay where they were; HBONE (15008) is left alone. With the
agent stopped the rules stay, so those connections fail (closed) rather than skip policy;
`weft agent detach --purge` removes them. The chain runs after the lab's service DNAT
(priority -100), so a VIP is already its endpoint's address here.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from ipaddress import IPv4Address

from weft.errors import UnavailableError

TABLE = "weft_plaintext"
MARK = 0x1506
RULE_PRIORITY = 1506
ROUTE_TABLE = 15006


def ruleset(agent_address: IPv4Address, port: int, hbone_port: int) -> str:
    """The whole table, replaced atomically (`nft -f`), with an empty address set."""
    return f"""\
table ip {TABLE}
delete table ip {TABLE}
table ip {TABLE} {{
    set permissive {{ type ipv4_addr; }}
    chain prerouting {{
        type filter hook prerouting priority -90; policy accept;
        meta l4proto tcp socket transparent 1 meta mark set {MARK:#x} accept
        ip daddr @permissive tcp dport != {hbone_port} tcp flags & (fin|syn|rst|ack) == syn \
meta mark set {MARK:#x} tproxy to {agent_address}:{port} accept
    }}
}}
"""


def set_script(addresses: Iterable[IPv4Address]) -> str:
    lines = [f"flush set ip {TABLE} permissive"]
    wanted = sorted(addresses)
    if wanted:
        lines.append(f"add element ip {TABLE} permissive {{ {', '.join(str(a) for a in wanted)} }}")
    return "\n".join(lines) + "\n"


def purge_commands() -> list[list[str]]:
    """What `weft agent detach --purge` runs (each may fail: nothing to remove)."""
    return [
        ["nft", "delete", "table", "ip", TABLE],
        ["ip", "rule", "del", "priority", str(RULE_PRIORITY)],
        ["ip", "route", "flush", "table", str(ROUTE_TABLE)],
    ]


class PlaintextRedirect:
    """The node's TPROXY table and routing for 15006, its address set kept in step."""

    def __init__(self, agent_address: IPv4Address, port: int, hbone_port: int) -> None:
        self.agent_address = agent_address
        self.port = port
        self.hbone_port = hbone_port
        self.addresses: set[IPv4Address] | None = None

    def install(self) -> None:
        _run(["nft", "-f", "-"], ruleset(self.agent_address, self.port, self.hbone_port))
        rules = _run(["ip", "rule", "show", "priority", str(RULE_PRIORITY)], check=False)
        if f"lookup {ROUTE_TABLE}" not in rules:
            _run(["ip", "rule", "add", "priority", str(RULE_PRIORITY), "fwmark", f"{MARK:#x}",
                  "lookup", str(ROUTE_TABLE)])  # fmt: skip
        _run(["ip", "route", "replace", "local", "0.0.0.0/0", "dev", "lo",
              "table", str(ROUTE_TABLE)])  # fmt: skip
        self.addresses = set()

    def update(self, addresses: Iterable[IPv4Address]) -> None:
        wanted = set(addresses)
        if wanted != self.addresses:
            _run(["nft", "-f", "-"], set_script(wanted))
            self.addresses = wanted


def _run(argv: list[str], stdin: str | None = None, check: bool = True) -> str:
    completed = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=10, check=False
    )
    if check and completed.returncode != 0:
        raise UnavailableError(
            f"'{' '.join(argv)}' failed: {completed.stderr.strip()}",
            hint="plaintext inbound (15006) needs nftables with TPROXY and policy routing",
        )
    return completed.stdout
