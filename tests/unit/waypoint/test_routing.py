"""Route matching with Gateway API precedence, weighted backends, header edits and rewrites."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from waypoint.config import (
    BackendRef,
    HeaderMatch,
    PathMatch,
    PathMatchType,
    PathModifier,
    PathModifierType,
    QueryParamMatch,
    RequestHeaderModifier,
    RequestRedirect,
    ResponseHeaderModifier,
    Route,
    RouteMatch,
    URLRewrite,
    ValueMatchType,
)
from waypoint.routing import (
    Forward,
    NoBackend,
    NoRoute,
    Redirect,
    RouteRequest,
    _precedence,
    apply_header_modifier,
    choose_backend,
    match_route,
    normalize_path,
    redirect_location,
    request_matches,
    rewrite_path,
    route_request,
)

V1 = BackendRef(name="reviews-v1", port=9080, weight=90)
V2 = BackendRef(name="reviews-v2", port=9080, weight=10)


def get(target: str, *headers: tuple[str, str], method: str = "GET") -> RouteRequest:
    return RouteRequest.from_target(method, target, (("host", "reviews:9080"), *headers))


def prefix(
    value: str,
    method: str | None = None,
    headers: tuple[HeaderMatch, ...] = (),
    query_params: tuple[QueryParamMatch, ...] = (),
) -> RouteMatch:
    path = PathMatch(PathMatchType.PATH_PREFIX, value)
    return RouteMatch(path=path, method=method, headers=headers, query_params=query_params)


def exact(value: str) -> RouteMatch:
    return RouteMatch(path=PathMatch(PathMatchType.EXACT, value))


def regex(value: str) -> RouteMatch:
    return RouteMatch(path=PathMatch(PathMatchType.REGULAR_EXPRESSION, value))


def winner(routes: list[Route], request: RouteRequest) -> str | None:
    matched = match_route(routes, request)
    return None if matched is None else matched.route.name


# --- path normalization -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("/public/../admin", "/admin"),
        ("/a/./b", "/a/b"),
        ("/a/b/..", "/a/"),
        ("/..", "/"),
        ("/%61dmin", "/admin"),
        ("/a%2fb", "/a%2Fb"),
        ("/index.html", "/index.html"),
        ("", "/"),
        ("*", "*"),
    ],
)
def test_paths_are_normalized_before_matching(raw: str, normalized: str) -> None:
    assert normalize_path(raw) == normalized


def test_dot_segments_cannot_dodge_a_route() -> None:
    routes = [Route("admin", matches=(prefix("/admin"),)), Route("public", matches=(prefix("/"),))]
    assert winner(routes, get("/public/../admin/users")) == "admin"


# --- precedence ---------------------------------------------------------------------------------


def test_exact_path_beats_a_longer_prefix() -> None:
    routes = [
        Route("prefix", matches=(prefix("/api/v1/items"),)),
        Route("exact", matches=(exact("/api/v1/items"),)),
    ]
    assert winner(routes, get("/api/v1/items")) == "exact"


def test_longest_prefix_wins() -> None:
    routes = [
        Route("short", matches=(prefix("/api"),)),
        Route("long", matches=(prefix("/api/v1"),)),
    ]
    assert winner(routes, get("/api/v1/x")) == "long"


def test_prefix_beats_regex() -> None:
    routes = [
        Route("regex", matches=(regex("/api/.*"),)),
        Route("prefix", matches=(prefix("/api"),)),
    ]
    assert winner(routes, get("/api/x")) == "prefix"


def test_regex_matches_the_whole_path() -> None:
    routes = [Route("regex", matches=(regex(r"/v\d+"),))]
    assert winner(routes, get("/v2")) == "regex"
    assert winner(routes, get("/v2/extra")) is None


def test_prefix_matches_whole_segments_only() -> None:
    routes = [Route("foo", matches=(prefix("/foo/"),))]
    assert winner(routes, get("/foo")) == "foo"
    assert winner(routes, get("/foo/bar")) == "foo"
    assert winner(routes, get("/foobar")) is None


def test_method_match_breaks_a_path_tie() -> None:
    routes = [
        Route("any", matches=(prefix("/"),)),
        Route("post", matches=(prefix("/", method="POST"),)),
    ]
    assert winner(routes, get("/x", method="POST")) == "post"
    assert winner(routes, get("/x")) == "any"


def test_more_header_matches_break_a_tie() -> None:
    one = prefix("/", headers=(HeaderMatch("x-a", "1"),))
    two = prefix("/", headers=(HeaderMatch("x-a", "1"), HeaderMatch("x-b", "2")))
    routes = [Route("one", matches=(one,)), Route("two", matches=(two,))]
    assert winner(routes, get("/", ("x-a", "1"), ("x-b", "2"))) == "two"
    assert winner(routes, get("/", ("x-a", "1"))) == "one"


def test_query_param_matches_count_after_headers() -> None:
    with_query = prefix("/", query_params=(QueryParamMatch("lang", "en"),))
    routes = [Route("plain", matches=(prefix("/"),)), Route("query", matches=(with_query,))]
    assert winner(routes, get("/?lang=en&lang=fr")) == "query"
    assert winner(routes, get("/?lang=fr&lang=en")) == "plain"  # only the first value counts


def test_earlier_route_wins_a_complete_tie() -> None:
    routes = [Route("first", matches=(prefix("/"),)), Route("second", matches=(prefix("/"),))]
    assert winner(routes, get("/")) == "first"


def test_header_match_kinds() -> None:
    routes = [
        Route(
            "present",
            matches=(prefix("/p", headers=(HeaderMatch("x-debug", type=ValueMatchType.PRESENT),)),),
        ),
        Route(
            "regex",
            matches=(
                prefix(
                    "/r",
                    headers=(
                        HeaderMatch("x-user", r"(alice|bob)", ValueMatchType.REGULAR_EXPRESSION),
                    ),
                ),
            ),
        ),
    ]
    assert winner(routes, get("/p", ("x-debug", ""))) == "present"
    assert winner(routes, get("/p")) is None
    assert winner(routes, get("/r", ("x-user", "bob"))) == "regex"
    assert winner(routes, get("/r", ("x-user", "bobby"))) is None


def test_no_match_is_no_route() -> None:
    routes = [Route("api", matches=(prefix("/api"),), backends=(V1,))]
    assert route_request(routes, get("/other"), random.random) == NoRoute()


# --- weighted backends ---------------------------------------------------------------------------


def test_90_10_split_over_2000_picks_lands_within_3_points() -> None:
    source = random.Random(7)
    picks = [choose_backend((V1, V2), source.random) for _ in range(2000)]
    share_v2 = 100 * sum(p == V2 for p in picks) / len(picks)
    assert 7 <= share_v2 <= 13


def test_weight_boundaries_follow_the_random_source() -> None:
    assert choose_backend((V1, V2), lambda: 0.0) == V1
    assert choose_backend((V1, V2), lambda: 0.8999) == V1
    assert choose_backend((V1, V2), lambda: 0.9) == V2
    assert choose_backend((V1, V2), lambda: 0.999999) == V2


def test_zero_weight_backend_is_never_chosen() -> None:
    off = BackendRef(name="off", port=80, weight=0)
    points = [r / 10 for r in range(10)]
    assert {choose_backend((off, V2), lambda p=p: p) for p in points} == {V2}


def test_all_zero_weights_is_no_backend() -> None:
    off = BackendRef(name="off", port=80, weight=0)
    routes = [Route("r", backends=(off,))]
    assert isinstance(route_request(routes, get("/"), random.random), NoBackend)


# --- filters ------------------------------------------------------------------------------------


def test_header_modifier_removes_then_sets_then_adds() -> None:
    headers = (("host", "h"), ("x-a", "1"), ("x-drop", "x"), ("x-a", "2"), ("x-drop", "y"))
    modifier = RequestHeaderModifier(
        set=(("X-A", "set"),), add=(("x-b", "added"),), remove=("X-Drop",)
    )
    assert apply_header_modifier(headers, modifier) == (
        ("host", "h"),
        ("x-a", "set"),
        ("x-b", "added"),
    )


@pytest.mark.parametrize(
    ("match_prefix", "path", "replacement", "result"),
    [
        ("/foo", "/foo/bar", "/xyz", "/xyz/bar"),
        ("/foo", "/foo/bar", "/xyz/", "/xyz/bar"),
        ("/foo/", "/foo/bar", "/xyz", "/xyz/bar"),
        ("/foo", "/foo", "/xyz", "/xyz"),
        ("/foo", "/foo/", "/xyz", "/xyz/"),
        ("/foo", "/foo/bar", "/", "/bar"),
        ("/", "/foo/bar", "/xyz", "/xyz/foo/bar"),
        ("/foo/", "/foo/", "/", "/"),
    ],
)
def test_replace_prefix_match_follows_gateway_api_table(
    match_prefix: str, path: str, replacement: str, result: str
) -> None:
    modifier = PathModifier(PathModifierType.REPLACE_PREFIX_MATCH, replacement)
    assert rewrite_path(path, modifier, prefix(match_prefix)) == result


def test_replace_full_path_drops_the_old_path() -> None:
    modifier = PathModifier(PathModifierType.REPLACE_FULL_PATH, "/new")
    assert rewrite_path("/old/deep", modifier, prefix("/old")) == "/new"


def test_rewrite_keeps_the_query_and_sets_host() -> None:
    rewrite = URLRewrite(
        hostname="internal", path=PathModifier(PathModifierType.REPLACE_PREFIX_MATCH, "/v2")
    )
    routes = [Route("r", matches=(prefix("/v1"),), filters=(rewrite,), backends=(V1,))]
    decision = route_request(routes, get("/v1/items?page=2"), random.random)
    assert isinstance(decision, Forward)
    assert decision.target == "/v2/items?page=2"
    assert decision.headers == (("host", "internal"),)


def test_redirect_keeps_request_parts_it_does_not_name() -> None:
    redirect = RequestRedirect(path=PathModifier(PathModifierType.REPLACE_FULL_PATH, "/login"))
    location = redirect_location(redirect, get("/account?next=1"), prefix("/"))
    assert location == "http://reviews:9080/login?next=1"


def test_redirect_to_https_uses_its_well_known_port_and_omits_it() -> None:
    location = redirect_location(
        RequestRedirect(scheme="https", status_code=301), get("/a"), prefix("/")
    )
    assert location == "https://reviews/a"


def test_redirect_with_explicit_port_writes_it() -> None:
    redirect = RequestRedirect(hostname="other", port=8443, scheme="https")
    assert redirect_location(redirect, get("/a"), prefix("/")) == "https://other:8443/a"


def test_redirect_route_answers_instead_of_forwarding() -> None:
    routes = [
        Route("r", filters=(RequestRedirect(status_code=308, hostname="new"),), backends=(V1,))
    ]
    decision = route_request(routes, get("/x"), random.random)
    assert decision == Redirect(308, "http://new:9080/x", decision.matched)  # type: ignore[union-attr]


def test_forward_carries_request_edits_and_response_edits() -> None:
    response_edit = ResponseHeaderModifier(set=(("x-served-by", "waypoint"),))
    routes = [
        Route(
            "r",
            filters=(RequestHeaderModifier(add=(("x-canary", "1"),)), response_edit),
            backends=(V1, V2),
        )
    ]
    decision = route_request(routes, get("/x"), lambda: 0.95)
    assert isinstance(decision, Forward)
    assert decision.backend == V2
    assert ("x-canary", "1") in decision.headers
    assert decision.response_modifiers == (response_edit,)


@given(st.lists(st.sampled_from(["a", "b", ".", "..", "", "%2e", "%41", "x.y"]), max_size=8))
def test_normalized_paths_are_stable_and_free_of_dot_segments(segments: list[str]) -> None:
    normalized = normalize_path("/" + "/".join(segments))
    assert normalize_path(normalized) == normalized
    assert normalized.startswith("/")
    assert "." not in normalized.split("/")
    assert ".." not in normalized.split("/")


path_matches = st.builds(
    PathMatch,
    st.sampled_from(list(PathMatchType)),
    st.sampled_from(["/", "/a", "/a/b", "/a/b/c", "/b"]),
)
route_matches = st.builds(
    RouteMatch,
    path=path_matches,
    method=st.sampled_from([None, "GET", "POST"]),
    headers=st.lists(
        st.builds(HeaderMatch, st.sampled_from(["x-a", "x-b"]), st.sampled_from(["1", "2"])),
        max_size=2,
    ).map(tuple),
)


@given(
    st.lists(st.lists(route_matches, min_size=1, max_size=3), min_size=1, max_size=4),
    st.sampled_from(["/", "/a", "/a/b", "/a/b/c", "/b/x"]),
    st.sampled_from(["GET", "POST"]),
    st.lists(st.tuples(st.sampled_from(["x-a", "x-b"]), st.sampled_from(["1", "2"])), max_size=2),
)
def test_the_winner_matches_and_no_matching_rule_is_more_specific(
    matches: list[list[RouteMatch]], path: str, method: str, headers: list[tuple[str, str]]
) -> None:
    routes = [Route(f"r{i}", matches=tuple(m)) for i, m in enumerate(matches)]
    request = RouteRequest.from_target(method, path, tuple(headers))
    matched = match_route(routes, request)
    candidates = [(r, m) for r in routes for m in r.matches if request_matches(m, request)]
    if matched is None:
        assert candidates == []
        return
    assert request_matches(matched.match, request)
    assert all(_precedence(m) <= _precedence(matched.match) for _, m in candidates)
