"""The waypoint's compiled configuration rejects bad values where they are built."""

from __future__ import annotations

import pytest

from waypoint.config import (
    BackendRef,
    Condition,
    FaultAbort,
    HeaderMatch,
    LoadBalancer,
    LoadBalancerPolicy,
    PathMatch,
    PathMatchType,
    PathModifier,
    PathModifierType,
    RateLimit,
    RequestRedirect,
    Route,
    RouteMatch,
    ServiceConfig,
    TrafficPolicy,
    URLRewrite,
    ValueMatchType,
    WaypointConfig,
)


def test_route_without_matches_matches_every_path_by_prefix() -> None:
    route = Route(name="default")
    assert route.matches == (RouteMatch(path=PathMatch(PathMatchType.PATH_PREFIX, "/")),)


def test_regex_path_is_compiled_once_at_construction() -> None:
    match = PathMatch(PathMatchType.REGULAR_EXPRESSION, r"/v\d+/.*")
    assert match.pattern is not None
    assert match.pattern.fullmatch("/v2/items")


def test_invalid_regex_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"headers\.value.*regular expression"):
        HeaderMatch("x-user", "(", ValueMatchType.REGULAR_EXPRESSION)


def test_header_match_names_are_lowercased_for_case_insensitive_matching() -> None:
    assert HeaderMatch("X-User", "a").name == "x-user"


def test_path_prefix_must_start_with_a_slash() -> None:
    with pytest.raises(ValueError, match=r"path\.value"):
        PathMatch(PathMatchType.PATH_PREFIX, "api")


def test_abort_status_outside_http_range_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"abort\.httpStatus"):
        FaultAbort(http_status=99)


def test_abort_percentage_above_100_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"abort\.percentage"):
        FaultAbort(http_status=503, percentage=101)


def test_rate_limit_refills_whole_bucket_unless_told_otherwise() -> None:
    assert RateLimit(max_tokens=10, fill_interval_s=1).refill == 10
    assert RateLimit(max_tokens=10, fill_interval_s=1, tokens_per_fill=2).refill == 2


def test_redirect_status_must_be_a_redirect_code() -> None:
    with pytest.raises(ValueError, match=r"statusCode"):
        RequestRedirect(status_code=200)


def test_replace_prefix_match_needs_prefix_matches() -> None:
    rewrite = URLRewrite(path=PathModifier(PathModifierType.REPLACE_PREFIX_MATCH, "/new"))
    with pytest.raises(ValueError, match="ReplacePrefixMatch only with PathPrefix"):
        Route(
            name="r",
            matches=(RouteMatch(path=PathMatch(PathMatchType.EXACT, "/old")),),
            filters=(rewrite,),
        )


def test_route_cannot_both_redirect_and_rewrite() -> None:
    with pytest.raises(ValueError, match="not both"):
        Route(name="r", filters=(RequestRedirect(), URLRewrite(hostname="x")))


def test_negative_backend_weight_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"backendRefs\.weight"):
        BackendRef(name="reviews", port=9080, weight=-1)


def test_consistent_hash_requires_a_header_name() -> None:
    with pytest.raises(ValueError, match="httpHeaderName"):
        LoadBalancer(policy=LoadBalancerPolicy.CONSISTENT_HASH)


def test_unknown_condition_key_lists_the_supported_keys() -> None:
    with pytest.raises(ValueError, match=r"request\.headers\[<name>\]"):
        Condition(key="request.auth.claims[iss]", values=("x",))


def test_header_condition_key_is_accepted() -> None:
    assert Condition(key="request.headers[x-user]", values=("alice",)).values == ("alice",)


def test_traffic_policy_lookup_falls_back_to_defaults() -> None:
    reviews = BackendRef(name="reviews", port=9080)
    policy = TrafficPolicy(load_balancer=LoadBalancer(LoadBalancerPolicy.ROUND_ROBIN))
    config = WaypointConfig(
        services=(ServiceConfig(hostname="reviews.default.svc.cluster.local", port=9080),),
        traffic_policies=((reviews.authority, policy),),
    )
    assert config.traffic_policy_for(reviews) is policy
    assert config.traffic_policy_for(BackendRef(name="ratings", port=9080)) == TrafficPolicy()
