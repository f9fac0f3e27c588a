"""The domain model: validated resources as frozen dataclasses, free of YAML and protobuf.

`weft.resources` builds these from operator YAML and `weft.api.convert` from the wire; everything
else (controller scoping, agent, waypoint) reads only these types. Shapes mirror Istio's security
and networking APIs and the Gateway API so that the vocabulary carries over.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network

from weft.identity import DEFAULT_TRUST_DOMAIN, Identity

API_GROUP = "weft.io"
DATAPLANE_MODE_LABEL = "weft.io/dataplane-mode"
USE_WAYPOINT_LABEL = "weft.io/use-waypoint"
# Policies in this namespace apply to every workload of the mesh, as istio-system's do in Istio.
ROOT_NAMESPACE = "weft-system"


class Kind(StrEnum):
    """Every resource kind the controller stores, spelled as in YAML `kind:`."""

    NAMESPACE = "Namespace"
    WORKLOAD = "Workload"
    SERVICE = "Service"
    WAYPOINT = "Waypoint"
    AUTHORIZATION_POLICY = "AuthorizationPolicy"
    PEER_AUTHENTICATION = "PeerAuthentication"
    HTTP_ROUTE = "HTTPRoute"
    DESTINATION_RULE = "DestinationRule"
    FAULT_INJECTION = "FaultInjection"
    RATE_LIMIT = "RateLimit"

    @property
    def namespaced(self) -> bool:
        return self is not Kind.NAMESPACE


@dataclass(frozen=True, order=True)
class ResourceKey:
    """Names one stored resource; `namespace` is "" for cluster-scoped kinds (Namespace)."""

    kind: Kind
    namespace: str
    name: str

    def __str__(self) -> str:
        if self.namespace:
            return f"{self.kind.value}/{self.namespace}/{self.name}"
        return f"{self.kind.value}/{self.name}"


@dataclass(frozen=True)
class Metadata:
    name: str
    namespace: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


# --- Namespace, Workload, Service, Waypoint -------------------------------------------------


class DataplaneMode(StrEnum):
    AMBIENT = "ambient"
    NONE = "none"


@dataclass(frozen=True)
class Namespace:
    metadata: Metadata

    @property
    def dataplane_mode(self) -> DataplaneMode:
        value = self.metadata.labels.get(DATAPLANE_MODE_LABEL)
        return DataplaneMode.AMBIENT if value == DataplaneMode.AMBIENT.value else DataplaneMode.NONE

    @property
    def use_waypoint(self) -> str | None:
        return self.metadata.labels.get(USE_WAYPOINT_LABEL)


@dataclass(frozen=True)
class Workload:
    """A pod-like process group on one node with one address (Istio WorkloadEntry + node)."""

    metadata: Metadata
    address: IPv4Address
    node: str
    service_account: str = "default"
    labels: Mapping[str, str] = field(
        default_factory=dict
    )  # spec.labels; selectors match these and metadata labels
    ports: Mapping[str, int] = field(default_factory=dict)

    @property
    def selector_labels(self) -> Mapping[str, str]:
        return {**self.metadata.labels, **self.labels}

    @property
    def meshed_opt_out(self) -> bool:
        return self.metadata.labels.get(DATAPLANE_MODE_LABEL) == DataplaneMode.NONE.value

    def identity(self, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> Identity:
        return Identity.for_workload(self.metadata.namespace, self.service_account, trust_domain)


@dataclass(frozen=True)
class ServicePort:
    port: int
    target_port: int
    name: str = ""
    protocol: str = "TCP"
    app_protocol: str = ""


@dataclass(frozen=True)
class Service:
    """A VIP and ports in front of the workloads its selector matches (Kubernetes Service shape)."""

    metadata: Metadata
    vip: IPv4Address | None
    ports: tuple[ServicePort, ...]
    selector: Mapping[str, str] = field(default_factory=dict)

    def selects(self, workload: Workload) -> bool:
        if not self.selector or workload.metadata.namespace != self.metadata.namespace:
            return False
        labels = workload.selector_labels
        return all(labels.get(k) == v for k, v in self.selector.items())

    @property
    def use_waypoint(self) -> str | None:
        return self.metadata.labels.get(USE_WAYPOINT_LABEL)


class WaypointTrafficType(StrEnum):
    SERVICE = "service"
    WORKLOAD = "workload"
    ALL = "all"


@dataclass(frozen=True)
class Waypoint:
    """A shared L7 proxy: where it runs, its address, and which traffic it is for."""

    metadata: Metadata
    address: IPv4Address
    node: str
    service_account: str = "waypoint"
    port: int = 15008
    traffic_type: WaypointTrafficType = WaypointTrafficType.SERVICE


# --- Security: AuthorizationPolicy, PeerAuthentication --------------------------------------


@dataclass(frozen=True)
class WorkloadSelector:
    match_labels: Mapping[str, str] = field(default_factory=dict)

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels.items())


@dataclass(frozen=True)
class PolicyTargetReference:
    kind: str
    name: str
    group: str = ""


class AuthorizationAction(StrEnum):
    ALLOW = "ALLOW"
    DENY = "DENY"
    AUDIT = "AUDIT"


@dataclass(frozen=True)
class Source:
    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    not_namespaces: tuple[str, ...] = ()
    ip_blocks: tuple[IPv4Network, ...] = ()
    not_ip_blocks: tuple[IPv4Network, ...] = ()


@dataclass(frozen=True)
class Operation:
    hosts: tuple[str, ...] = ()
    not_hosts: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    not_ports: tuple[int, ...] = ()
    methods: tuple[str, ...] = ()
    not_methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    not_paths: tuple[str, ...] = ()

    @property
    def is_l7(self) -> bool:
        """Hosts, methods and paths need a waypoint; a node agent alone cannot see them."""
        return bool(
            self.hosts or self.not_hosts or self.methods or self.not_methods or self.paths
        ) or bool(self.not_paths)


@dataclass(frozen=True)
class Condition:
    key: str
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rule:
    """If ALL of from, to and when match, the rule matches; within each list, ANY entry matches."""

    sources: tuple[Source, ...] = ()
    operations: tuple[Operation, ...] = ()
    conditions: tuple[Condition, ...] = ()


@dataclass(frozen=True)
class AuthorizationPolicy:
    metadata: Metadata
    action: AuthorizationAction = AuthorizationAction.ALLOW
    selector: WorkloadSelector | None = None
    target_refs: tuple[PolicyTargetReference, ...] = ()
    rules: tuple[Rule, ...] = ()


class MutualTLSMode(StrEnum):
    STRICT = "STRICT"
    PERMISSIVE = "PERMISSIVE"


@dataclass(frozen=True)
class PeerAuthentication:
    metadata: Metadata
    mode: MutualTLSMode | None = None  # None: inherit from the namespace or the mesh
    selector: WorkloadSelector | None = None
    port_level: Mapping[int, MutualTLSMode] = field(default_factory=dict)


# --- Traffic: HTTPRoute, DestinationRule and the weft.io route filters ---------------------


class PathMatchType(StrEnum):
    EXACT = "Exact"
    PREFIX = "PathPrefix"
    REGEX = "RegularExpression"


class HeaderMatchType(StrEnum):
    EXACT = "Exact"
    REGEX = "RegularExpression"


@dataclass(frozen=True)
class PathMatch:
    type: PathMatchType
    value: str


@dataclass(frozen=True)
class HeaderMatch:
    name: str
    value: str
    type: HeaderMatchType = HeaderMatchType.EXACT


@dataclass(frozen=True)
class RouteMatch:
    path: PathMatch | None = None
    method: str | None = None
    headers: tuple[HeaderMatch, ...] = ()
    query_params: tuple[HeaderMatch, ...] = ()


@dataclass(frozen=True)
class HeaderModifier:
    set: Mapping[str, str] = field(default_factory=dict)
    add: Mapping[str, str] = field(default_factory=dict)
    remove: tuple[str, ...] = ()


@dataclass(frozen=True)
class RequestRedirect:
    scheme: str | None = None
    hostname: str | None = None
    path: PathRewrite | None = None
    port: int | None = None
    status_code: int = 302


@dataclass(frozen=True)
class PathRewrite:
    """Gateway API HTTPPathModifier: exactly one of full path or prefix replacement."""

    replace_full_path: str | None = None
    replace_prefix_match: str | None = None


@dataclass(frozen=True)
class URLRewrite:
    hostname: str | None = None
    path: PathRewrite | None = None


@dataclass(frozen=True)
class ExtensionRef:
    """A route filter naming a weft.io FaultInjection or RateLimit in the route's namespace."""

    kind: Kind
    name: str


@dataclass(frozen=True)
class RouteFilter:
    """Exactly one of the fields is set, as Gateway API's `type` says."""

    request_header_modifier: HeaderModifier | None = None
    response_header_modifier: HeaderModifier | None = None
    request_redirect: RequestRedirect | None = None
    url_rewrite: URLRewrite | None = None
    extension_ref: ExtensionRef | None = None


@dataclass(frozen=True)
class BackendRef:
    name: str
    port: int | None = None
    namespace: str = ""  # "" = the route's namespace
    weight: int = 1


@dataclass(frozen=True)
class RouteTimeouts:
    request: float | None = None  # seconds; None = no timeout
    backend_request: float | None = None


# Istio's `retries.retryOn` conditions (Envoy's x-envoy-retry-on and x-envoy-retry-grpc-on) the
# waypoint enforces; the gRPC ones match the grpc-status of a response nothing of which has
# reached the client yet.
HTTP_RETRY_ON = ("5xx", "gateway-error", "reset", "connect-failure", "retriable-status-codes")
GRPC_RETRY_ON = ("cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable")
RETRY_ON_CONDITIONS = HTTP_RETRY_ON + GRPC_RETRY_ON


@dataclass(frozen=True)
class RouteRetry:
    attempts: int = 0
    codes: tuple[int, ...] = ()
    backoff: float | None = None
    per_try_timeout: float | None = None
    retry_on: tuple[str, ...] = ()  # RETRY_ON_CONDITIONS; empty: the route's default conditions


@dataclass(frozen=True)
class RouteRule:
    matches: tuple[RouteMatch, ...] = ()
    filters: tuple[RouteFilter, ...] = ()
    backend_refs: tuple[BackendRef, ...] = ()
    timeouts: RouteTimeouts | None = None
    retry: RouteRetry | None = None


@dataclass(frozen=True)
class ParentRef:
    name: str
    kind: str = "Service"
    group: str = ""
    namespace: str = ""
    port: int | None = None


@dataclass(frozen=True)
class HTTPRoute:
    metadata: Metadata
    parent_refs: tuple[ParentRef, ...]
    hostnames: tuple[str, ...] = ()
    rules: tuple[RouteRule, ...] = ()


@dataclass(frozen=True)
class FaultInjection:
    """Istio-style HTTP fault: delay and/or abort a percentage of requests."""

    metadata: Metadata
    delay_seconds: float | None = None
    delay_percentage: float = 100.0
    abort_status: int | None = None
    abort_percentage: float = 100.0


@dataclass(frozen=True)
class RateLimit:
    """A local token bucket: `requests` per `unit_seconds`, bursting up to `burst`."""

    metadata: Metadata
    requests: int
    unit_seconds: float
    burst: int


class LoadBalancerPolicy(StrEnum):
    ROUND_ROBIN = "ROUND_ROBIN"
    LEAST_REQUEST = "LEAST_REQUEST"
    RANDOM = "RANDOM"
    CONSISTENT_HASH = "CONSISTENT_HASH"


@dataclass(frozen=True)
class ConsistentHash:
    http_header_name: str | None = None
    use_source_ip: bool = False


@dataclass(frozen=True)
class ConnectionPool:
    max_connections: int | None = None
    connect_timeout: float | None = None
    http1_max_pending_requests: int | None = None
    http2_max_requests: int | None = None
    max_requests_per_connection: int | None = None
    max_retries: int | None = None


@dataclass(frozen=True)
class OutlierDetection:
    consecutive_5xx_errors: int | None = None
    consecutive_gateway_errors: int | None = None
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_percent: int = 10


@dataclass(frozen=True)
class TrafficPolicy:
    load_balancer: LoadBalancerPolicy = LoadBalancerPolicy.ROUND_ROBIN
    consistent_hash: ConsistentHash | None = None
    connection_pool: ConnectionPool | None = None
    outlier_detection: OutlierDetection | None = None


@dataclass(frozen=True)
class Subset:
    name: str
    labels: Mapping[str, str]


@dataclass(frozen=True)
class DestinationRule:
    metadata: Metadata
    host: str
    traffic_policy: TrafficPolicy = TrafficPolicy()
    subsets: tuple[Subset, ...] = ()


Resource = (
    Namespace
    | Workload
    | Service
    | Waypoint
    | AuthorizationPolicy
    | PeerAuthentication
    | HTTPRoute
    | DestinationRule
    | FaultInjection
    | RateLimit
)

KIND_OF_TYPE: Mapping[type, Kind] = {
    Namespace: Kind.NAMESPACE,
    Workload: Kind.WORKLOAD,
    Service: Kind.SERVICE,
    Waypoint: Kind.WAYPOINT,
    AuthorizationPolicy: Kind.AUTHORIZATION_POLICY,
    PeerAuthentication: Kind.PEER_AUTHENTICATION,
    HTTPRoute: Kind.HTTP_ROUTE,
    DestinationRule: Kind.DESTINATION_RULE,
    FaultInjection: Kind.FAULT_INJECTION,
    RateLimit: Kind.RATE_LIMIT,
}


def kind_of(resource: Resource) -> Kind:
    return KIND_OF_TYPE[type(resource)]


def key_of(resource: Resource) -> ResourceKey:
    meta = resource.metadata
    return ResourceKey(kind_of(resource), meta.namespace, meta.name)


# --- Controller status (what `weft status` shows) -----------------------------------------


@dataclass(frozen=True)
class AgentReport:
    """One node's agent as the controller sees it."""

    node: str
    connected: bool
    sent_version: int
    acked_version: int
    lag: int  # store revision minus acked version
    nacked_version: int = 0  # 0: no NACK outstanding
    nack_error: str = ""
    connected_since: float = 0.0  # unix seconds


@dataclass(frozen=True)
class NodeCertificateReport:
    node: str
    serial: str
    not_after: float  # unix seconds


@dataclass(frozen=True)
class ControllerStatus:
    trust_domain: str
    revision: int
    resources: int
    started_at: float  # unix seconds
    agents: tuple[AgentReport, ...] = ()
    node_certificates: tuple[NodeCertificateReport, ...] = ()
    root_not_after: tuple[float, ...] = ()  # unix seconds, one per trust bundle root
