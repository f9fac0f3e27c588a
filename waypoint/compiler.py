"""Compile the domain model (weft.model) into one waypoint's configuration (waypoint.config).

The only module of the waypoint that reads weft.model: HTTPRoutes become routes of the services
they attach to, DestinationRules become traffic policies of the backends routes send to, weft.io
FaultInjection / RateLimit extension refs become filters, and the AuthorizationPolicies that
target a served service (or the waypoint itself) become its L7 policies.

Where the model can say something this waypoint cannot enforce (a `when` key it does not know),
the compiler fails closed as Istio does: an ALLOW rule that cannot be checked is dropped (it
allows nothing), a DENY rule is kept without the clause (it denies more, never less).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from waypoint import config
from weft import model

_R = TypeVar("_R")

GATEWAY_KINDS = ("Waypoint", "Gateway")
SUPPORTED_CONDITION_KEYS = ("source.principal", "source.namespace")


class CompileError(ValueError):
    """A resource cannot be compiled; the message names the resource and the field."""


def _resource(kind: str, metadata: model.Metadata) -> str:
    return f"{kind} {metadata.namespace}/{metadata.name}"


# --- routes -------------------------------------------------------------------------------------


def _attaches(route: model.HTTPRoute, service: model.Service, port: int) -> bool:
    for parent in route.parent_refs:
        namespace = parent.namespace or route.metadata.namespace
        if (
            parent.kind == "Service"
            and parent.group in ("", "core")
            and parent.name == service.metadata.name
            and namespace == service.metadata.namespace
            and parent.port in (None, port)
        ):
            return True
    return False


def _path_match(match: model.PathMatch | None) -> config.PathMatch:
    if match is None:
        return config.PathMatch()
    kinds = {
        model.PathMatchType.EXACT: config.PathMatchType.EXACT,
        model.PathMatchType.PREFIX: config.PathMatchType.PATH_PREFIX,
        model.PathMatchType.REGEX: config.PathMatchType.REGULAR_EXPRESSION,
    }
    return config.PathMatch(kinds[match.type], match.value)


def _value_type(kind: model.HeaderMatchType) -> config.ValueMatchType:
    if kind is model.HeaderMatchType.REGEX:
        return config.ValueMatchType.REGULAR_EXPRESSION
    return config.ValueMatchType.EXACT


def _route_match(match: model.RouteMatch) -> config.RouteMatch:
    return config.RouteMatch(
        path=_path_match(match.path),
        method=match.method,
        headers=tuple(
            config.HeaderMatch(h.name, h.value, _value_type(h.type)) for h in match.headers
        ),
        query_params=tuple(
            config.QueryParamMatch(q.name, q.value, _value_type(q.type)) for q in match.query_params
        ),
    )


def _path_modifier(rewrite: model.PathRewrite | None) -> config.PathModifier | None:
    if rewrite is None:
        return None
    if rewrite.replace_full_path is not None:
        return config.PathModifier(
            config.PathModifierType.REPLACE_FULL_PATH, rewrite.replace_full_path
        )
    if rewrite.replace_prefix_match is not None:
        return config.PathModifier(
            config.PathModifierType.REPLACE_PREFIX_MATCH, rewrite.replace_prefix_match
        )
    return None


class _Extensions:
    """weft.io FaultInjection and RateLimit resources, found by (namespace, name)."""

    def __init__(
        self, faults: Sequence[model.FaultInjection], rate_limits: Sequence[model.RateLimit]
    ) -> None:
        self.faults = {(f.metadata.namespace, f.metadata.name): f for f in faults}
        self.rate_limits = {(r.metadata.namespace, r.metadata.name): r for r in rate_limits}

    def filter_for(self, ref: model.ExtensionRef, route: model.HTTPRoute) -> config.RouteFilter:
        key = (route.metadata.namespace, ref.name)
        where = f"{_resource('HTTPRoute', route.metadata)}: field 'filters.extensionRef'"
        if ref.kind is model.Kind.FAULT_INJECTION:
            fault = self.faults.get(key)
            if fault is None:
                raise CompileError(f"{where}: no FaultInjection {key[0]}/{key[1]}")
            delay = abort = None
            if fault.delay_seconds is not None:
                delay = config.FaultDelay(fault.delay_seconds, fault.delay_percentage)
            if fault.abort_status is not None:
                abort = config.FaultAbort(fault.abort_status, fault.abort_percentage)
            return config.FaultInjection(delay=delay, abort=abort)
        if ref.kind is model.Kind.RATE_LIMIT:
            limit = self.rate_limits.get(key)
            if limit is None:
                raise CompileError(f"{where}: no RateLimit {key[0]}/{key[1]}")
            # requests per unit, bursting to `burst`: Envoy's bucket of `burst` tokens refilled
            # with `requests` tokens every unit.
            return config.RateLimit(
                max_tokens=max(limit.burst, 1),
                fill_interval_s=limit.unit_seconds,
                tokens_per_fill=limit.requests,
            )
        raise CompileError(f"{where}: kind {ref.kind.value} is not a route filter")


def _route_filter(
    route_filter: model.RouteFilter, route: model.HTTPRoute, extensions: _Extensions
) -> config.RouteFilter:
    if route_filter.request_header_modifier is not None:
        edits = route_filter.request_header_modifier
        return config.RequestHeaderModifier(
            set=tuple(edits.set.items()), add=tuple(edits.add.items()), remove=edits.remove
        )
    if route_filter.response_header_modifier is not None:
        edits = route_filter.response_header_modifier
        return config.ResponseHeaderModifier(
            set=tuple(edits.set.items()), add=tuple(edits.add.items()), remove=edits.remove
        )
    if route_filter.request_redirect is not None:
        redirect = route_filter.request_redirect
        return config.RequestRedirect(
            scheme=redirect.scheme,
            hostname=redirect.hostname,
            path=_path_modifier(redirect.path),
            port=redirect.port,
            status_code=redirect.status_code,
        )
    if route_filter.url_rewrite is not None:
        rewrite = route_filter.url_rewrite
        return config.URLRewrite(hostname=rewrite.hostname, path=_path_modifier(rewrite.path))
    if route_filter.extension_ref is not None:
        return extensions.filter_for(route_filter.extension_ref, route)
    raise CompileError(f"{_resource('HTTPRoute', route.metadata)}: field 'filters': empty filter")


def _retry(retry: model.RouteRetry | None) -> config.RetryPolicy | None:
    if retry is None:
        return None
    if retry.retry_on:
        # Istio's retryOn says exactly what is retried (the resource layer checked the names and
        # added retriable-status-codes for codes it listed).
        known = {condition.value: condition for condition in config.RetryOn}
        unknown = [c for c in retry.retry_on if c not in known]
        if unknown:
            raise ValueError(
                f"field 'retry.retryOn': {', '.join(map(repr, unknown))} is not a retry "
                f"condition the waypoint enforces; allowed: {', '.join(known)}"
            )
        retry_on = {known[condition] for condition in retry.retry_on}
        if retry.codes:
            retry_on.add(config.RetryOn.RETRIABLE_STATUS_CODES)
    else:
        # Gateway API's codes are the retriable status codes; with none listed, retry any 5xx.
        retry_on = {config.RetryOn.CONNECT_FAILURE, config.RetryOn.RESET}
        retry_on.add(
            config.RetryOn.RETRIABLE_STATUS_CODES if retry.codes else config.RetryOn.SERVER_ERROR
        )
    base = retry.backoff if retry.backoff is not None else 0.025
    return config.RetryPolicy(
        attempts=retry.attempts,
        per_try_timeout_s=retry.per_try_timeout,
        retry_on=frozenset(retry_on),
        retriable_status_codes=frozenset(retry.codes),
        backoff_base_s=base,
        backoff_max_s=max(base * 10, 0.25),  # Envoy's default ceiling is ten times the base
    )


def _rule_to_route(
    route: model.HTTPRoute, index: int, rule: model.RouteRule, port: int, extensions: _Extensions
) -> config.Route:
    namespace = route.metadata.namespace
    name = f"{namespace}/{route.metadata.name}/{index}"
    timeouts = rule.timeouts or model.RouteTimeouts()
    try:
        return config.Route(
            name=name,
            matches=tuple(_route_match(m) for m in rule.matches) or (config.RouteMatch(),),
            filters=tuple(_route_filter(f, route, extensions) for f in rule.filters),
            backends=tuple(
                config.BackendRef(
                    name=ref.name,
                    port=ref.port or port,
                    namespace=ref.namespace or namespace,
                    weight=ref.weight,
                )
                for ref in rule.backend_refs
            ),
            timeouts=config.Timeouts(timeouts.request, timeouts.backend_request),
            retry=_retry(rule.retry),
        )
    except ValueError as error:
        if isinstance(error, CompileError):
            raise
        raise CompileError(
            f"{_resource('HTTPRoute', route.metadata)} rule {index}: {error}"
        ) from None


# --- traffic policies ---------------------------------------------------------------------------


def _rule_host(rule: model.DestinationRule, domain: str) -> tuple[str, str] | None:
    """(service name, namespace) of a DestinationRule's host: `name`, `name.ns` or the FQDN."""
    parts = rule.host.split(".")
    if len(parts) == 1:
        return parts[0], rule.metadata.namespace
    if len(parts) == 2 or rule.host.endswith(f".svc.{domain}"):
        return parts[0], parts[1]
    return None


def _traffic_policy(rule: model.DestinationRule) -> config.TrafficPolicy:
    policy = rule.traffic_policy
    where = f"{_resource('DestinationRule', rule.metadata)}: field 'trafficPolicy"
    hash_header = None
    balancing = config.LoadBalancerPolicy(policy.load_balancer.value)
    if policy.consistent_hash is not None:
        if policy.consistent_hash.use_source_ip or not policy.consistent_hash.http_header_name:
            raise CompileError(
                f"{where}.loadBalancer.consistentHash': the waypoint hashes on httpHeaderName "
                "only; useSourceIp is for the node agent"
            )
        balancing = config.LoadBalancerPolicy.CONSISTENT_HASH
        hash_header = policy.consistent_hash.http_header_name
    pool = policy.connection_pool or model.ConnectionPool()
    outliers = policy.outlier_detection
    return config.TrafficPolicy(
        load_balancer=config.LoadBalancer(balancing, hash_header),
        connection_pool=config.ConnectionPool(
            max_connections=pool.max_connections or config.UNLIMITED,
            max_pending_requests=(
                config.UNLIMITED
                if pool.http1_max_pending_requests is None
                else pool.http1_max_pending_requests
            ),
            max_requests_per_connection=pool.max_requests_per_connection or 0,
        ),
        outlier_detection=None
        if outliers is None
        else config.OutlierDetection(
            consecutive_5xx_errors=outliers.consecutive_5xx_errors or 5,
            interval_s=outliers.interval,
            base_ejection_time_s=outliers.base_ejection_time,
            max_ejection_percent=outliers.max_ejection_percent,
        ),
    )


# --- authorization ------------------------------------------------------------------------------


def _condition_supported(key: str) -> bool:
    return key in SUPPORTED_CONDITION_KEYS or config.HEADER_CONDITION.match(key) is not None


def _authz_rule(rule: model.Rule, action: model.AuthorizationAction) -> config.Rule | None:
    conditions = []
    for condition in rule.conditions:
        if _condition_supported(condition.key):
            conditions.append(
                config.Condition(condition.key, condition.values, condition.not_values)
            )
        elif action is not model.AuthorizationAction.DENY:
            return None  # an ALLOW (or AUDIT) rule we cannot check matches nothing
    return config.Rule(
        sources=tuple(
            config.Source(
                principals=s.principals,
                not_principals=s.not_principals,
                namespaces=s.namespaces,
                not_namespaces=s.not_namespaces,
                ip_blocks=tuple(str(b) for b in s.ip_blocks),
                not_ip_blocks=tuple(str(b) for b in s.not_ip_blocks),
            )
            for s in rule.sources
        ),
        operations=tuple(
            config.Operation(
                hosts=o.hosts,
                not_hosts=o.not_hosts,
                methods=o.methods,
                not_methods=o.not_methods,
                paths=o.paths,
                not_paths=o.not_paths,
                ports=o.ports,
                not_ports=o.not_ports,
            )
            for o in rule.operations
        ),
        conditions=tuple(conditions),
    )


def _authz_policy(policy: model.AuthorizationPolicy) -> config.AuthorizationPolicy:
    rules = (_authz_rule(rule, policy.action) for rule in policy.rules)
    return config.AuthorizationPolicy(
        name=policy.metadata.name,
        namespace=policy.metadata.namespace,
        action=config.AuthorizationAction(policy.action.value),
        rules=tuple(rule for rule in rules if rule is not None),
    )


def _targets(policy: model.AuthorizationPolicy, kinds: Sequence[str], name: str, ns: str) -> bool:
    return policy.metadata.namespace == ns and any(
        ref.kind in kinds and ref.name == name for ref in policy.target_refs
    )


# --- the whole waypoint -------------------------------------------------------------------------


def compile_waypoint(
    waypoint: model.Waypoint,
    services: Sequence[model.Service],
    *,
    routes: Sequence[model.HTTPRoute] = (),
    destination_rules: Sequence[model.DestinationRule] = (),
    policies: Sequence[model.AuthorizationPolicy] = (),
    faults: Sequence[model.FaultInjection] = (),
    rate_limits: Sequence[model.RateLimit] = (),
    cluster_domain: str = "cluster.local",
) -> config.WaypointConfig:
    """The configuration of `waypoint` for the `services` that use it.

    Routes attach in (namespace, name) order, the creation-order stand-in Gateway API's tie-break
    needs; a service port with no HTTPRoute forwards to the service itself."""
    extensions = _Extensions(faults, rate_limits)
    ordered_routes = sorted(routes, key=lambda r: (r.metadata.namespace, r.metadata.name))
    compiled_services: list[config.ServiceConfig] = []
    for service in services:
        name, namespace = service.metadata.name, service.metadata.namespace
        service_policies = tuple(
            _authz_policy(p) for p in policies if _targets(p, ("Service",), name, namespace)
        )
        for service_port in service.ports:
            port = service_port.port
            compiled = [
                _rule_to_route(route, index, rule, port, extensions)
                for route in ordered_routes
                if _attaches(route, service, port)
                for index, rule in enumerate(route.rules)
            ]
            if not compiled:
                backend = config.BackendRef(name=name, port=port, namespace=namespace)
                compiled = [config.Route(name=f"{namespace}/{name}/default", backends=(backend,))]
            compiled_services.append(
                config.ServiceConfig(
                    hostname=f"{name}.{namespace}.svc.{cluster_domain}",
                    port=port,
                    vips=() if service.vip is None else (str(service.vip),),
                    routes=tuple(compiled),
                    authorization_policies=service_policies,
                )
            )
    rules_by_service: dict[tuple[str, str], model.DestinationRule] = {}
    for destination_rule in destination_rules:
        target = _rule_host(destination_rule, cluster_domain)
        if target is not None:
            rules_by_service.setdefault(target, destination_rule)
    traffic: dict[str, config.TrafficPolicy] = {}
    for service_config in compiled_services:
        for route in service_config.routes:
            for backend in route.backends:
                found = rules_by_service.get((backend.name, backend.namespace))
                if found is not None and backend.authority not in traffic:
                    traffic[backend.authority] = _traffic_policy(found)
    waypoint_meta = waypoint.metadata
    return config.WaypointConfig(
        services=tuple(compiled_services),
        traffic_policies=tuple(sorted(traffic.items())),
        authorization_policies=tuple(
            _authz_policy(p)
            for p in policies
            if _targets(p, GATEWAY_KINDS, waypoint_meta.name, waypoint_meta.namespace)
        ),
    )


# --- from a set of resources ------------------------------------------------------------------


@dataclass(frozen=True)
class CompiledWaypoint:
    """A waypoint's configuration and the endpoints (ip:port) of every backend it may send to."""

    config: config.WaypointConfig
    endpoints: Mapping[str, tuple[str, ...]]


def served_services(
    waypoint: model.Waypoint,
    services: Sequence[model.Service],
    namespaces: Sequence[model.Namespace],
) -> list[model.Service]:
    """Services in the waypoint's namespace that use it: by their own `weft.io/use-waypoint`
    label, or by their namespace's when they carry none."""
    name, namespace = waypoint.metadata.name, waypoint.metadata.namespace
    namespace_choice = next(
        (n.use_waypoint for n in namespaces if n.metadata.name == namespace), None
    )
    return [
        service
        for service in services
        if service.metadata.namespace == namespace
        and (service.use_waypoint or namespace_choice) == name
    ]


def backend_endpoints(
    compiled: config.WaypointConfig,
    services: Sequence[model.Service],
    workloads: Sequence[model.Workload],
) -> dict[str, tuple[str, ...]]:
    """`ip:target_port` of the workloads each backend's service selects."""
    by_name = {(s.metadata.name, s.metadata.namespace): s for s in services}
    endpoints: dict[str, tuple[str, ...]] = {}
    for service_config in compiled.services:
        for route in service_config.routes:
            for backend in route.backends:
                service = by_name.get((backend.name, backend.namespace))
                port = next(
                    (p for p in service.ports if p.port == backend.port), None
                ) if service else None  # fmt: skip
                if service is None or port is None:
                    endpoints.setdefault(backend.authority, ())
                    continue
                endpoints[backend.authority] = tuple(
                    f"{w.address}:{port.target_port}"
                    for w in sorted(workloads, key=lambda w: w.metadata.name)
                    if service.selects(w)
                )
    return endpoints


def compile_resources(
    resources: Sequence[model.Resource],
    name: str,
    namespace: str = "default",
    cluster_domain: str = "cluster.local",
) -> CompiledWaypoint:
    """Everything one waypoint needs, from a set of resources (as `weft apply -f` reads them)."""

    def of(kind: type[_R]) -> list[_R]:
        return [r for r in resources if isinstance(r, kind)]

    waypoint = next(
        (
            w
            for w in of(model.Waypoint)
            if (w.metadata.name, w.metadata.namespace) == (name, namespace)
        ),
        None,
    )
    if waypoint is None:
        raise CompileError(f"no Waypoint {namespace}/{name} among the resources")
    services = of(model.Service)
    compiled = compile_waypoint(
        waypoint,
        served_services(waypoint, services, of(model.Namespace)),
        routes=of(model.HTTPRoute),
        destination_rules=of(model.DestinationRule),
        policies=of(model.AuthorizationPolicy),
        faults=of(model.FaultInjection),
        rate_limits=of(model.RateLimit),
        cluster_domain=cluster_domain,
    )
    return CompiledWaypoint(compiled, backend_endpoints(compiled, services, of(model.Workload)))
