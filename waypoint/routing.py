"""Route matching and request rewriting: logical service -> route -> concrete backend.

A request to a logical service (the Host it named) is matched against that service's routes
with Gateway API precedence; the winning route's filters edit headers, redirect or rewrite the
URL; its weighted backendRefs choose the concrete backend. Picking the endpoint (an address) of
that backend is load balancing, in resilience.py. Randomness is injected so splits are testable.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl

from waypoint.config import (
    BackendRef,
    HeaderMatch,
    HeaderModifier,
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

Headers = tuple[tuple[str, str], ...]
RandomSource = Callable[[], float]  # uniform in [0, 1), like random.random

WELL_KNOWN_PORTS = {"http": 80, "https": 443}


# --- the request as routing sees it ---------------------------------------------------------

_PERCENT_RE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _decode_unreserved(escape: re.Match[str]) -> str:
    char = chr(int(escape.group(1), 16))
    return char if char in _UNRESERVED else escape.group(0).upper()


def normalize_path(path: str) -> str:
    """RFC 3986 §6.2.2 normalization, as Istio's default (BASE) does before routing and authz.

    Percent-encoded unreserved characters are decoded (`/%61dmin` is `/admin`), other escapes
    upper-cased, and dot segments removed, so `/public/../admin` cannot slip past a rule on
    `/admin`. `%2F` stays encoded: it is data, not a separator.
    """
    if not path:
        return "/"
    if not path.startswith("/"):
        return path  # `*` (OPTIONS) or authority-form: nothing to normalize
    if "%" in path:
        path = _PERCENT_RE.sub(_decode_unreserved, path)
    if "." not in path:
        return path
    output: list[str] = []
    for segment in path.split("/")[1:]:
        if segment == "..":
            if output:
                output.pop()
        elif segment != ".":
            output.append(segment)
    normalized = "/" + "/".join(output)
    if path.endswith(("/.", "/..")) and not normalized.endswith("/"):
        normalized += "/"
    return normalized


@dataclass(frozen=True)
class RouteRequest:
    """What route matching reads from a request: method, normalized path, query and headers."""

    method: str
    path: str
    query: str
    headers: Headers  # lowercase names, in arrival order

    @classmethod
    def from_target(cls, method: str, target: str, headers: Headers) -> RouteRequest:
        path, _, query = target.partition("?")
        return cls(method, normalize_path(path), query, headers)

    @property
    def target(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path

    def header(self, name: str) -> str | None:
        """All values of a header joined with ',' (RFC 9110 §5.3), or None if absent."""
        found = [value for key, value in self.headers if key == name]
        return ",".join(found) if found else None

    def query_param(self, name: str) -> str | None:
        """The first value of a query parameter, as Gateway API asks."""
        for key, value in parse_qsl(self.query, keep_blank_values=True):
            if key == name:
                return value
        return None


# --- matching ---------------------------------------------------------------------------------


def _path_matches(match: RouteMatch, path: str) -> bool:
    condition = match.path
    if condition.type is PathMatchType.EXACT:
        return path == condition.value
    if condition.type is PathMatchType.PATH_PREFIX:
        prefix = condition.value.rstrip("/")  # a trailing slash in the prefix is ignored
        return not prefix or path == prefix or path.startswith(prefix + "/")
    assert condition.pattern is not None
    return condition.pattern.fullmatch(path) is not None


def _value_matches(condition: HeaderMatch | QueryParamMatch, value: str | None) -> bool:
    if value is None:
        return False
    if condition.type is ValueMatchType.PRESENT:
        return True
    if condition.type is ValueMatchType.EXACT:
        return value == condition.value
    assert condition.pattern is not None
    return condition.pattern.fullmatch(value) is not None


def request_matches(match: RouteMatch, request: RouteRequest) -> bool:
    """A match holds if its path, method, every header and every query condition hold."""
    return (
        _path_matches(match, request.path)
        and (match.method is None or match.method == request.method)
        and all(_value_matches(h, request.header(h.name)) for h in match.headers)
        and all(_value_matches(q, request.query_param(q.name)) for q in match.query_params)
    )


_PATH_RANK = {
    PathMatchType.EXACT: 2,
    PathMatchType.PATH_PREFIX: 1,
    PathMatchType.REGULAR_EXPRESSION: 0,
}


def precedence(match: RouteMatch) -> tuple[int, int, bool, int, int]:
    """Gateway API precedence: exact path, then the longest prefix (regex last), then a method,
    then the most header matches, then the most query matches."""
    prefix_length = len(match.path.value) if match.path.type is PathMatchType.PATH_PREFIX else 0
    return (
        _PATH_RANK[match.path.type],
        prefix_length,
        match.method is not None,
        len(match.headers),
        len(match.query_params),
    )


_precedence = precedence  # the name tests and older callers use


@dataclass(frozen=True)
class MatchedRoute:
    route: Route
    match: RouteMatch


def match_route(routes: Sequence[Route], request: RouteRequest) -> MatchedRoute | None:
    """The most specific matching (route, match); on a tie the earlier route wins."""
    best: MatchedRoute | None = None
    best_key: tuple[int, int, bool, int, int] | None = None
    for route in routes:
        for match in route.matches:
            if not request_matches(match, request):
                continue
            key = precedence(match)
            if best_key is None or key > best_key:  # strictly greater: earlier wins ties
                best, best_key = MatchedRoute(route, match), key
    return best


# --- backends ---------------------------------------------------------------------------------


def choose_backend(backends: Sequence[BackendRef], random: RandomSource) -> BackendRef | None:
    """Pick a backend with probability weight / total weight; None if every weight is zero."""
    total = sum(backend.weight for backend in backends)
    if total == 0:
        return None
    point = random() * total
    for backend in backends:
        point -= backend.weight
        if point < 0 and backend.weight:
            return backend
    return next(b for b in reversed(backends) if b.weight)  # float rounding at the top edge


# --- filters ----------------------------------------------------------------------------------


def apply_header_modifier(headers: Headers, modifier: HeaderModifier) -> Headers:
    """remove, then set (replacing every value of the name), then add (appending)."""
    dropped = {name.lower() for name in modifier.remove}
    dropped.update(name.lower() for name, _ in modifier.set)
    edited = [(name, value) for name, value in headers if name not in dropped]
    edited.extend((name.lower(), value) for name, value in modifier.set)
    edited.extend((name.lower(), value) for name, value in modifier.add)
    return tuple(edited)


def rewrite_path(path: str, modifier: PathModifier, match: RouteMatch) -> str:
    """ReplaceFullPath replaces the path; ReplacePrefixMatch replaces only the matched prefix
    (`/foo` + `/foo/bar` -> `/xyz` gives `/xyz/bar`, as in Gateway API's table)."""
    if modifier.type is PathModifierType.REPLACE_FULL_PATH:
        return modifier.value
    prefix = match.path.value.rstrip("/")
    rest = path[len(prefix) :]
    return (modifier.value.rstrip("/") + rest) or "/"


def _split_host(host: str) -> tuple[str, int | None]:
    """`name:port` or `[v6]:port` -> (name, port); the port is None when absent."""
    if host.startswith("["):
        end = host.find("]") + 1
        name, rest = host[:end], host[end:]
    else:
        name, _, port_text = host.partition(":")
        rest = f":{port_text}" if port_text else ""
    if rest.startswith(":") and rest[1:].isdigit():
        return name, int(rest[1:])
    return name, None


def redirect_location(
    redirect: RequestRedirect, request: RouteRequest, match: RouteMatch, scheme: str = "http"
) -> str:
    """The Location of a RequestRedirect; unset parts keep the request's own (Gateway API)."""
    request_host, request_port = _split_host(request.header("host") or "")
    new_scheme = redirect.scheme or scheme
    hostname = redirect.hostname or request_host
    if redirect.port is not None:
        port: int | None = redirect.port
    elif redirect.scheme is not None:
        port = WELL_KNOWN_PORTS.get(new_scheme)
    else:
        port = request_port
    path = request.path
    if redirect.path is not None:
        path = rewrite_path(path, redirect.path, match)
    # Well-known ports are never written into Location.
    well_known = port in (None, WELL_KNOWN_PORTS.get(new_scheme))
    authority = hostname if well_known else f"{hostname}:{port}"
    query = f"?{request.query}" if request.query else ""
    return f"{new_scheme}://{authority}{path}{query}"


# --- the routing decision -------------------------------------------------------------------


@dataclass(frozen=True)
class Forward:
    """Send the (edited) request to `backend`; edit the response with `response_modifiers`."""

    matched: MatchedRoute
    backend: BackendRef
    method: str
    target: str
    headers: Headers
    response_modifiers: tuple[ResponseHeaderModifier, ...]


@dataclass(frozen=True)
class Redirect:
    status: int
    location: str
    matched: MatchedRoute


@dataclass(frozen=True)
class NoRoute:
    """No route matched: 404, as Envoy answers (`route_not_found`)."""


@dataclass(frozen=True)
class NoBackend:
    """A route matched but every backend weight is zero or no backend is listed: 500."""

    matched: MatchedRoute


RouteDecision = Forward | Redirect | NoRoute | NoBackend


def route_request(
    routes: Sequence[Route], request: RouteRequest, random: RandomSource, scheme: str = "http"
) -> RouteDecision:
    """Match, apply the route's filters in order, and choose the concrete backend."""
    matched = match_route(routes, request)
    if matched is None:
        return NoRoute()
    headers = request.headers
    path = request.path
    response_modifiers: list[ResponseHeaderModifier] = []
    for route_filter in matched.route.filters:
        if isinstance(route_filter, RequestRedirect):
            location = redirect_location(route_filter, request, matched.match, scheme)
            return Redirect(route_filter.status_code, location, matched)
        if isinstance(route_filter, RequestHeaderModifier):
            headers = apply_header_modifier(headers, route_filter)
        elif isinstance(route_filter, ResponseHeaderModifier):
            response_modifiers.append(route_filter)
        elif isinstance(route_filter, URLRewrite):
            if route_filter.path is not None:
                path = rewrite_path(path, route_filter.path, matched.match)
            if route_filter.hostname is not None:
                headers = apply_header_modifier(
                    headers, HeaderModifier(set=(("host", route_filter.hostname),))
                )
        # FaultInjection and RateLimit are decided by the proxy with resilience.py.
    backend = choose_backend(matched.route.backends, random)
    if backend is None:
        return NoBackend(matched)
    target = f"{path}?{request.query}" if request.query else path
    return Forward(matched, backend, request.method, target, headers, tuple(response_modifiers))
