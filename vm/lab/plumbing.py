"""The lab's network as `ip` commands: fabric bridge, node uplinks, Calico-style routed workloads.

Pure functions from the topology to `ip -batch` lines, so the layout is testable without root.
Veth pairs are created with both ends already inside their namespaces (`link add ... netns A
type veth peer ... netns B`): a crash halfway never leaves a veth in the root namespace.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network

from vm.lab.state import WorkloadInfo
from vm.lab.topology import FABRIC_NETNS, Node, Topology

FABRIC_BRIDGE = "br0"
UPLINK = "eth0"  # a node's interface on the fabric, and a workload's only interface
# Every workload's default gateway, as in Calico: the node answers ARP for it on every workload
# veth, so a pod's routes never depend on the node's own addresses. It also lives on the node's
# loopback, which gives workloads a fixed address at which their node is always reachable.
POD_GATEWAY = IPv4Address("169.254.1.1")

NODE_SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    # Applied before the workload veths exist, so every one of them inherits it.
    "net.ipv4.conf.default.proxy_arp": "1",
    "net.ipv4.conf.all.rp_filter": "0",
    "net.ipv4.conf.default.rp_filter": "0",
}


def fabric_veth(node: str) -> str:
    """The fabric-side end of a node's uplink."""
    return f"n-{node}"


def workload_veth(workload: str) -> str:
    """The node-side end of a workload's veth."""
    return f"p-{workload}"


def add_namespaces(names: Iterable[str]) -> list[str]:
    return [f"netns add {name}" for name in names]


def add_node_uplinks(nodes: Iterable[Node]) -> list[str]:
    return [
        f"link add {fabric_veth(n.name)} netns {FABRIC_NETNS} type veth "
        f"peer name {UPLINK} netns {n.netns}"
        for n in nodes
    ]


def add_workload_link(workload: WorkloadInfo, node: Node) -> str:
    return (
        f"link add {workload_veth(workload.name)} netns {node.netns} type veth "
        f"peer name {UPLINK} netns {workload.netns}"
    )


def configure_fabric(nodes: Iterable[Node]) -> list[str]:
    lines = [
        "link set lo up",
        f"link add {FABRIC_BRIDGE} type bridge",
        f"link set {FABRIC_BRIDGE} up",
    ]
    for n in nodes:
        lines += [
            f"link set {fabric_veth(n.name)} master {FABRIC_BRIDGE}",
            f"link set {fabric_veth(n.name)} up",
        ]
    return lines


def configure_node(topology: Topology, node: Node) -> list[str]:
    """Uplink address, the gateway address, and a route to every other worker's pod CIDR."""
    prefix = topology.fabric_cidr.prefixlen
    lines = [
        "link set lo up",
        f"address add {POD_GATEWAY}/32 dev lo",
        f"address add {node.ip}/{prefix} dev {UPLINK}",
        f"link set {UPLINK} up",
    ]
    for other in topology.workers:
        if other.name != node.name and other.pod_cidr is not None:
            lines.append(f"route add {other.pod_cidr} via {other.ip} dev {UPLINK}")
    return lines


def attach_workload_to_node(workload: WorkloadInfo) -> list[str]:
    """On the node: bring the workload's veth up and route the workload's /32 to it."""
    veth = workload_veth(workload.name)
    return [f"link set {veth} up", f"route add {workload.ip}/32 dev {veth}"]


def configure_workload(workload: WorkloadInfo) -> list[str]:
    """In the workload: its /32 and one default route via the gateway on the node's side."""
    return [
        "link set lo up",
        f"address add {workload.ip}/32 dev {UPLINK}",
        f"link set {UPLINK} up",
        f"route add default via {POD_GATEWAY} dev {UPLINK} onlink",
    ]


def next_pod_ip(pod_cidr: IPv4Network, used: Iterable[str]) -> IPv4Address:
    """The lowest free address of the node's pod CIDR, from .2 (.1 stays free, by convention)."""
    taken = {IPv4Address(ip) for ip in used}
    for address in list(pod_cidr.hosts())[1:]:
        if address not in taken:
            return address
    raise ValueError(f"pod CIDR {pod_cidr} is full")
