"""Compiling weft.model resources into one waypoint's configuration."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from waypoint import config
from waypoint.authz import AuthzRequest, evaluate
from waypoint.compiler import CompileError, compile_resources, compile_waypoint, served_services
from weft import model

WAYPOINT = model.Waypoint(
    metadata=model.Metadata(name="waypoint", namespace="default"),
    address=IPv4Address("10.0.0.50"),
    node="node-1",
)
REVIEWS = model.Service(
    metadata=model.Metadata(name="reviews", namespace="default"),
    vip=IPv4Address("10.96.0.10"),
    ports=(model.ServicePort(port=9080, target_port=9080),),
)


def meta(name: str, namespace: str = "default") -> model.Metadata:
    return model.Metadata(name=name, namespace=namespace)


def http_route(
    name: str, *rules: model.RouteRule, parent: str = "reviews", port: int | None = None
) -> model.HTTPRoute:
    return model.HTTPRoute(
        metadata=meta(name), parent_refs=(model.ParentRef(name=parent, port=port),), rules=rules
    )


def only_service(compiled: config.WaypointConfig) -> config.ServiceConfig:
    (service,) = compiled.services
    return service


def test_service_without_routes_forwards_to_itself() -> None:
    service = only_service(compile_waypoint(WAYPOINT, [REVIEWS]))
    assert service.hostname == "reviews.default.svc.cluster.local"
    assert service.port == 9080
    (route,) = service.routes
    assert route.name == "default/reviews/default"
    assert route.backends == (config.BackendRef(name="reviews", port=9080, namespace="default"),)


def test_route_rules_become_routes_with_matches_and_weighted_backends() -> None:
    rule = model.RouteRule(
        matches=(
            model.RouteMatch(
                path=model.PathMatch(model.PathMatchType.PREFIX, "/api"),
                method="GET",
                headers=(model.HeaderMatch("x-user", "j.*", model.HeaderMatchType.REGEX),),
                query_params=(model.HeaderMatch("lang", "en"),),
            ),
        ),
        backend_refs=(
            model.BackendRef(name="reviews-v1", weight=90),
            model.BackendRef(name="reviews-v2", port=9090, weight=10),
        ),
        timeouts=model.RouteTimeouts(request=3.0, backend_request=1.0),
    )
    service = only_service(
        compile_waypoint(WAYPOINT, [REVIEWS], routes=[http_route("canary", rule)])
    )
    (route,) = service.routes
    assert route.name == "default/canary/0"
    (match,) = route.matches
    assert match.path == config.PathMatch(config.PathMatchType.PATH_PREFIX, "/api")
    assert match.method == "GET"
    assert match.headers[0].type is config.ValueMatchType.REGULAR_EXPRESSION
    assert match.query_params == (config.QueryParamMatch("lang", "en"),)
    assert [(b.name, b.port, b.weight) for b in route.backends] == [
        ("reviews-v1", 9080, 90),
        ("reviews-v2", 9090, 10),
    ]
    assert route.timeouts == config.Timeouts(request_s=3.0, backend_request_s=1.0)


def test_routes_for_other_services_or_ports_do_not_attach() -> None:
    other = http_route("other", model.RouteRule(), parent="ratings")
    wrong_port = http_route("wrong-port", model.RouteRule(), port=8080)
    service = only_service(compile_waypoint(WAYPOINT, [REVIEWS], routes=[other, wrong_port]))
    assert [r.name for r in service.routes] == ["default/reviews/default"]


def test_routes_attach_in_name_order() -> None:
    routes = [http_route("b", model.RouteRule()), http_route("a", model.RouteRule())]
    service = only_service(compile_waypoint(WAYPOINT, [REVIEWS], routes=routes))
    assert [r.name for r in service.routes] == ["default/a/0", "default/b/0"]


def test_filters_are_converted_including_weft_extensions() -> None:
    rule = model.RouteRule(
        filters=(
            model.RouteFilter(
                request_header_modifier=model.HeaderModifier(set={"x-a": "1"}, remove=("x-b",))
            ),
            model.RouteFilter(response_header_modifier=model.HeaderModifier(add={"x-c": "2"})),
            model.RouteFilter(
                url_rewrite=model.URLRewrite(path=model.PathRewrite(replace_prefix_match="/v2"))
            ),
            model.RouteFilter(extension_ref=model.ExtensionRef(model.Kind.FAULT_INJECTION, "slow")),
            model.RouteFilter(extension_ref=model.ExtensionRef(model.Kind.RATE_LIMIT, "ten")),
        ),
        backend_refs=(model.BackendRef(name="reviews"),),
    )
    fault = model.FaultInjection(
        meta("slow"), delay_seconds=0.5, delay_percentage=10, abort_status=503, abort_percentage=1
    )
    limit = model.RateLimit(meta("ten"), requests=10, unit_seconds=1.0, burst=20)
    service = only_service(
        compile_waypoint(
            WAYPOINT, [REVIEWS], routes=[http_route("r", rule)], faults=[fault], rate_limits=[limit]
        )
    )
    filters = service.routes[0].filters
    assert filters[0] == config.RequestHeaderModifier(set=(("x-a", "1"),), remove=("x-b",))
    assert filters[1] == config.ResponseHeaderModifier(add=(("x-c", "2"),))
    assert filters[2] == config.URLRewrite(
        path=config.PathModifier(config.PathModifierType.REPLACE_PREFIX_MATCH, "/v2")
    )
    assert filters[3] == config.FaultInjection(
        config.FaultDelay(0.5, 10), config.FaultAbort(503, 1)
    )
    assert filters[4] == config.RateLimit(max_tokens=20, fill_interval_s=1.0, tokens_per_fill=10)


def test_missing_extension_names_the_route_and_field() -> None:
    rule = model.RouteRule(
        filters=(
            model.RouteFilter(extension_ref=model.ExtensionRef(model.Kind.RATE_LIMIT, "gone")),
        )
    )
    with pytest.raises(
        CompileError,
        match=r"HTTPRoute default/r: field 'filters.extensionRef': no RateLimit default/gone",
    ):
        compile_waypoint(WAYPOINT, [REVIEWS], routes=[http_route("r", rule)])


def test_invalid_route_values_name_the_route_and_rule() -> None:
    rule = model.RouteRule(
        matches=(model.RouteMatch(path=model.PathMatch(model.PathMatchType.REGEX, "(")),)
    )
    with pytest.raises(CompileError, match=r"HTTPRoute default/r rule 0: field 'path.value'"):
        compile_waypoint(WAYPOINT, [REVIEWS], routes=[http_route("r", rule)])


def test_retry_codes_become_retriable_status_codes() -> None:
    with_codes = model.RouteRule(
        retry=model.RouteRetry(attempts=3, codes=(502, 503), backoff=0.1, per_try_timeout=0.5)
    )
    without = model.RouteRule(retry=model.RouteRetry(attempts=1))
    service = only_service(
        compile_waypoint(
            WAYPOINT, [REVIEWS], routes=[http_route("a", with_codes), http_route("b", without)]
        )
    )
    first, second = (route.retry for route in service.routes)
    assert first is not None
    assert second is not None
    assert first.attempts == 3
    assert first.retriable_status_codes == frozenset({502, 503})
    assert config.RetryOn.RETRIABLE_STATUS_CODES in first.retry_on
    assert (first.per_try_timeout_s, first.backoff_base_s, first.backoff_max_s) == (0.5, 0.1, 1.0)
    assert config.RetryOn.SERVER_ERROR in second.retry_on


def test_destination_rule_applies_to_the_backend_it_names() -> None:
    rule = model.DestinationRule(
        metadata=meta("reviews-dr"),
        host="reviews",
        traffic_policy=model.TrafficPolicy(
            consistent_hash=model.ConsistentHash(http_header_name="x-user"),
            connection_pool=model.ConnectionPool(max_connections=10, http1_max_pending_requests=0),
            outlier_detection=model.OutlierDetection(base_ejection_time=15),
        ),
    )
    compiled = compile_waypoint(WAYPOINT, [REVIEWS], destination_rules=[rule])
    policy = compiled.traffic_policy_for(config.BackendRef(name="reviews", port=9080))
    assert policy.load_balancer == config.LoadBalancer(
        config.LoadBalancerPolicy.CONSISTENT_HASH, "x-user"
    )
    assert policy.connection_pool.max_connections == 10
    assert policy.connection_pool.max_pending_requests == 0
    assert policy.outlier_detection == config.OutlierDetection(
        consecutive_5xx_errors=5, base_ejection_time_s=15
    )


def test_destination_rule_by_fqdn_in_another_namespace() -> None:
    random_policy = model.TrafficPolicy(load_balancer=model.LoadBalancerPolicy.RANDOM)
    rule = model.DestinationRule(
        meta("dr", "infra"), host="reviews.default.svc.cluster.local", traffic_policy=random_policy
    )
    compiled = compile_waypoint(WAYPOINT, [REVIEWS], destination_rules=[rule])
    policy = compiled.traffic_policy_for(config.BackendRef(name="reviews", port=9080))
    assert policy.load_balancer.policy is config.LoadBalancerPolicy.RANDOM


def test_source_ip_hashing_is_refused_with_the_field_named() -> None:
    by_source = model.TrafficPolicy(consistent_hash=model.ConsistentHash(use_source_ip=True))
    rule = model.DestinationRule(meta("dr"), host="reviews", traffic_policy=by_source)
    with pytest.raises(
        CompileError,
        match=r"DestinationRule default/dr: field 'trafficPolicy.loadBalancer.consistentHash'",
    ):
        compile_waypoint(WAYPOINT, [REVIEWS], destination_rules=[rule])


def admin_rule(**condition: str) -> model.Rule:
    conditions = tuple(model.Condition(key, (value,)) for key, value in condition.items())
    return model.Rule(operations=(model.Operation(paths=("/admin*",)),), conditions=conditions)


def test_policies_attach_to_their_target_service_or_the_waypoint() -> None:
    on_service = model.AuthorizationPolicy(
        meta("svc"), target_refs=(model.PolicyTargetReference("Service", "reviews"),)
    )
    on_waypoint = model.AuthorizationPolicy(
        meta("wp"), target_refs=(model.PolicyTargetReference("Gateway", "waypoint"),)
    )
    on_workloads = model.AuthorizationPolicy(
        meta("sel"), selector=model.WorkloadSelector({"app": "reviews"})
    )
    elsewhere = model.AuthorizationPolicy(
        meta("svc", "prod"), target_refs=(model.PolicyTargetReference("Service", "reviews"),)
    )
    compiled = compile_waypoint(
        WAYPOINT, [REVIEWS], policies=[on_service, on_waypoint, on_workloads, elsewhere]
    )
    assert [p.name for p in compiled.authorization_policies] == ["wp"]
    assert [(p.namespace, p.name) for p in only_service(compiled).authorization_policies] == [
        ("default", "svc")
    ]


def test_unenforceable_allow_rule_allows_nothing() -> None:
    policy = model.AuthorizationPolicy(
        meta("allow"), target_refs=(model.PolicyTargetReference("Service", "reviews"),),
        rules=(admin_rule(**{"request.auth.claims[iss]": "me"}),),
    )  # fmt: skip
    service = only_service(compile_waypoint(WAYPOINT, [REVIEWS], policies=[policy]))
    assert service.authorization_policies[0].rules == ()
    assert not evaluate(service.authorization_policies, AuthzRequest("GET", "/admin", 9080)).allowed


def test_unenforceable_deny_clause_is_dropped_so_it_denies_more() -> None:
    policy = model.AuthorizationPolicy(
        meta("deny"), action=model.AuthorizationAction.DENY,
        target_refs=(model.PolicyTargetReference("Service", "reviews"),),
        rules=(admin_rule(**{"request.auth.claims[iss]": "me"}),),
    )  # fmt: skip
    service = only_service(compile_waypoint(WAYPOINT, [REVIEWS], policies=[policy]))
    assert not evaluate(service.authorization_policies, AuthzRequest("GET", "/admin", 9080)).allowed
    assert evaluate(service.authorization_policies, AuthzRequest("GET", "/public", 9080)).allowed


def test_policy_fields_carry_over() -> None:
    rule = model.Rule(
        sources=(
            model.Source(
                principals=("cluster.local/ns/default/sa/sleep",),
                ip_blocks=(IPv4Network("10.0.0.0/8"),),
            ),
        ),
        operations=(model.Operation(hosts=("reviews*",), methods=("GET",), ports=(9080,)),),
        conditions=(model.Condition("request.headers[x-user]", ("alice",)),),
    )
    policy = model.AuthorizationPolicy(
        meta("p"), target_refs=(model.PolicyTargetReference("Service", "reviews"),), rules=(rule,)
    )
    policies = only_service(
        compile_waypoint(WAYPOINT, [REVIEWS], policies=[policy])
    ).authorization_policies
    request = AuthzRequest(
        "GET", "/", 9080, (("x-user", "alice"),), "spiffe://cluster.local/ns/default/sa/sleep",
        "default", source_ip="10.1.2.3", host="reviews:9080",
    )  # fmt: skip
    assert evaluate(policies, request).allowed
    assert not evaluate(policies, AuthzRequest("GET", "/", 9080, (("x-user", "alice"),))).allowed


def labelled(name: str, namespace: str = "default", **labels: str) -> model.Metadata:
    return model.Metadata(name=name, namespace=namespace, labels=labels)


USE = "weft.io/use-waypoint"


def service(name: str, namespace: str = "default", **labels: str) -> model.Service:
    return model.Service(
        metadata=labelled(name, namespace, **labels),
        vip=None,
        ports=(model.ServicePort(port=80, target_port=8080),),
        selector={"app": name},
    )


def test_services_use_the_waypoint_by_their_label_or_their_namespace() -> None:
    namespace = model.Namespace(labelled("default", "", **{USE: "waypoint"}))
    services = [
        service("inherits"),
        service("opts-out", **{USE: "other"}),
        service("elsewhere", "prod", **{USE: "waypoint"}),
    ]
    served = served_services(WAYPOINT, services, [namespace])
    assert [s.metadata.name for s in served] == ["inherits"]
    explicit = served_services(WAYPOINT, [service("explicit", **{USE: "waypoint"})], [])
    assert [s.metadata.name for s in explicit] == ["explicit"]


def test_compile_resources_finds_endpoints_of_the_selected_workloads() -> None:
    workloads = [
        model.Workload(labelled("web-1", app="web"), IPv4Address("10.1.0.2"), "n1"),
        model.Workload(labelled("web-2", app="web"), IPv4Address("10.1.0.3"), "n2"),
        model.Workload(labelled("db-1", app="db"), IPv4Address("10.1.0.4"), "n1"),
    ]
    compiled = compile_resources(
        [WAYPOINT, service("web", **{USE: "waypoint"}), *workloads], "waypoint"
    )
    assert compiled.endpoints == {"web.default:80": ("10.1.0.2:8080", "10.1.0.3:8080")}


def test_compile_resources_without_the_waypoint_says_which_is_missing() -> None:
    with pytest.raises(CompileError, match="no Waypoint default/missing"):
        compile_resources([WAYPOINT], "missing")
