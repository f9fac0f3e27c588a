"""L7 AuthorizationPolicy: DENY first and wins, ALLOW must match when any applies, AUDIT only
reports; rules AND their clauses, clauses OR their values."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from waypoint.authz import DENIED_BODY, AuthzRequest, evaluate, rule_matches, value_matches
from waypoint.config import (
    AuthorizationAction,
    AuthorizationPolicy,
    Condition,
    Operation,
    Rule,
    Source,
)

SLEEP = "spiffe://cluster.local/ns/default/sa/sleep"
ALLOW, DENY, AUDIT = AuthorizationAction.ALLOW, AuthorizationAction.DENY, AuthorizationAction.AUDIT


def request(
    *,
    method: str = "GET",
    path: str = "/",
    principal: str | None = SLEEP,
    namespace: str | None = "default",
    headers: tuple[tuple[str, str], ...] = (),
    port: int = 9080,
) -> AuthzRequest:
    return AuthzRequest(method, path, port, headers, principal, namespace)


def policy(name: str, action: AuthorizationAction, *rules: Rule) -> AuthorizationPolicy:
    return AuthorizationPolicy(name=name, namespace="default", action=action, rules=rules)


def test_no_policies_allow_everything() -> None:
    assert evaluate([], request()).allowed


def test_allow_policy_with_no_rules_allows_nothing() -> None:
    decision = evaluate([policy("allow-nothing", ALLOW)], request())
    assert not decision.allowed
    assert "default/allow-nothing" in decision.reason


def test_allow_policy_with_an_empty_rule_allows_everything() -> None:
    decision = evaluate([policy("allow-all", ALLOW, Rule())], request())
    assert decision.allowed
    assert (decision.policy, decision.rule) == ("default/allow-all", 0)


def test_deny_wins_over_a_matching_allow() -> None:
    policies = [
        policy("allow-all", ALLOW, Rule()),
        policy("deny-admin", DENY, Rule(operations=(Operation(paths=("/admin*",)),))),
    ]
    decision = evaluate(policies, request(path="/admin/users"))
    assert not decision.allowed
    assert decision.reason == "denied by DENY policy default/deny-admin rule 0"
    assert evaluate(policies, request(path="/public")).allowed


def test_deny_policy_without_rules_never_applies() -> None:
    assert evaluate([policy("empty-deny", DENY)], request()).allowed


def test_when_an_allow_policy_applies_the_request_must_match_one() -> None:
    policies = [
        policy(
            "only-sleep",
            ALLOW,
            Rule(sources=(Source(principals=("cluster.local/ns/default/sa/sleep",)),)),
        ),
    ]
    assert evaluate(policies, request()).allowed
    other = "spiffe://cluster.local/ns/default/sa/other"
    decision = evaluate(policies, request(principal=other))
    assert not decision.allowed
    assert decision.reason == "no rule of the ALLOW policies (default/only-sleep) matched"


def test_a_rule_needs_all_its_clauses() -> None:
    rule = Rule(
        sources=(Source(namespaces=("default",)),),
        operations=(Operation(methods=("GET",)),),
        conditions=(Condition("request.headers[x-user]", ("alice",)),),
    )
    policies = [policy("p", ALLOW, rule)]
    assert evaluate(policies, request(headers=(("x-user", "alice"),))).allowed
    assert not evaluate(policies, request(method="POST", headers=(("x-user", "alice"),))).allowed
    assert not evaluate(policies, request(namespace="prod", headers=(("x-user", "alice"),))).allowed
    assert not evaluate(policies, request(headers=(("x-user", "bob"),))).allowed


def test_a_clause_needs_any_of_its_values() -> None:
    rule = Rule(operations=(Operation(methods=("GET", "HEAD")),))
    assert evaluate([policy("p", ALLOW, rule)], request(method="HEAD")).allowed


def test_a_rule_matches_if_any_source_matches() -> None:
    rule = Rule(sources=(Source(namespaces=("prod",)), Source(principals=("*/sa/sleep",))))
    assert evaluate([policy("p", ALLOW, rule)], request()).allowed


def test_a_policy_matches_if_any_rule_matches_and_names_that_rule() -> None:
    rules = (
        Rule(operations=(Operation(paths=("/a",)),)),
        Rule(operations=(Operation(paths=("/b",)),)),
    )
    decision = evaluate([policy("p", ALLOW, *rules)], request(path="/b"))
    assert (decision.allowed, decision.rule) == (True, 1)


@pytest.mark.parametrize(
    ("pattern", "value", "matches"),
    [
        ("/api/*", "/api/v1", True),
        ("/api/*", "/apix", False),
        ("*.html", "/index.html", True),
        ("*.html", "/index.htm", False),
        ("*", "anything", True),
        ("*", None, False),
        ("/exact", "/exact", True),
        ("/exact", "/exact/", False),
    ],
)
def test_istio_value_forms(pattern: str, value: str | None, matches: bool) -> None:
    assert value_matches(pattern, value) is matches


def test_unauthenticated_peer_does_not_match_any_principal() -> None:
    rule = Rule(sources=(Source(principals=("*",)),))
    assert not evaluate([policy("authenticated", ALLOW, rule)], request(principal=None)).allowed


def test_not_values_exclude_a_match() -> None:
    rule = Rule(operations=(Operation(paths=("/api/*",), not_paths=("/api/internal*",)),))
    policies = [policy("p", ALLOW, rule)]
    assert evaluate(policies, request(path="/api/items")).allowed
    assert not evaluate(policies, request(path="/api/internal/keys")).allowed


def test_not_principals_alone_match_everyone_else() -> None:
    rule = Rule(sources=(Source(not_principals=("cluster.local/ns/default/sa/sleep",)),))
    policies = [policy("deny-all-but-sleep", DENY, rule)]
    assert evaluate(policies, request()).allowed
    assert not evaluate(policies, request(principal="cluster.local/ns/x/sa/y")).allowed


def test_ports_compare_as_numbers_written_as_strings() -> None:
    rule = Rule(operations=(Operation(ports=(9080,)),))
    assert evaluate([policy("p", ALLOW, rule)], request(port=9080)).allowed
    assert not evaluate([policy("p", ALLOW, rule)], request(port=8080)).allowed


def test_header_condition_is_case_insensitive_in_the_name() -> None:
    rule = Rule(conditions=(Condition("request.headers[X-Tenant]", ("acme",)),))
    assert evaluate([policy("p", ALLOW, rule)], request(headers=(("x-tenant", "acme"),))).allowed


def test_absent_header_does_not_match_a_condition() -> None:
    rule = Rule(conditions=(Condition("request.headers[x-tenant]", ("*",)),))
    assert not evaluate([policy("p", ALLOW, rule)], request()).allowed


def test_source_conditions_in_when() -> None:
    rule = Rule(
        conditions=(
            Condition("source.namespace", ("default",)),
            Condition("source.principal", ("spiffe://cluster.local/ns/default/sa/*",)),
        )
    )
    assert evaluate([policy("p", ALLOW, rule)], request()).allowed


def test_audit_reports_matches_without_changing_the_decision() -> None:
    policies = [
        policy("audit-admin", AUDIT, Rule(operations=(Operation(paths=("/admin*",)),))),
        policy("allow-all", ALLOW, Rule()),
    ]
    decision = evaluate(policies, request(path="/admin"))
    assert decision.allowed
    assert decision.audited == ("default/audit-admin",)
    assert evaluate(policies, request(path="/x")).audited == ()


def test_audit_alone_does_not_count_as_an_allow_policy() -> None:
    policies = [policy("audit-all", AUDIT, Rule())]
    assert evaluate(policies, request()).allowed


def test_denied_body_is_what_envoy_operators_recognise() -> None:
    assert DENIED_BODY == b"RBAC: access denied"


def test_ip_blocks_match_the_source_address() -> None:
    rule = Rule(sources=(Source(ip_blocks=("10.1.0.0/16",), not_ip_blocks=("10.1.9.9",)),))
    policies = [policy("p", ALLOW, rule)]
    assert evaluate(policies, AuthzRequest("GET", "/", 80, source_ip="10.1.2.3")).allowed
    assert not evaluate(policies, AuthzRequest("GET", "/", 80, source_ip="10.1.9.9")).allowed
    assert not evaluate(policies, AuthzRequest("GET", "/", 80, source_ip="10.2.0.1")).allowed
    assert not evaluate(policies, AuthzRequest("GET", "/", 80)).allowed


def test_invalid_ip_block_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"source\.ipBlocks"):
        Source(ip_blocks=("10.0.0.0/33",))


def test_hosts_match_case_insensitively_with_or_without_the_port() -> None:
    rule = Rule(operations=(Operation(hosts=("*.example.com",), not_hosts=("admin.example.com",)),))
    policies = [policy("p", ALLOW, rule)]
    assert evaluate(policies, AuthzRequest("GET", "/", 80, host="Shop.Example.com:8080")).allowed
    assert not evaluate(policies, AuthzRequest("GET", "/", 80, host="admin.example.com")).allowed
    assert not evaluate(policies, AuthzRequest("GET", "/", 80, host="example.org")).allowed


paths = st.sampled_from(["/", "/admin", "/admin/x", "/public", "/public/y"])
patterns = st.sampled_from(["/admin*", "/public*", "*", "/admin", "*/x"])
rules = st.builds(
    lambda allowed: Rule(operations=(Operation(paths=tuple(allowed)),)),
    st.lists(patterns, min_size=1, max_size=2),
)
actions = st.sampled_from([ALLOW, DENY, AUDIT])


@given(st.lists(st.tuples(actions, st.lists(rules, max_size=2)), max_size=4), paths)
def test_decision_follows_deny_then_allow_whatever_the_policies(
    specs: list[tuple[AuthorizationAction, list[Rule]]], path: str
) -> None:
    policies = [policy(f"p{i}", action, *rules) for i, (action, rules) in enumerate(specs)]
    req = request(path=path)
    decision = evaluate(policies, req)
    denies = [
        p for p in policies if p.action is DENY and any(rule_matches(r, req) for r in p.rules)
    ]
    allows = [p for p in policies if p.action is ALLOW]
    allowed_by = [p for p in allows if any(rule_matches(r, req) for r in p.rules)]
    expected = not denies and (not allows or bool(allowed_by))
    assert decision.allowed is expected
