"""What a configuration lets the fast path serve: services, routes, per-request decisions."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from waypoint.config import (
    BackendRef,
    ConnectionPool,
    LoadBalancerPolicy,
    PathMatchType,
    Route,
    RouteMatch,
    ServiceConfig,
    WaypointConfig,
)
from waypoint.fastpath.pool import Dial, FastPool
from waypoint.resilience import RandomSource, make_balancer
from waypoint.routing import choose_backend, precedence
from waypoint.telemetry import Series


def _fast_route(route: Route) -> bool:
    return (
        not route.filters
        and route.retry is None
        and route.timeouts.request_s is None
        and route.timeouts.backend_request_s is None
    )


class FastService:
    """One service's routes as the fast path matches them, and its telemetry series."""

    def __init__(self, service: ServiceConfig) -> None:
        self.service = service
        entries = [
            (precedence(match), match, route) for route in service.routes for match in route.matches
        ]
        entries.sort(key=lambda entry: entry[0], reverse=True)  # stable: earlier wins ties
        self.entries: tuple[tuple[RouteMatch, Route, bool], ...] = tuple(
            (match, route, _fast_route(route)) for _, match, route in entries
        )
        name, _, rest = service.hostname.partition(".")
        self.hostname = service.hostname
        self.name = name if rest else "unknown"
        self.namespace = rest.split(".")[0] if rest else "unknown"
        self.label_values = {
            "destination_service": service.hostname,
            "destination_service_name": name if rest else "unknown",
            "destination_service_namespace": rest.split(".")[0] if rest else "unknown",
        }
        # per (status, flags, source labels): see records.SourceLabels
        self.series: dict[tuple[int, str, tuple[str, str, str]], Series] = {}

    def match(self, method: str, path: str) -> Route | None:
        """The route Gateway API precedence picks for a path-and-method-only match table, or
        None when it is one the fast path cannot serve (or none matches: a 404 to answer)."""
        for match, route, fast in self.entries:
            condition = match.path
            kind = condition.type
            if kind is PathMatchType.PATH_PREFIX:
                prefix = condition.value.rstrip("/")
                if prefix and path != prefix and not path.startswith(prefix + "/"):
                    continue
            elif kind is PathMatchType.EXACT:
                if path != condition.value:
                    continue
            elif condition.pattern is None or condition.pattern.fullmatch(path) is None:
                continue
            if match.method is not None and match.method != method:
                continue
            return route if fast else None
        return None


def fast_service(service: ServiceConfig, config: WaypointConfig) -> FastService | None:
    """The fast path's view of a service, or None if its requests need the general path."""
    if config.authorization_policies or service.authorization_policies:
        return None
    for route in service.routes:
        if any(match.headers or match.query_params for match in route.matches):
            return None  # precedence would need conditions the fast path does not evaluate
    return FastService(service)


# (service, route, the pool of its one backend or None when it has weighted backends)
Decision = tuple[FastService, Route, "FastPool | None"]


class FastPlan:
    """The fast path's tables for one configuration: services by Host, pools by backend."""

    def __init__(
        self,
        config: WaypointConfig,
        endpoints: Mapping[str, Sequence[str]],
        find_service: Callable[[str | None, str | None], ServiceConfig | None],
        random: RandomSource,
        dial: Dial | None = None,
    ) -> None:
        self.config = config
        self.endpoints = endpoints
        self._find_service = find_service  # (tunnel destination or None, Host or None)
        self._random = random
        self._dial = dial
        self._services: dict[str, FastService | None] = {}
        self._tunnel_services: dict[str, FastService | None] = {}
        self._by_hostname: dict[str, FastService | None] = {}
        self._decided: dict[tuple[str, str, str], Decision | None] = {}
        self._tunnel_decided: dict[tuple[str, str, str], Decision | None] = {}
        self.pools: dict[str, FastPool | None] = {}

    def service(self, host: str, destination: str | None = None) -> FastService | None:
        """The service a request's Host names or, on a tunnel, the tunnel's destination (VIP:port
        or hostname:port: a Host header never overrides it, as on the general path)."""
        known = self._services if destination is None else self._tunnel_services
        name = host if destination is None else destination
        found = known.get(name, self)
        if found is not self:
            return found  # type: ignore[return-value]
        service = (
            self._find_service(None, host)
            if destination is None
            else self._find_service(destination, None)
        )
        fast = None
        if service is not None:
            if service.hostname not in self._by_hostname:
                self._by_hostname[service.hostname] = fast_service(service, self.config)
            fast = self._by_hostname[service.hostname]
        if len(known) < 1024:  # bounded against clients sending endless Hosts
            known[name] = fast
        return fast

    def decide(
        self, host: str, method: str, path: str, destination: str | None = None
    ) -> Decision | None:
        """The service, route and (for a route with one backend) pool of a request, or None if
        the general path must serve it; remembered per (Host or tunnel destination, method,
        path) while the configuration lasts (bounded: cleared when full)."""
        if destination is None:
            decisions, key = self._decided, (host, method, path)
        else:
            decisions, key = self._tunnel_decided, (destination, method, path)
        decided = decisions.get(key, self)
        if decided is not self:
            return decided  # type: ignore[return-value]
        result: Decision | None = None
        service = self.service(host, destination)
        route = None if service is None else service.match(method, path)
        if service is not None and route is not None:
            backends = route.backends
            if len(backends) == 1:
                pool = self.pool(backends[0]) if backends[0].weight else None
                result = None if pool is None else (service, route, pool)
            else:
                result = (service, route, None)
        if len(decisions) >= 4096:
            decisions.clear()
        decisions[key] = result
        return result

    def pool(self, ref: BackendRef) -> FastPool | None:
        """The backend's pool, or None when its DestinationRule asks for what the general path
        does (connection limits, outlier detection, consistent hashing) or it has no endpoint."""
        authority = ref.authority
        if authority in self.pools:
            return self.pools[authority]
        policy = self.config.traffic_policy_for(authority)
        endpoints = self.endpoints.get(authority, ())
        pool = None
        if (
            endpoints
            and policy.connection_pool == ConnectionPool()
            and policy.outlier_detection is None
            and policy.load_balancer.policy is not LoadBalancerPolicy.CONSISTENT_HASH
        ):
            pool = FastPool(
                authority, endpoints, make_balancer(policy.load_balancer, self._random), self._dial
            )
        self.pools[authority] = pool
        return pool

    def retire(self) -> None:
        for pool in self.pools.values():
            if pool is not None:
                pool.retire()


def choose(route: Route, random: RandomSource) -> BackendRef | None:
    backends = route.backends
    if len(backends) == 1:
        return backends[0] if backends[0].weight else None
    return choose_backend(backends, random)
