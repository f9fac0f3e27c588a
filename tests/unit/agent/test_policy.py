from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address

from agent.policy import ConnectionAttributes, DecisionCache, Verdict, decide
from tests.resource_yaml import CATALOG_CALLERS
from tests.unit.agent.mesh_config import node_state
from weft.identity import Identity
from weft.model import AuthorizationPolicy

FRONTEND = Identity.parse("spiffe://cluster.local/ns/shop/sa/frontend")
LOADGEN = Identity.parse("spiffe://cluster.local/ns/shop/sa/loadgen")
OUTSIDER = Identity.parse("spiffe://cluster.local/ns/other/sa/default")


def policies(yaml_text: str) -> list[AuthorizationPolicy]:
    state = node_state("node2", extra=yaml_text)
    catalog = state.workload_at(IPv4Address("10.88.2.2"))
    assert catalog is not None
    return state.authorization_policies(catalog)


def conn(source: Identity | None, ip: str = "10.88.1.2", port: int = 8080) -> ConnectionAttributes:
    return ConnectionAttributes(source, IPv4Address(ip), port)


def test_no_policy_allows() -> None:
    assert decide([], conn(LOADGEN)).allowed


def test_allow_admits_only_listed_principals_and_names_the_rule() -> None:
    found = policies(CATALOG_CALLERS)
    allowed = decide(found, conn(FRONTEND))
    assert (allowed.verdict, allowed.policy, allowed.rule) == (
        Verdict.ALLOW,
        "shop/catalog-callers",
        0,
    )
    denied = decide(found, conn(LOADGEN))
    assert denied.verdict == Verdict.DENY
    assert denied.reason == "no ALLOW rule matched"


def test_plaintext_caller_without_identity_matches_no_principal() -> None:
    assert not decide(policies(CATALOG_CALLERS), conn(None)).allowed


def test_deny_wins_over_allow() -> None:
    deny = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: block-frontend-9090, namespace: shop}
spec:
  action: DENY
  rules:
  - from: [{source: {namespaces: ["shop"]}}]
    to: [{operation: {ports: ["8080"]}}]
"""
    found = policies(CATALOG_CALLERS + "---\n" + deny)
    decision = decide(found, conn(FRONTEND))
    assert (decision.verdict, decision.policy, decision.rule) == (
        Verdict.DENY,
        "shop/block-frontend-9090",
        0,
    )
    assert decide(found, conn(FRONTEND, port=9090)).allowed


def test_ip_blocks_and_not_namespaces() -> None:
    allow = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: by-ip, namespace: shop}
spec:
  rules:
  - from: [{source: {ipBlocks: ["10.88.1.0/24"], notNamespaces: ["other"]}}]
"""
    found = policies(allow)
    assert decide(found, conn(FRONTEND, ip="10.88.1.7")).allowed
    assert not decide(found, conn(FRONTEND, ip="10.88.2.7")).allowed
    assert not decide(found, conn(OUTSIDER, ip="10.88.1.7")).allowed


def test_a_rule_with_l7_fields_never_allows_and_always_denies() -> None:
    l7_allow = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: get-only, namespace: shop}
spec:
  rules:
  - to: [{operation: {methods: ["GET"]}}]
"""
    assert not decide(policies(l7_allow), conn(FRONTEND)).allowed
    l7_deny = l7_allow.replace("get-only", "no-post").replace("spec:\n", "spec:\n  action: DENY\n")
    decision = decide(policies(l7_deny), conn(FRONTEND))
    assert (decision.verdict, decision.policy) == (Verdict.DENY, "shop/no-post")


def test_audit_policies_are_reported_but_do_not_decide() -> None:
    audit = CATALOG_CALLERS.replace("action: ALLOW", "action: AUDIT").replace(
        "catalog-callers", "watch"
    )
    decision = decide(policies(audit), conn(LOADGEN))
    assert decision.allowed
    assert decision.audited_by == ()
    decision = decide(policies(audit), conn(FRONTEND))
    assert decision.allowed
    assert decision.audited_by == ("shop/watch",)


def test_principal_patterns_match_prefix_and_suffix() -> None:
    prefix = CATALOG_CALLERS.replace(
        '"cluster.local/ns/shop/sa/frontend"', '"cluster.local/ns/shop/*"'
    )
    assert decide(policies(prefix), conn(LOADGEN)).allowed
    assert not decide(policies(prefix), conn(OUTSIDER)).allowed
    suffix = CATALOG_CALLERS.replace('"cluster.local/ns/shop/sa/frontend"', '"*/sa/frontend"')
    assert decide(policies(suffix), conn(FRONTEND)).allowed
    assert not decide(policies(suffix), conn(LOADGEN)).allowed


def test_policies_of_other_namespaces_and_selectors_do_not_apply() -> None:
    elsewhere = CATALOG_CALLERS.replace("namespace: shop", "namespace: legacy")
    assert policies(elsewhere) == []
    other_app = CATALOG_CALLERS.replace("app: catalog", "app: reviews")
    assert policies(other_app) == []


def test_cached_decisions_follow_a_new_state_and_keep_answers_per_connection_attributes() -> None:
    before = node_state("node2")
    after = node_state("node2", extra=CATALOG_CALLERS)
    catalog = IPv4Address("10.88.2.2")
    cache = DecisionCache()
    evaluated: list[str] = []

    def policies_of(state: object) -> Callable[[], list[AuthorizationPolicy]]:
        def policies() -> list[AuthorizationPolicy]:
            evaluated.append("x")
            assert isinstance(state, type(before))
            workload = state.workload_at(catalog)
            assert workload is not None
            return state.authorization_policies(workload)

        return policies

    assert cache.decide(before, catalog, policies_of(before), conn(LOADGEN)).allowed
    assert cache.decide(before, catalog, policies_of(before), conn(LOADGEN)).allowed
    assert len(evaluated) == 1  # the second answer came from the cache
    # a new config version: judged again, now under the ALLOW policy that omits loadgen
    assert not cache.decide(after, catalog, policies_of(after), conn(LOADGEN)).allowed
    assert cache.decide(after, catalog, policies_of(after), conn(FRONTEND)).allowed
    assert len(evaluated) == 3
    assert not cache.decide(after, catalog, policies_of(after), conn(LOADGEN)).allowed
    assert len(evaluated) == 3
