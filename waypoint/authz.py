"""L7 AuthorizationPolicy evaluation, written in the language of Istio's specification.

"If there are any DENY policies that match the request, deny the request. If there are no ALLOW
policies for the workload, allow the request. If any of the ALLOW policies match the request,
allow the request. Deny the request." AUDIT policies never change the decision; they are reported
so the access log can say which ones matched.

A policy matches if ANY of its rules matches. A rule matches if ALL of its from/to/when clauses
match. A clause matches if ANY of its values matches (and none of its `not` values does). Values
support Istio's forms: exact, `prefix*`, `*suffix` and `*` (present, whatever the value).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_address

from waypoint.config import (
    HEADER_CONDITION,
    AuthorizationAction,
    AuthorizationPolicy,
    Condition,
    Operation,
    Rule,
    Source,
)

Headers = tuple[tuple[str, str], ...]

DENIED_BODY = b"RBAC: access denied"


@dataclass(frozen=True)
class AuthzRequest:
    """What a policy can see of a request. The principal is `<trust-domain>/ns/<ns>/sa/<sa>`
    (a `spiffe://` prefix is accepted and dropped); None when the peer is not authenticated."""

    method: str
    path: str  # normalized, without the query string
    port: int
    headers: Headers = ()
    source_principal: str | None = None
    source_namespace: str | None = None
    source_ip: str | None = None
    host: str | None = None  # the Host / :authority

    def header(self, name: str) -> str | None:
        found = [value for key, value in self.headers if key == name.lower()]
        return ",".join(found) if found else None


@dataclass(frozen=True)
class AuthzDecision:
    """The verdict and who decided it: `policy` is `<namespace>/<name>`, `rule` its index."""

    allowed: bool
    reason: str
    policy: str | None = None
    rule: int | None = None
    audited: tuple[str, ...] = ()  # AUDIT policies that matched


def _principal(value: str) -> str:
    return value.removeprefix("spiffe://")


def value_matches(pattern: str, value: str | None) -> bool:
    """Istio string matching: `*` (any present value), `prefix*`, `*suffix`, or exact."""
    if value is None:
        return False
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    return value == pattern


def _field_matches(values: Iterable[str], not_values: Iterable[str], actual: str | None) -> bool:
    """ANY of `values` (when given) and NONE of `not_values`."""
    values, not_values = tuple(values), tuple(not_values)
    if values and not any(value_matches(v, actual) for v in values):
        return False
    return not any(value_matches(v, actual) for v in not_values)


def _in_networks(networks: Iterable[IPv4Network | IPv6Network], address: str | None) -> bool:
    if address is None:
        return False
    try:
        ip = ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def source_matches(source: Source, request: AuthzRequest) -> bool:
    principal = None if request.source_principal is None else _principal(request.source_principal)
    if source.networks and not _in_networks(source.networks, request.source_ip):
        return False
    if _in_networks(source.not_networks, request.source_ip):
        return False
    return _field_matches(
        map(_principal, source.principals), map(_principal, source.not_principals), principal
    ) and _field_matches(source.namespaces, source.not_namespaces, request.source_namespace)


def _host_matches(pattern: str, host: str | None) -> bool:
    # Istio compares hosts case-insensitively; a host with a port also matches without it.
    if host is None:
        return False
    host, pattern = host.lower(), pattern.lower()
    return value_matches(pattern, host) or value_matches(pattern, host.rsplit(":", 1)[0])


def operation_matches(operation: Operation, request: AuthzRequest) -> bool:
    port = str(request.port)
    if operation.hosts and not any(_host_matches(h, request.host) for h in operation.hosts):
        return False
    if any(_host_matches(h, request.host) for h in operation.not_hosts):
        return False
    return (
        _field_matches(operation.methods, operation.not_methods, request.method)
        and _field_matches(operation.paths, operation.not_paths, request.path)
        and _field_matches(map(str, operation.ports), map(str, operation.not_ports), port)
    )


def condition_matches(condition: Condition, request: AuthzRequest) -> bool:
    header = HEADER_CONDITION.match(condition.key)
    if header is not None:
        actual = request.header(header.group(1))
    elif condition.key == "source.principal":
        actual = request.source_principal and _principal(request.source_principal)
        return _field_matches(
            map(_principal, condition.values), map(_principal, condition.not_values), actual
        )
    else:  # source.namespace, the only other key config.Condition accepts
        actual = request.source_namespace
    return _field_matches(condition.values, condition.not_values, actual)


def rule_matches(rule: Rule, request: AuthzRequest) -> bool:
    """ALL clauses: from (any source), to (any operation), when (every condition)."""
    if rule.sources and not any(source_matches(s, request) for s in rule.sources):
        return False
    if rule.operations and not any(operation_matches(o, request) for o in rule.operations):
        return False
    return all(condition_matches(c, request) for c in rule.conditions)


def _first_matching_rule(policy: AuthorizationPolicy, request: AuthzRequest) -> int | None:
    for index, rule in enumerate(policy.rules):
        if rule_matches(rule, request):
            return index
    return None


def _name(policy: AuthorizationPolicy) -> str:
    return f"{policy.namespace}/{policy.name}"


def evaluate(policies: Sequence[AuthorizationPolicy], request: AuthzRequest) -> AuthzDecision:
    """Decide a request against the policies that apply to its destination."""
    audited = tuple(
        _name(p)
        for p in policies
        if p.action is AuthorizationAction.AUDIT and _first_matching_rule(p, request) is not None
    )
    for policy in policies:
        if policy.action is not AuthorizationAction.DENY:
            continue
        rule = _first_matching_rule(policy, request)
        if rule is not None:
            return AuthzDecision(
                False, f"denied by DENY policy {_name(policy)} rule {rule}", _name(policy), rule,
                audited,
            )  # fmt: skip
    allow_policies = [p for p in policies if p.action is AuthorizationAction.ALLOW]
    if not allow_policies:
        return AuthzDecision(True, "no ALLOW policy applies", audited=audited)
    for policy in allow_policies:
        rule = _first_matching_rule(policy, request)
        if rule is not None:
            return AuthzDecision(
                True, f"allowed by ALLOW policy {_name(policy)} rule {rule}", _name(policy), rule,
                audited,
            )  # fmt: skip
    names = ", ".join(_name(p) for p in allow_policies)
    return AuthzDecision(False, f"no rule of the ALLOW policies ({names}) matched", audited=audited)
