"""L4 AuthorizationPolicy, evaluated by the destination node agent for every inbound connection.

Istio's semantics, in its words: "If there are any DENY policies that match the request, deny
the request. If there are no ALLOW policies for the workload, allow the request. If any of the
ALLOW policies match the request, allow the request. Deny the request." A rule matches if ALL of
from, to and when match; within each, ANY entry matches. A node agent cannot see HTTP, so a rule
that names methods, paths, hosts or request.* conditions fails closed: it never allows, and in
a DENY policy it denies whatever its L7 part says.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address

from weft.identity import Identity
from weft.model import (
    AuthorizationAction,
    AuthorizationPolicy,
    Condition,
    Operation,
    Rule,
    Source,
)

# `when` keys a node agent can judge; every other key (request.*, ...) is L7.
L4_CONDITION_KEYS = ("source.ip", "source.namespace", "source.principal", "destination.port")


@dataclass(frozen=True)
class ConnectionAttributes:
    """What the agent knows about an inbound connection when it decides."""

    source: Identity | None  # None: plaintext, no verified identity
    source_ip: IPv4Address | None
    destination_port: int


class Verdict(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


@dataclass(frozen=True)
class Decision:
    """The verdict and, for the access log, which policy and rule decided it."""

    verdict: Verdict
    policy: str = ""  # "<namespace>/<name>", empty when no policy decided
    rule: int | None = None  # index into the policy's rules
    reason: str = ""
    audited_by: tuple[str, ...] = ()

    @property
    def allowed(self) -> bool:
        return self.verdict == Verdict.ALLOW


def decide(policies: Sequence[AuthorizationPolicy], conn: ConnectionAttributes) -> Decision:
    """Evaluate every policy in force for the destination workload."""
    audited = tuple(
        _name(p)
        for p in policies
        if p.action == AuthorizationAction.AUDIT and _matching_rule(p, conn) is not None
    )
    for policy in policies:
        if policy.action == AuthorizationAction.DENY:
            rule = _matching_rule(policy, conn)
            if rule is not None:
                return Decision(Verdict.DENY, _name(policy), rule, "DENY policy matched", audited)
    allows = [p for p in policies if p.action == AuthorizationAction.ALLOW]
    if not allows:
        return Decision(Verdict.ALLOW, reason="no ALLOW policy", audited_by=audited)
    for policy in allows:
        rule = _matching_rule(policy, conn)
        if rule is not None:
            return Decision(Verdict.ALLOW, _name(policy), rule, "ALLOW policy matched", audited)
    names = ",".join(_name(p) for p in allows)
    return Decision(Verdict.DENY, names, None, "no ALLOW rule matched", audited)


class DecisionCache:
    """decide()'s answers per (destination workload, connection attributes), kept while the node
    state they were computed from is in force: a client pod opening many connections to one
    workload is judged once per config version, not once per connection."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit  # distinct (workload, source, IP, port) answers kept at most
        self._state: object = None
        self._answers: dict[tuple[Hashable, ConnectionAttributes], Decision] = {}

    def decide(
        self,
        state: object,
        workload: Hashable,
        policies: Callable[[], Sequence[AuthorizationPolicy]],
        conn: ConnectionAttributes,
    ) -> Decision:
        """The decision for `conn` to `workload` (a key naming it) under `state`'s policies."""
        if state is not self._state:
            self._state, self._answers = state, {}
        key = (workload, conn)
        found = self._answers.get(key)
        if found is None:
            if len(self._answers) >= self.limit:
                self._answers.clear()
            found = self._answers[key] = decide(policies(), conn)
        return found


def _name(policy: AuthorizationPolicy) -> str:
    return f"{policy.metadata.namespace}/{policy.metadata.name}"


def _matching_rule(policy: AuthorizationPolicy, conn: ConnectionAttributes) -> int | None:
    deny = policy.action == AuthorizationAction.DENY
    for index, rule in enumerate(policy.rules):
        if _is_l7(rule):
            if deny and _l4_part_matches(rule, conn):
                return index  # fail closed: the L7 part cannot be checked here
            continue
        if _l4_part_matches(rule, conn):
            return index
    return None


def _is_l7(rule: Rule) -> bool:
    return any(o.is_l7 for o in rule.operations) or any(
        c.key not in L4_CONDITION_KEYS for c in rule.conditions
    )


def _l4_part_matches(rule: Rule, conn: ConnectionAttributes) -> bool:
    sources = not rule.sources or any(_source_matches(s, conn) for s in rule.sources)
    operations = not rule.operations or any(_operation_matches(o, conn) for o in rule.operations)
    conditions = all(
        _condition_matches(c, conn) for c in rule.conditions if c.key in L4_CONDITION_KEYS
    )
    return sources and operations and conditions


def _source_matches(source: Source, conn: ConnectionAttributes) -> bool:
    principal = _principal(conn.source)
    namespace = conn.source.namespace if conn.source is not None else None
    checks = [
        not source.principals or _any_pattern(source.principals, principal),
        not source.not_principals or not _any_pattern(source.not_principals, principal),
        not source.namespaces or _any_pattern(source.namespaces, namespace),
        not source.not_namespaces or not _any_pattern(source.not_namespaces, namespace),
        not source.ip_blocks
        or (conn.source_ip is not None and any(conn.source_ip in b for b in source.ip_blocks)),
        not source.not_ip_blocks
        or conn.source_ip is None
        or not any(conn.source_ip in b for b in source.not_ip_blocks),
    ]
    return all(checks)


def _operation_matches(operation: Operation, conn: ConnectionAttributes) -> bool:
    port = conn.destination_port
    return (not operation.ports or port in operation.ports) and port not in operation.not_ports


def _condition_matches(condition: Condition, conn: ConnectionAttributes) -> bool:
    value = {
        "source.ip": str(conn.source_ip) if conn.source_ip is not None else None,
        "source.namespace": conn.source.namespace if conn.source is not None else None,
        "source.principal": _principal(conn.source),
        "destination.port": str(conn.destination_port),
    }[condition.key]
    if condition.values and not _any_pattern(condition.values, value):
        return False
    return not (condition.not_values and _any_pattern(condition.not_values, value))


def _principal(identity: Identity | None) -> str | None:
    """Istio writes principals without the scheme: `cluster.local/ns/shop/sa/frontend`."""
    return identity.uri.removeprefix("spiffe://") if identity is not None else None


def _any_pattern(patterns: Sequence[str], value: str | None) -> bool:
    """Istio's string match: exact, `*`, `prefix*` or `*suffix`; nothing matches an absent value."""
    if value is None:
        return False
    for pattern in patterns:
        if pattern in ("*", value):
            return True
        if pattern.endswith("*") and value.startswith(pattern[:-1]):
            return True
        if pattern.startswith("*") and value.endswith(pattern[1:]):
            return True
    return False
