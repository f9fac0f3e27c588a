"""vm/topology.yaml <-> frozen dataclasses: the one place a lab description is validated."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import yaml

from weft.errors import ConfigError, UsageError

DEFAULT_TOPOLOGY = Path(__file__).resolve().parent.parent / "topology.yaml"

# Interface names are at most 15 bytes (IFNAMSIZ - 1). The fabric side of a node's veth is
# `n-<node>` and the node side of a workload's veth is `p-<workload>`, hence these limits.
MAX_NODE_NAME = 13
MAX_WORKLOAD_NAME = 13
MAX_DNS_LABEL = 63
NETNS_PREFIX = "weft-"
FABRIC_NETNS = "weft-fabric"
RESERVED_NODE_NAMES = frozenset({"fabric"})  # weft-fabric is the underlay's netns

# Workers derived with --nodes get fabric IP = network + WORKER_IP_OFFSET + i (node1 -> .11).
WORKER_IP_OFFSET = 10
MESH_LABEL = "weft.io/dataplane-mode"
MESH_MODE_AMBIENT = "ambient"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_VIP_PLACEHOLDER = re.compile(r"^vip:([a-z0-9-]+)\.([a-z0-9-]+)$")


@dataclass(frozen=True)
class Node:
    """A machine of the lab: a network namespace `weft-<name>` joined to the fabric."""

    name: str
    role: str  # "control" or "worker"
    ip: IPv4Address  # fabric (underlay) address
    pod_cidr: IPv4Network | None = None  # workers only

    @property
    def netns(self) -> str:
        return f"{NETNS_PREFIX}{self.name}"

    @property
    def is_worker(self) -> bool:
        return self.role == "worker"


@dataclass(frozen=True)
class Namespace:
    """A mesh namespace; `weft.io/dataplane-mode: ambient` opts its workloads into the mesh."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def in_mesh(self) -> bool:
        return self.labels.get(MESH_LABEL) == MESH_MODE_AMBIENT


@dataclass(frozen=True)
class Workload:
    """A "pod": one netns with one IP on a worker node; `command` empty means idle."""

    name: str
    namespace: str
    node: str
    service_account: str = "default"
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[int, ...] = ()
    command: tuple[str, ...] = ()

    @property
    def netns(self) -> str:
        return workload_netns(self.node, self.name)


@dataclass(frozen=True)
class ServicePort:
    name: str
    port: int
    target_port: int


@dataclass(frozen=True)
class Service:
    """A VIP in front of the workloads of its namespace whose labels include `selector`."""

    name: str
    namespace: str
    vip: IPv4Address
    ports: tuple[ServicePort, ...]
    selector: Mapping[str, str]
    labels: Mapping[str, str] = field(default_factory=dict)

    def selects(self, workload: Workload) -> bool:
        return workload.namespace == self.namespace and all(
            workload.labels.get(k) == v for k, v in self.selector.items()
        )


@dataclass(frozen=True)
class Traffic:
    """How `weft lab traffic` runs the demo's load client."""

    workload: str
    command: tuple[str, ...]


@dataclass(frozen=True)
class Demo:
    namespaces: tuple[Namespace, ...] = ()
    workloads: tuple[Workload, ...] = ()
    services: tuple[Service, ...] = ()
    traffic: Traffic | None = None


@dataclass(frozen=True)
class Topology:
    """A validated lab description; `source` is the file it came from (for error messages)."""

    source: str
    fabric_cidr: IPv4Network
    pod_cidr_pool: IPv4Network
    service_cidr: IPv4Network
    nodes: tuple[Node, ...]
    demo: Demo = Demo()

    @property
    def workers(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.is_worker)

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        known = ", ".join(n.name for n in self.nodes)
        raise UsageError(f"no node named '{name}' in the lab (nodes: {known})")

    def to_document(self) -> dict[str, Any]:
        """The YAML-shaped document this topology was parsed from (round-trips through parse)."""
        doc: dict[str, Any] = {
            "fabricCIDR": str(self.fabric_cidr),
            "podCIDRPool": str(self.pod_cidr_pool),
            "serviceCIDR": str(self.service_cidr),
            "nodes": [_node_document(n) for n in self.nodes],
        }
        demo: dict[str, Any] = {
            "namespaces": [
                {"name": ns.name, "labels": dict(ns.labels)} for ns in self.demo.namespaces
            ],
            "workloads": [workload_document(w) for w in self.demo.workloads],
            "services": [_service_document(s) for s in self.demo.services],
        }
        if self.demo.traffic is not None:
            demo["traffic"] = {
                "workload": self.demo.traffic.workload,
                "command": list(self.demo.traffic.command),
            }
        doc["demo"] = demo
        return doc


def workload_netns(node: str, workload: str) -> str:
    return f"{NETNS_PREFIX}{node}-{workload}"


def workload_document(w: Workload) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": w.name,
        "namespace": w.namespace,
        "node": w.node,
        "serviceAccount": w.service_account,
        "labels": dict(w.labels),
    }
    if w.ports:
        doc["ports"] = list(w.ports)
    if w.command:
        doc["command"] = list(w.command)
    return doc


def _node_document(n: Node) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": n.name, "role": n.role, "ip": str(n.ip)}
    if n.pod_cidr is not None:
        doc["podCIDR"] = str(n.pod_cidr)
    return doc


def _service_document(s: Service) -> dict[str, Any]:
    return {
        "name": s.name,
        "namespace": s.namespace,
        "vip": str(s.vip),
        "ports": [{"name": p.name, "port": p.port, "targetPort": p.target_port} for p in s.ports],
        "selector": dict(s.selector),
        "labels": dict(s.labels),
    }


# --------------------------------------------------------------------------- loading


def load_topology(path: str | Path | None = None) -> Topology:
    """Read and validate a topology file (default: vm/topology.yaml)."""
    file = Path(path) if path is not None else DEFAULT_TOPOLOGY
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            str(file), "(file)", "a readable topology YAML file", exc.strerror
        ) from exc
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(str(file), "(file)", "valid YAML", str(exc).splitlines()[0]) from exc
    return parse_topology(document, str(file))


def parse_topology(document: object, source: str) -> Topology:
    """Validate a parsed YAML document; every error names `source` and the field's path."""
    return _Parser(source).topology(document)


class _Parser:
    """Walks the document once, raising ConfigError(source, field path, expected, got)."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, expected: str, got: object = None) -> ConfigError:
        return ConfigError(self.source, path, expected, got)

    # -- primitives

    def mapping(
        self, value: object, path: str, required: Iterable[str], optional: Iterable[str] = ()
    ) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path or "(top level)", "a mapping", type(value).__name__)
        required = tuple(required)
        allowed = set(required) | set(optional)
        for key in value:
            if key not in allowed:
                raise self.fail(
                    _join(path, str(key)),
                    f"no such field (known fields: {', '.join(sorted(allowed))})",
                )
        for key in required:
            if key not in value:
                raise self.fail(_join(path, key), "this required field")
        return value

    def sequence(self, value: object, path: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(path, "a list", type(value).__name__)
        return value

    def name(self, value: object, path: str, max_length: int = MAX_DNS_LABEL) -> str:
        if not isinstance(value, str) or not _DNS_LABEL.match(value):
            raise self.fail(path, "a lowercase DNS label (a-z, 0-9, '-')", value)
        if len(value) > max_length:
            raise self.fail(
                path,
                f"at most {max_length} characters (interface and netns names are built from it)",
                value,
            )
        return value

    def string(self, value: object, path: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(path, "a non-empty string", value)
        return value

    def labels(self, value: object, path: str) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(path, "a mapping of label names to string values", value)
        for key, item in value.items():
            if not isinstance(key, str) or not isinstance(item, str):
                raise self.fail(_join(path, str(key)), "a string label value", item)
        return dict(value)

    def port(self, value: object, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
            raise self.fail(path, "a port number 1-65535", value)
        return value

    def address(self, value: object, path: str) -> IPv4Address:
        try:
            return IPv4Address(str(value)) if isinstance(value, str) else IPv4Address("x")
        except ValueError:
            raise self.fail(path, "an IPv4 address such as 10.77.0.11", value) from None

    def network(self, value: object, path: str) -> IPv4Network:
        try:
            if not isinstance(value, str):
                raise ValueError
            return IPv4Network(value, strict=True)
        except ValueError:
            raise self.fail(
                path, "an IPv4 network in CIDR form such as 10.88.1.0/24", value
            ) from None

    def argv(self, value: object, path: str) -> tuple[str, ...]:
        items = self.sequence(value, path)
        if not items:
            raise self.fail(path, "a non-empty argv list")
        for i, item in enumerate(items):
            if not isinstance(item, str | int) or isinstance(item, bool):
                raise self.fail(f"{path}[{i}]", "a string", item)
        return tuple(str(item) for item in items)

    # -- the document

    def topology(self, document: object) -> Topology:
        doc = self.mapping(
            document, "", ["nodes"], ["fabricCIDR", "podCIDRPool", "serviceCIDR", "demo"]
        )
        fabric = self.network(doc.get("fabricCIDR", "10.77.0.0/24"), "fabricCIDR")
        pool = self.network(doc.get("podCIDRPool", "10.88.0.0/16"), "podCIDRPool")
        services = self.network(doc.get("serviceCIDR", "10.96.0.0/16"), "serviceCIDR")
        ranges = {"fabricCIDR": fabric, "podCIDRPool": pool, "serviceCIDR": services}
        for first, second in (("podCIDRPool", "fabricCIDR"), ("serviceCIDR", "fabricCIDR")):
            if ranges[first].overlaps(ranges[second]):
                raise self.fail(
                    first,
                    f"a range that does not overlap {second} {ranges[second]}",
                    str(ranges[first]),
                )
        if services.overlaps(pool):
            raise self.fail(
                "serviceCIDR", f"a range that does not overlap podCIDRPool {pool}", str(services)
            )
        nodes = self.nodes(doc["nodes"], fabric, pool)
        demo = self.demo(doc.get("demo"), nodes, services)
        topology = Topology(self.source, fabric, pool, services, nodes, demo)
        self.check_netns_names(topology)
        return topology

    def nodes(self, value: object, fabric: IPv4Network, pool: IPv4Network) -> tuple[Node, ...]:
        items = self.sequence(value, "nodes")
        if not any(isinstance(i, dict) and i.get("role") == "worker" for i in items):
            raise self.fail("nodes", "at least one node with role: worker")
        nodes: list[Node] = []
        names: set[str] = set()
        ips: set[IPv4Address] = set()
        for i, item in enumerate(items):
            path = f"nodes[{i}]"
            doc = self.mapping(item, path, ["name", "role", "ip"], ["podCIDR"])
            name = self.name(doc["name"], f"{path}.name", MAX_NODE_NAME)
            if name in RESERVED_NODE_NAMES:
                raise self.fail(
                    f"{path}.name",
                    "a name other than 'fabric' (netns weft-fabric is the underlay)",
                    name,
                )
            if name in names:
                raise self.fail(f"{path}.name", "a node name used only once", name)
            role = doc["role"]
            if role not in ("control", "worker"):
                raise self.fail(f"{path}.role", "'control' or 'worker'", role)
            ip = self.address(doc["ip"], f"{path}.ip")
            if ip not in fabric or ip in (fabric.network_address, fabric.broadcast_address):
                raise self.fail(f"{path}.ip", f"a host address inside fabricCIDR {fabric}", str(ip))
            if ip in ips:
                raise self.fail(f"{path}.ip", "an address used by no other node", str(ip))
            pod_cidr = None
            if role == "worker":
                if "podCIDR" not in doc:
                    raise self.fail(
                        f"{path}.podCIDR", "a pod CIDR for this worker (e.g. 10.88.1.0/24)"
                    )
                pod_cidr = self.network(doc["podCIDR"], f"{path}.podCIDR")
                if not pod_cidr.subnet_of(pool):
                    raise self.fail(
                        f"{path}.podCIDR", f"a range inside podCIDRPool {pool}", str(pod_cidr)
                    )
                if pod_cidr.num_addresses < 4:
                    raise self.fail(
                        f"{path}.podCIDR", "a range of at least 4 addresses (/30)", str(pod_cidr)
                    )
                for other in nodes:
                    if other.pod_cidr is not None and other.pod_cidr.overlaps(pod_cidr):
                        raise self.fail(
                            f"{path}.podCIDR",
                            f"a range that does not overlap node '{other.name}' ({other.pod_cidr})",
                            str(pod_cidr),
                        )
            elif "podCIDR" in doc:
                raise self.fail(
                    f"{path}.podCIDR", "no podCIDR on a control node (it runs no workloads)"
                )
            names.add(name)
            ips.add(ip)
            nodes.append(Node(name, role, ip, pod_cidr))
        return tuple(nodes)

    def demo(self, value: object, nodes: tuple[Node, ...], vips: IPv4Network) -> Demo:
        if value is None:
            return Demo()
        doc = self.mapping(value, "demo", [], ["namespaces", "workloads", "services", "traffic"])
        namespaces = self.namespaces(doc.get("namespaces", []))
        services = self.services(doc.get("services", []), namespaces, vips)
        workloads = tuple(
            self.workload(item, f"demo.workloads[{i}]", nodes, namespaces, services)
            for i, item in enumerate(self.sequence(doc.get("workloads", []), "demo.workloads"))
        )
        seen: set[str] = set()
        for i, w in enumerate(workloads):
            if w.name in seen:
                raise self.fail(
                    f"demo.workloads[{i}].name", "a workload name used only once", w.name
                )
            seen.add(w.name)
        traffic = None
        if doc.get("traffic") is not None:
            t = self.mapping(doc["traffic"], "demo.traffic", ["workload", "command"])
            if not isinstance(t["workload"], str) or t["workload"] not in seen:
                raise self.fail(
                    "demo.traffic.workload", "the name of a demo workload", t["workload"]
                )
            command = self.argv(t["command"], "demo.traffic.command")
            self.placeholders(
                command, "demo.traffic.command", services, {"requests", "duration_limit"}
            )
            traffic = Traffic(t["workload"], command)
        return Demo(namespaces, workloads, services, traffic)

    def namespaces(self, value: object) -> tuple[Namespace, ...]:
        result: list[Namespace] = []
        for i, item in enumerate(self.sequence(value, "demo.namespaces")):
            path = f"demo.namespaces[{i}]"
            doc = self.mapping(item, path, ["name"], ["labels"])
            name = self.name(doc["name"], f"{path}.name")
            if any(ns.name == name for ns in result):
                raise self.fail(f"{path}.name", "a namespace name used only once", name)
            result.append(Namespace(name, self.labels(doc.get("labels"), f"{path}.labels")))
        return tuple(result)

    def services(
        self, value: object, namespaces: tuple[Namespace, ...], vips: IPv4Network
    ) -> tuple[Service, ...]:
        result: list[Service] = []
        for i, item in enumerate(self.sequence(value, "demo.services")):
            path = f"demo.services[{i}]"
            doc = self.mapping(
                item, path, ["name", "namespace", "vip", "ports", "selector"], ["labels"]
            )
            name = self.name(doc["name"], f"{path}.name")
            namespace = self.known_namespace(doc["namespace"], f"{path}.namespace", namespaces)
            if any(s.name == name and s.namespace == namespace for s in result):
                raise self.fail(
                    f"{path}.name", f"a service name used once in namespace '{namespace}'", name
                )
            vip = self.address(doc["vip"], f"{path}.vip")
            if vip not in vips or vip in (vips.network_address, vips.broadcast_address):
                raise self.fail(f"{path}.vip", f"an address inside serviceCIDR {vips}", str(vip))
            for other in result:
                if other.vip == vip:
                    raise self.fail(
                        f"{path}.vip", f"a VIP not used by service '{other.name}'", str(vip)
                    )
            ports = self.service_ports(doc["ports"], f"{path}.ports")
            selector = self.labels(doc["selector"], f"{path}.selector")
            if not selector:
                raise self.fail(f"{path}.selector", "at least one label to select endpoints by")
            labels = self.labels(doc.get("labels"), f"{path}.labels")
            result.append(Service(name, namespace, vip, ports, selector, labels))
        return tuple(result)

    def service_ports(self, value: object, path: str) -> tuple[ServicePort, ...]:
        items = self.sequence(value, path)
        if not items:
            raise self.fail(path, "at least one port")
        ports: list[ServicePort] = []
        for i, item in enumerate(items):
            doc = self.mapping(item, f"{path}[{i}]", ["port"], ["name", "targetPort"])
            port = self.port(doc["port"], f"{path}[{i}].port")
            target = self.port(doc.get("targetPort", port), f"{path}[{i}].targetPort")
            name = self.name(doc.get("name", f"tcp-{port}"), f"{path}[{i}].name")
            if any(p.port == port for p in ports):
                raise self.fail(f"{path}[{i}].port", "a port listed once per service", port)
            ports.append(ServicePort(name, port, target))
        return tuple(ports)

    def workload(
        self,
        value: object,
        path: str,
        nodes: tuple[Node, ...],
        namespaces: tuple[Namespace, ...],
        services: tuple[Service, ...],
    ) -> Workload:
        doc = self.mapping(
            value,
            path,
            ["name", "namespace", "node"],
            ["serviceAccount", "labels", "ports", "command"],
        )
        name = self.name(doc["name"], f"{path}.name", MAX_WORKLOAD_NAME)
        namespace = self.known_namespace(doc["namespace"], f"{path}.namespace", namespaces)
        node = self.worker_node(doc["node"], f"{path}.node", nodes)
        account = self.name(doc.get("serviceAccount", "default"), f"{path}.serviceAccount")
        labels = self.labels(doc.get("labels"), f"{path}.labels")
        ports = tuple(
            self.port(p, f"{path}.ports[{i}]")
            for i, p in enumerate(self.sequence(doc.get("ports", []), f"{path}.ports"))
        )
        command: tuple[str, ...] = ()
        if doc.get("command") is not None:
            command = self.argv(doc["command"], f"{path}.command")
            self.placeholders(command, f"{path}.command", services, set())
        return Workload(name, namespace, node, account, labels, ports, command)

    def known_namespace(self, value: object, path: str, namespaces: tuple[Namespace, ...]) -> str:
        if not any(ns.name == value for ns in namespaces):
            known = ", ".join(ns.name for ns in namespaces) or "none declared"
            raise self.fail(path, f"a namespace declared under demo.namespaces ({known})", value)
        return str(value)

    def worker_node(self, value: object, path: str, nodes: tuple[Node, ...]) -> str:
        workers = [n.name for n in nodes if n.is_worker]
        if value not in workers:
            raise self.fail(path, f"the name of a worker node ({', '.join(workers)})", value)
        return str(value)

    def placeholders(
        self, argv: tuple[str, ...], path: str, services: tuple[Service, ...], extra: set[str]
    ) -> None:
        for i, arg in enumerate(argv):
            for key in _PLACEHOLDER.findall(arg):
                if key == "python" or key in extra:
                    continue
                match = _VIP_PLACEHOLDER.match(key)
                if match is None:
                    known = ", ".join(
                        sorted(
                            {"{python}", "{vip:<service>.<namespace>}"}
                            | {f"{{{e}}}" for e in extra}
                        )
                    )
                    raise self.fail(f"{path}[{i}]", f"only the placeholders {known}", arg)
                service, namespace = match.groups()
                if not any(s.name == service and s.namespace == namespace for s in services):
                    raise self.fail(
                        f"{path}[{i}]",
                        f"a service declared under demo.services ('{service}.{namespace}' is not)",
                        arg,
                    )

    def check_netns_names(self, topology: Topology) -> None:
        """Netns names are built by joining names with '-', so distinct names can collide."""
        taken = {FABRIC_NETNS: "the fabric"}
        owners = [
            (f"nodes[{i}].name", n.name, n.netns, f"node '{n.name}'")
            for i, n in enumerate(topology.nodes)
        ] + [
            (f"demo.workloads[{i}].name", w.name, w.netns, f"workload '{w.name}'")
            for i, w in enumerate(topology.demo.workloads)
        ]
        for path, name, netns, owner in owners:
            if netns in taken:
                raise self.fail(
                    path, f"a name whose netns {netns} is not also {taken[netns]}'s", name
                )
            taken[netns] = owner


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --------------------------------------------------------------------------- deriving


def with_workers(topology: Topology, count: int) -> Topology:
    """The same lab with exactly `count` worker nodes (`weft lab up --nodes N`).

    Existing workers are kept in order; extra ones are `node<i>` at fabric address
    network+10+i with the i-th /24 of the pod CIDR pool. Demo workloads on a worker that no
    longer exists are spread round-robin over the remaining workers.
    """
    if count < 1:
        raise UsageError(f"--nodes must be at least 1, got {count}")
    workers = list(topology.workers)[:count]
    pool = topology.pod_cidr_pool
    subnets = list(pool.subnets(new_prefix=24)) if pool.prefixlen <= 24 else [pool]
    fabric = topology.fabric_cidr
    i = 0
    while len(workers) < count:
        i += 1
        ip = fabric.network_address + WORKER_IP_OFFSET + i
        if i >= len(subnets) or ip not in fabric or ip == fabric.broadcast_address:
            raise UsageError(
                f"--nodes {count} does not fit: fabricCIDR {fabric} and podCIDRPool {pool} "
                "hold fewer workers",
                hint="ask for fewer nodes or widen the ranges in the topology file",
            )
        taken = any(
            n.name == f"node{i}" or n.ip == ip or (n.pod_cidr and n.pod_cidr.overlaps(subnets[i]))
            for n in [*workers, *(n for n in topology.nodes if not n.is_worker)]
        )
        if not taken:
            workers.append(Node(f"node{i}", "worker", ip, subnets[i]))
    controls = [n for n in topology.nodes if not n.is_worker]
    kept = {w.name for w in workers}
    names = [w.name for w in workers]
    moved: list[Workload] = []
    spill = 0
    for workload in topology.demo.workloads:
        if workload.node in kept:
            moved.append(workload)
        else:
            moved.append(replace(workload, node=names[spill % len(names)]))
            spill += 1
    derived = replace(
        topology,
        nodes=tuple(controls + workers),
        demo=replace(topology.demo, workloads=tuple(moved)),
    )
    # Re-validate: the derived lab must satisfy every rule a hand-written one does.
    return parse_topology(derived.to_document(), f"{topology.source} (with --nodes {count})")
