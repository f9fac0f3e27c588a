"""The waypoint's compiled configuration: routes, traffic policy and L7 authorization, frozen.

These types are waypoint-internal. A converter from `weft.model` (Gateway API / Istio shapes)
produces them; proxy code only ever sees these. Every type validates itself on construction so a
bad value fails where it is built, naming the field, and regular expressions are compiled once.
Durations are float seconds; percentages are 0..100 as in Istio's `Percent`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Network, IPv6Network, ip_network

# Istio's connectionPool defaults are 2^32-1 ("effectively unlimited").
UNLIMITED = 2**32 - 1


def _require(condition: bool, field_name: str, expected: str, got: object) -> None:
    if not condition:
        raise ValueError(f"field '{field_name}': expected {expected}, got {got!r}")


def _compile(pattern: str, field_name: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as error:
        raise ValueError(
            f"field '{field_name}': expected a regular expression, got {pattern!r} ({error})"
        ) from None


def _networks(blocks: tuple[str, ...], field_name: str) -> tuple[IPv4Network | IPv6Network, ...]:
    try:
        return tuple(ip_network(block, strict=False) for block in blocks)
    except ValueError as error:
        raise ValueError(f"field '{field_name}': expected CIDR blocks, got {blocks!r}") from error


def _is_percentage(value: float) -> bool:
    return 0.0 <= value <= 100.0


# --- route matches (Gateway API HTTPRouteMatch) ----------------------------------------------


class PathMatchType(StrEnum):
    EXACT = "Exact"
    PATH_PREFIX = "PathPrefix"
    REGULAR_EXPRESSION = "RegularExpression"


@dataclass(frozen=True)
class PathMatch:
    """A path condition; PathPrefix matches whole segments: `/foo` matches `/foo/x`, not `/foox`."""

    type: PathMatchType = PathMatchType.PATH_PREFIX
    value: str = "/"
    pattern: re.Pattern[str] | None = field(default=None, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.type is PathMatchType.REGULAR_EXPRESSION:
            object.__setattr__(self, "pattern", _compile(self.value, "path.value"))
        else:
            starts_with_slash = self.value.startswith("/")
            _require(starts_with_slash, "path.value", "a path starting with '/'", self.value)


class ValueMatchType(StrEnum):
    EXACT = "Exact"
    REGULAR_EXPRESSION = "RegularExpression"
    PRESENT = "Present"  # Weft extension: the header exists, whatever its value


@dataclass(frozen=True)
class HeaderMatch:
    """A request header condition; header names compare case-insensitively."""

    name: str
    value: str = ""
    type: ValueMatchType = ValueMatchType.EXACT
    pattern: re.Pattern[str] | None = field(default=None, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        _require(bool(self.name), "headers.name", "a header name", self.name)
        object.__setattr__(self, "name", self.name.lower())
        if self.type is ValueMatchType.REGULAR_EXPRESSION:
            object.__setattr__(self, "pattern", _compile(self.value, "headers.value"))


@dataclass(frozen=True)
class QueryParamMatch:
    """A query parameter condition; parameter names compare exactly, as Gateway API says."""

    name: str
    value: str = ""
    type: ValueMatchType = ValueMatchType.EXACT
    pattern: re.Pattern[str] | None = field(default=None, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        _require(bool(self.name), "queryParams.name", "a parameter name", self.name)
        if self.type is ValueMatchType.REGULAR_EXPRESSION:
            object.__setattr__(self, "pattern", _compile(self.value, "queryParams.value"))


@dataclass(frozen=True)
class RouteMatch:
    """All conditions must hold. With no path condition Gateway API's default is PathPrefix `/`."""

    path: PathMatch = field(default_factory=PathMatch)
    method: str | None = None
    headers: tuple[HeaderMatch, ...] = ()
    query_params: tuple[QueryParamMatch, ...] = ()


# --- filters (Gateway API HTTPRouteFilter, weft.io extension filters) ---------------------------


@dataclass(frozen=True)
class HeaderModifier:
    """`set` replaces, `add` appends, `remove` deletes; names compare case-insensitively."""

    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True)
class RequestHeaderModifier(HeaderModifier):
    """Header edits applied to the request before it goes to the backend."""


@dataclass(frozen=True)
class ResponseHeaderModifier(HeaderModifier):
    """Header edits applied to the response before it goes back to the client."""


class PathModifierType(StrEnum):
    REPLACE_FULL_PATH = "ReplaceFullPath"
    REPLACE_PREFIX_MATCH = "ReplacePrefixMatch"


@dataclass(frozen=True)
class PathModifier:
    """A path rewrite; ReplacePrefixMatch needs the route match to be a PathPrefix match."""

    type: PathModifierType
    value: str

    def __post_init__(self) -> None:
        _require(self.value.startswith("/"), "path.value", "a path starting with '/'", self.value)


REDIRECT_STATUS_CODES = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class RequestRedirect:
    """Answer with a redirect instead of forwarding; unset parts keep the request's value."""

    scheme: str | None = None
    hostname: str | None = None
    path: PathModifier | None = None
    port: int | None = None
    status_code: int = 302

    def __post_init__(self) -> None:
        _require(
            self.status_code in REDIRECT_STATUS_CODES,
            "requestRedirect.statusCode",
            f"one of {sorted(REDIRECT_STATUS_CODES)}",
            self.status_code,
        )


@dataclass(frozen=True)
class URLRewrite:
    """Rewrite the host and/or path of the forwarded request."""

    hostname: str | None = None
    path: PathModifier | None = None


@dataclass(frozen=True)
class FaultDelay:
    fixed_delay_s: float
    percentage: float = 100.0

    def __post_init__(self) -> None:
        _require(self.fixed_delay_s >= 0, "delay.fixedDelay", "a duration >= 0", self.fixed_delay_s)
        _require(_is_percentage(self.percentage), "delay.percentage", "0..100", self.percentage)


@dataclass(frozen=True)
class FaultAbort:
    http_status: int
    percentage: float = 100.0

    def __post_init__(self) -> None:
        status = self.http_status
        _require(200 <= status <= 599, "abort.httpStatus", "a status 200..599", status)
        _require(_is_percentage(self.percentage), "abort.percentage", "0..100", self.percentage)


@dataclass(frozen=True)
class FaultInjection:
    """weft.io FaultInjection: delay and/or abort a share of the route's requests."""

    delay: FaultDelay | None = None
    abort: FaultAbort | None = None


@dataclass(frozen=True)
class RateLimit:
    """weft.io RateLimit: a token bucket per route, `tokens_per_fill` added every interval."""

    max_tokens: int
    fill_interval_s: float
    tokens_per_fill: int | None = None  # default: refill the whole bucket each interval

    def __post_init__(self) -> None:
        _require(self.max_tokens >= 1, "rateLimit.tokens", "an integer >= 1", self.max_tokens)
        _require(
            self.fill_interval_s > 0,
            "rateLimit.fillInterval",
            "a duration > 0",
            self.fill_interval_s,
        )
        if self.tokens_per_fill is not None:
            _require(
                self.tokens_per_fill >= 1,
                "rateLimit.tokensPerFill",
                "an integer >= 1",
                self.tokens_per_fill,
            )

    @property
    def refill(self) -> int:
        return self.max_tokens if self.tokens_per_fill is None else self.tokens_per_fill


RouteFilter = (
    RequestHeaderModifier
    | ResponseHeaderModifier
    | RequestRedirect
    | URLRewrite
    | FaultInjection
    | RateLimit
)


# --- backends, timeouts, retries -----------------------------------------------------------------


@dataclass(frozen=True)
class BackendRef:
    """A concrete service the route sends to; weight is relative to the route's other backends."""

    name: str
    port: int
    namespace: str = "default"
    weight: int = 1

    def __post_init__(self) -> None:
        _require(self.weight >= 0, "backendRefs.weight", "an integer >= 0", self.weight)
        _require(0 < self.port < 65536, "backendRefs.port", "a port 1..65535", self.port)

    @property
    def authority(self) -> str:
        return f"{self.name}.{self.namespace}:{self.port}"


@dataclass(frozen=True)
class Timeouts:
    """Gateway API HTTPRouteTimeouts: `request` bounds the whole exchange including retries,
    `backend_request` bounds each try. None means no timeout."""

    request_s: float | None = None
    backend_request_s: float | None = None

    def __post_init__(self) -> None:
        durations = (("request", self.request_s), ("backendRequest", self.backend_request_s))
        for name, value in durations:
            _require(value is None or value > 0, f"timeouts.{name}", "a duration > 0", value)


class RetryOn(StrEnum):
    """Envoy's retry conditions, which Istio exposes as `retryOn` (weft.model.RETRY_ON_CONDITIONS).

    The gRPC ones match the grpc-status of a response of which nothing has reached the client:
    a trailers-only response (the status in its headers) or headers and trailers with no message
    between them. A status in trailers after a message was relayed cannot be retried."""

    SERVER_ERROR = "5xx"  # any 5xx, a reset, a connect failure or a per-try timeout
    GATEWAY_ERROR = "gateway-error"  # 502, 503, 504, a reset, connect failure or per-try timeout
    RESET = "reset"  # no response at all: disconnect, reset or per-try timeout
    CONNECT_FAILURE = "connect-failure"
    RETRIABLE_STATUS_CODES = "retriable-status-codes"
    CANCELLED = "cancelled"  # grpc-status 1
    DEADLINE_EXCEEDED = "deadline-exceeded"  # 4
    RESOURCE_EXHAUSTED = "resource-exhausted"  # 8
    INTERNAL = "internal"  # 13
    UNAVAILABLE = "unavailable"  # 14


# The grpc-status code each gRPC retry condition matches (grpc/doc/statuscodes.md).
GRPC_RETRY_STATUS = {
    RetryOn.CANCELLED: 1,
    RetryOn.DEADLINE_EXCEEDED: 4,
    RetryOn.RESOURCE_EXHAUSTED: 8,
    RetryOn.INTERNAL: 13,
    RetryOn.UNAVAILABLE: 14,
}


@dataclass(frozen=True)
class RetryPolicy:
    """`attempts` counts retries after the first try, as Istio's HTTPRetry does."""

    attempts: int = 2
    per_try_timeout_s: float | None = None
    retry_on: frozenset[RetryOn] = frozenset(
        {RetryOn.CONNECT_FAILURE, RetryOn.RETRIABLE_STATUS_CODES}
    )
    retriable_status_codes: frozenset[int] = frozenset({503})
    backoff_base_s: float = 0.025
    backoff_max_s: float = 0.250
    # the grpc-status codes the gRPC conditions of retry_on retry (empty: gRPC status is not
    # looked at, and a response is relayed as soon as its head arrives)
    grpc_statuses: frozenset[int] = field(
        default=frozenset(), init=False, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        _require(self.attempts >= 0, "retry.attempts", "an integer >= 0", self.attempts)
        _require(
            self.per_try_timeout_s is None or self.per_try_timeout_s > 0,
            "retry.perTryTimeout",
            "a duration > 0",
            self.per_try_timeout_s,
        )
        _require(
            0 <= self.backoff_base_s <= self.backoff_max_s,
            "retry.backoff",
            "0 <= base <= max",
            (self.backoff_base_s, self.backoff_max_s),
        )
        statuses = frozenset(GRPC_RETRY_STATUS[c] for c in self.retry_on if c in GRPC_RETRY_STATUS)
        object.__setattr__(self, "grpc_statuses", statuses)


@dataclass(frozen=True)
class Route:
    """One HTTPRoute rule: it applies when ANY of its matches holds."""

    name: str
    matches: tuple[RouteMatch, ...] = (RouteMatch(),)
    filters: tuple[RouteFilter, ...] = ()
    backends: tuple[BackendRef, ...] = ()
    timeouts: Timeouts = field(default_factory=Timeouts)
    retry: RetryPolicy | None = None

    def __post_init__(self) -> None:
        for route_filter in self.filters:
            if isinstance(route_filter, (URLRewrite, RequestRedirect)):
                path = route_filter.path
                if path is not None and path.type is PathModifierType.REPLACE_PREFIX_MATCH:
                    _require(
                        all(m.path.type is PathMatchType.PATH_PREFIX for m in self.matches),
                        f"routes[{self.name}].filters.path",
                        "ReplacePrefixMatch only with PathPrefix matches",
                        [m.path.type.value for m in self.matches],
                    )
        redirects = sum(isinstance(f, RequestRedirect) for f in self.filters)
        rewrites = sum(isinstance(f, URLRewrite) for f in self.filters)
        _require(
            not (redirects and rewrites),
            f"routes[{self.name}].filters",
            "requestRedirect or urlRewrite, not both",
            "both",
        )


# --- traffic policy (Istio DestinationRule) ------------------------------------------------------


class LoadBalancerPolicy(StrEnum):
    ROUND_ROBIN = "ROUND_ROBIN"
    LEAST_REQUEST = "LEAST_REQUEST"
    RANDOM = "RANDOM"
    CONSISTENT_HASH = "CONSISTENT_HASH"


@dataclass(frozen=True)
class LoadBalancer:
    policy: LoadBalancerPolicy = LoadBalancerPolicy.LEAST_REQUEST  # Istio's default
    hash_header: str | None = None  # consistentHash.httpHeaderName

    def __post_init__(self) -> None:
        if self.policy is LoadBalancerPolicy.CONSISTENT_HASH:
            _require(
                bool(self.hash_header),
                "loadBalancer.consistentHash.httpHeaderName",
                "a header name",
                self.hash_header,
            )
            object.__setattr__(self, "hash_header", (self.hash_header or "").lower())


@dataclass(frozen=True)
class ConnectionPool:
    max_connections: int = UNLIMITED
    max_pending_requests: int = UNLIMITED
    max_requests_per_connection: int = 0  # 0: unlimited, as in Istio

    def __post_init__(self) -> None:
        _require(self.max_connections >= 1, "tcp.maxConnections", ">= 1", self.max_connections)
        _require(
            self.max_pending_requests >= 0,
            "http.http1MaxPendingRequests",
            ">= 0",
            self.max_pending_requests,
        )
        _require(
            self.max_requests_per_connection >= 0,
            "http.maxRequestsPerConnection",
            ">= 0",
            self.max_requests_per_connection,
        )


@dataclass(frozen=True)
class OutlierDetection:
    consecutive_5xx_errors: int = 5
    interval_s: float = 10.0
    base_ejection_time_s: float = 30.0
    max_ejection_percent: int = 10

    def __post_init__(self) -> None:
        _require(
            self.consecutive_5xx_errors >= 1,
            "outlierDetection.consecutive5xxErrors",
            ">= 1",
            self.consecutive_5xx_errors,
        )
        _require(
            0 <= self.max_ejection_percent <= 100,
            "outlierDetection.maxEjectionPercent",
            "0..100",
            self.max_ejection_percent,
        )
        _require(
            self.base_ejection_time_s > 0,
            "outlierDetection.baseEjectionTime",
            "a duration > 0",
            self.base_ejection_time_s,
        )


@dataclass(frozen=True)
class TrafficPolicy:
    """DestinationRule trafficPolicy for one concrete service."""

    load_balancer: LoadBalancer = field(default_factory=LoadBalancer)
    connection_pool: ConnectionPool = field(default_factory=ConnectionPool)
    outlier_detection: OutlierDetection | None = None


# --- L7 authorization (Istio AuthorizationPolicy) ----------------------------------------------


class AuthorizationAction(StrEnum):
    ALLOW = "ALLOW"
    DENY = "DENY"
    AUDIT = "AUDIT"


@dataclass(frozen=True)
class Source:
    """`from.source`: principals are `<trust-domain>/ns/<ns>/sa/<sa>`, with `*` wildcards."""

    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    not_namespaces: tuple[str, ...] = ()
    ip_blocks: tuple[str, ...] = ()  # CIDRs or single addresses
    not_ip_blocks: tuple[str, ...] = ()
    networks: tuple[IPv4Network | IPv6Network, ...] = field(
        default=(), init=False, compare=False, repr=False
    )
    not_networks: tuple[IPv4Network | IPv6Network, ...] = field(
        default=(), init=False, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "networks", _networks(self.ip_blocks, "source.ipBlocks"))
        object.__setattr__(
            self, "not_networks", _networks(self.not_ip_blocks, "source.notIpBlocks")
        )


@dataclass(frozen=True)
class Operation:
    """`to.operation`: hosts, methods and paths accept Istio's `prefix*`, `*suffix` and `*`."""

    hosts: tuple[str, ...] = ()
    not_hosts: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    not_methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    not_paths: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    not_ports: tuple[int, ...] = ()


HEADER_CONDITION = re.compile(r"^request\.headers\[([^\]]+)\]$")
CONDITION_KEYS = ("source.principal", "source.namespace", "request.headers[<name>]")


@dataclass(frozen=True)
class Condition:
    """`when`: a key such as `request.headers[x-user]` with values (`*` wildcards allowed)."""

    key: str
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        known = self.key in CONDITION_KEYS[:2] or HEADER_CONDITION.match(self.key) is not None
        _require(known, "when.key", f"one of {', '.join(CONDITION_KEYS)}", self.key)


@dataclass(frozen=True)
class Rule:
    """A rule matches if ALL of its from/to/when clauses match (an empty rule matches anything)."""

    sources: tuple[Source, ...] = ()
    operations: tuple[Operation, ...] = ()
    conditions: tuple[Condition, ...] = ()


@dataclass(frozen=True)
class AuthorizationPolicy:
    """An ALLOW policy with no rules allows nothing; DENY or AUDIT with no rules never applies."""

    name: str
    namespace: str
    action: AuthorizationAction = AuthorizationAction.ALLOW
    rules: tuple[Rule, ...] = ()


# --- the whole waypoint ------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceConfig:
    """What the waypoint does for one logical service: its routes in creation order."""

    hostname: str  # e.g. reviews.default.svc.cluster.local
    port: int
    routes: tuple[Route, ...] = ()
    vips: tuple[str, ...] = ()  # the service's virtual IPs; HBONE tunnels name the VIP:port
    authorization_policies: tuple[AuthorizationPolicy, ...] = ()  # those targeting this service


@dataclass(frozen=True)
class WaypointConfig:
    """The compiled configuration of one waypoint."""

    services: tuple[ServiceConfig, ...] = ()
    traffic_policies: tuple[tuple[str, TrafficPolicy], ...] = ()  # (backend authority, policy)
    authorization_policies: tuple[AuthorizationPolicy, ...] = ()  # those targeting the waypoint
    request_body_buffer_limit: int = 64 * 1024  # bodies above this are streamed and not retried

    def traffic_policy_for(self, backend: BackendRef | str) -> TrafficPolicy:
        """The policy of a backend (or of its authority, `name.namespace:port`)."""
        wanted = backend if isinstance(backend, str) else backend.authority
        for authority, policy in self.traffic_policies:
            if authority == wanted:
                return policy
        return TrafficPolicy()
