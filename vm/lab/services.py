"""Service VIPs without the mesh: the kube-proxy equivalent, as one nftables table per node netns.

Every node DNATs connections to a VIP:port to one of the service's endpoints, picked at random
(`numgen random`), for traffic arriving from its workloads (prerouting) and from the node's own
processes (output). Like kube-proxy, a connection a workload makes to a VIP that lands on itself
is masqueraded ("hairpin"), or the workload would drop the reply as coming from its own address.
Later the mesh's eBPF connect() capture acts before any packet exists, so these rules only see
traffic that the mesh does not capture.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

TABLE = "weft"


@dataclass(frozen=True)
class ServiceEndpoints:
    """One service port and the workload addresses behind it."""

    service: str  # "<name>.<namespace>", for the rule's comment
    vip: str
    port: int
    target_port: int
    endpoints: Sequence[str]


def render_ruleset(services: Iterable[ServiceEndpoints], local_workload_ips: Iterable[str]) -> str:
    """An `nft -f` script that atomically replaces the node's `ip weft` table."""
    ordered = sorted(services, key=lambda s: (s.vip, s.port))
    rules = [_service_rule(s) for s in ordered]
    hairpin = ", ".join(f"{ip} . {ip}" for ip in sorted(local_workload_ips))
    lines = [
        # Declaring the table first makes the delete valid even when it does not exist yet.
        f"table ip {TABLE}",
        f"delete table ip {TABLE}",
        f"table ip {TABLE} {{",
        "  set hairpin {",
        "    type ipv4_addr . ipv4_addr",
        *([f"    elements = {{ {hairpin} }}"] if hairpin else []),
        "  }",
        "  chain services {",
        *(f"    {rule}" for rule in rules),
        "  }",
        "  chain prerouting {",
        "    type nat hook prerouting priority dstnat; policy accept;",
        "    jump services",
        "  }",
        "  chain output {",
        "    type nat hook output priority -100; policy accept;",
        "    jump services",
        "  }",
        "  chain postrouting {",
        "    type nat hook postrouting priority srcnat; policy accept;",
        "    ct status dnat ip saddr . ip daddr @hairpin masquerade",
        "  }",
        "  chain no-endpoints {",
        "    type filter hook prerouting priority dstnat - 10; policy accept;",
        *(
            f"    ip daddr {s.vip} tcp dport {s.port} reject with tcp reset"
            f' comment "{s.service} has no endpoints"'
            for s in services_without_endpoints(ordered)
        ),
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def services_without_endpoints(services: Iterable[ServiceEndpoints]) -> list[ServiceEndpoints]:
    return [s for s in services if not s.endpoints]


def _service_rule(s: ServiceEndpoints) -> str:
    match = f"ip daddr {s.vip} tcp dport {s.port}"
    comment = f'comment "{s.service}:{s.port}"'
    if not s.endpoints:
        return f"{match} return {comment}"
    if len(s.endpoints) == 1:
        return f"{match} dnat to {s.endpoints[0]}:{s.target_port} {comment}"
    targets = ", ".join(f"{i} : {ip} . {s.target_port}" for i, ip in enumerate(s.endpoints))
    return f"{match} dnat to numgen random mod {len(s.endpoints)} map {{ {targets} }} {comment}"
