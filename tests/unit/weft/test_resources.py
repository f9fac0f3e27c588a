"""weft.resources: operator YAML (Istio, Gateway API, Kubernetes shapes) into the model."""

from __future__ import annotations

import contextlib
import io
import json
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weft.model import (
    AuthorizationAction,
    AuthorizationPolicy,
    DestinationRule,
    FaultInjection,
    HTTPRoute,
    Kind,
    LoadBalancerPolicy,
    MutualTLSMode,
    Namespace,
    PathMatchType,
    PeerAuthentication,
    RateLimit,
    Service,
    Waypoint,
    Workload,
)
from weft.resources import (
    Document,
    InvalidResourcesError,
    parse_body,
    parse_documents,
    parse_stored,
    read_documents,
)

ALL_KINDS_YAML = """\
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {weft.io/dataplane-mode: ambient}
---
apiVersion: weft.io/v1
kind: Workload
metadata: {name: frontend-1, namespace: shop, labels: {app: frontend}}
spec: {address: 10.1.1.5, node: n1, serviceAccount: frontend, ports: {http: 8080}}
---
apiVersion: v1
kind: Service
metadata: {name: frontend, namespace: shop, labels: {weft.io/use-waypoint: shop-waypoint}}
spec:
  clusterIP: 10.96.0.10
  selector: {app: frontend}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: weft.io/v1
kind: Waypoint
metadata: {name: shop-waypoint, namespace: shop}
spec: {address: 10.1.3.2, node: n3}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-frontend, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/shop/sa/frontend"]
        ipBlocks: ["10.1.0.0/16"]
    to:
    - operation: {ports: ["8080"], methods: ["GET"], paths: ["/cart/*"]}
    when:
    - {key: "request.headers[x-user]", values: ["alice"]}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: strict, namespace: shop}
spec:
  mtls: {mode: STRICT}
  portLevelMtls:
    8081: {mode: PERMISSIVE}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: frontend, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: frontend, port: 80}]
  rules:
  - matches:
    - path: {type: PathPrefix, value: /api}
      method: GET
      headers: [{name: x-canary, value: "true"}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-mesh, value: weft}], remove: [x-debug]}
    - type: ExtensionRef
      extensionRef: {group: weft.io, kind: FaultInjection, name: slow}
    - type: ExtensionRef
      extensionRef: {group: weft.io, kind: RateLimit, name: gentle}
    backendRefs:
    - {name: frontend-v1, port: 80, weight: 90}
    - {name: frontend-v2, port: 80, weight: 10}
    timeouts: {request: 2s, backendRequest: 500ms}
    retry: {attempts: 3, codes: [503], backoff: 100ms}
---
apiVersion: weft.io/v1
kind: FaultInjection
metadata: {name: slow, namespace: shop}
spec:
  delay: {fixedDelay: 1.5s, percentage: {value: 10}}
  abort: {httpStatus: 503, percentage: {value: 5}}
---
apiVersion: weft.io/v1
kind: RateLimit
metadata: {name: gentle, namespace: shop}
spec: {requests: 100, unit: minute, burst: 20}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: frontend, namespace: shop}
spec:
  host: frontend.shop.svc.cluster.local
  trafficPolicy:
    loadBalancer: {simple: LEAST_REQUEST}
    connectionPool:
      tcp: {maxConnections: 100, connectTimeout: 30ms}
      http: {http1MaxPendingRequests: 10, maxRequestsPerConnection: 5}
    outlierDetection: {consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s}
  subsets:
  - {name: v1, labels: {version: v1}}
"""


def parse_text(text: str, source: str = "mesh.yaml") -> list[object]:
    docs = read_documents(["-"], io.StringIO(text))
    docs = [Document(source, d.index, d.body) for d in docs]
    return [p.resource for p in parse_documents(docs)]


def test_every_supported_kind_parses_from_istio_and_gateway_api_yaml() -> None:
    (ns, wl, svc, wp, authz, peer, route, fault, limit, dr) = parse_text(ALL_KINDS_YAML)
    assert isinstance(ns, Namespace)
    assert ns.dataplane_mode.value == "ambient"
    assert isinstance(wl, Workload)
    assert wl.address == IPv4Address("10.1.1.5")
    assert wl.node == "n1"
    assert wl.identity().uri == "spiffe://cluster.local/ns/shop/sa/frontend"
    assert isinstance(svc, Service)
    assert svc.vip == IPv4Address("10.96.0.10")
    assert svc.ports[0].target_port == 8080
    assert svc.selects(wl)
    assert svc.use_waypoint == "shop-waypoint"
    assert isinstance(wp, Waypoint)
    assert wp.port == 15008
    assert isinstance(authz, AuthorizationPolicy)
    assert authz.action is AuthorizationAction.ALLOW
    source = authz.rules[0].sources[0]
    assert source.ip_blocks == (IPv4Network("10.1.0.0/16"),)
    assert authz.rules[0].operations[0].ports == (8080,)
    assert authz.rules[0].operations[0].is_l7
    assert isinstance(peer, PeerAuthentication)
    assert peer.mode is MutualTLSMode.STRICT
    assert peer.port_level == {8081: MutualTLSMode.PERMISSIVE}
    assert isinstance(route, HTTPRoute)
    rule = route.rules[0]
    assert rule.matches[0].path is not None
    assert rule.matches[0].path.type is PathMatchType.PREFIX
    assert [b.weight for b in rule.backend_refs] == [90, 10]
    assert rule.timeouts is not None
    assert rule.timeouts.backend_request == 0.5
    refs = [f.extension_ref for f in rule.filters if f.extension_ref]
    assert [(r.kind, r.name) for r in refs] == [
        (Kind.FAULT_INJECTION, "slow"),
        (Kind.RATE_LIMIT, "gentle"),
    ]
    assert isinstance(fault, FaultInjection)
    assert fault.delay_seconds == 1.5
    assert fault.abort_status == 503
    assert fault.abort_percentage == 5.0
    assert isinstance(limit, RateLimit)
    assert limit.unit_seconds == 60.0
    assert limit.burst == 20
    assert isinstance(dr, DestinationRule)
    assert dr.traffic_policy.load_balancer is LoadBalancerPolicy.LEAST_REQUEST
    assert dr.traffic_policy.connection_pool is not None
    assert dr.traffic_policy.connection_pool.connect_timeout == pytest.approx(0.03)


def test_stored_document_reparses_to_the_same_resource() -> None:
    docs = read_documents(["-"], io.StringIO(ALL_KINDS_YAML))
    for parsed in parse_documents(docs):
        wire = json.loads(json.dumps(parsed.document))  # what the store and the wire carry
        assert parse_stored(wire).resource == parsed.resource


def _problems(text: str) -> list[str]:
    with pytest.raises(InvalidResourcesError) as exc:
        parse_text(text)
    return [p.message for p in exc.value.problems]


def test_unsupported_istio_field_is_rejected_by_name() -> None:
    text = ALL_KINDS_YAML.replace("  mtls: {mode: STRICT}", "  mtls: {mode: STRICT}\n  foo: 1")
    [message] = _problems(text)
    assert "mesh.yaml document 5 (PeerAuthentication shop/strict)" in message
    assert "field 'spec.foo': expected no such field" in message


def test_error_names_document_resource_and_nested_field_path() -> None:
    text = ALL_KINDS_YAML.replace('ports: ["8080"]', 'ports: ["80800"]')
    [message] = _problems(text)
    assert "document 4 (AuthorizationPolicy shop/allow-frontend)" in message
    assert "spec.rules[0].to[0].operation.ports[0]" in message
    assert "a port number from 1 to 65535" in message


def test_every_bad_document_is_reported_not_just_the_first() -> None:
    text = ALL_KINDS_YAML.replace("node: n1", "node: N_1").replace(
        "kind: Waypoint", "kind: Gateway"
    )
    problems = _problems(text)
    assert len(problems) == 2
    assert "spec.node" in problems[0]
    assert "field 'kind'" in problems[1]


def test_custom_action_of_istio_is_rejected_with_the_supported_choices() -> None:
    [message] = _problems(ALL_KINDS_YAML.replace("action: ALLOW", "action: CUSTOM"))
    assert "spec.action" in message
    assert "'ALLOW' or 'DENY' or 'AUDIT'" in message


def test_duplicate_resource_in_one_batch_is_refused() -> None:
    ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n"
    [message] = _problems(ns + "---\n" + ns)
    assert "not already used by mesh.yaml document 0" in message


def test_unparseable_yaml_names_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Namespace\nmetadata: {name: [\n")
    with pytest.raises(InvalidResourcesError) as exc:
        read_documents([str(tmp_path)])
    assert str(bad) in exc.value.problems[0].message
    assert "valid YAML at line" in exc.value.problems[0].message


def test_directory_reads_every_yaml_file_in_order(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n")
    (tmp_path / "a.yml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n")
    (tmp_path / "notes.txt").write_text("ignored")
    keys = [p.key.name for p in parse_documents(read_documents([str(tmp_path)]))]
    assert keys == ["a", "b"]


def test_namespaced_kind_defaults_to_the_default_namespace() -> None:
    parsed = parse_body(
        {
            "apiVersion": "weft.io/v1",
            "kind": "RateLimit",
            "metadata": {"name": "r"},
            "spec": {"requests": 1},
        }
    )
    assert parsed.key.namespace == "default"


YAML_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(), st.text(max_size=12)
)
YAML_VALUES = st.recursive(
    YAML_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=30,
)
KIND_NAMES = st.sampled_from([k.value for k in Kind])


@st.composite
def almost_valid_documents(draw: st.DrawFn) -> dict[str, object]:
    """Documents with a real kind and shape-like spec, so validation goes deep before failing."""
    base = yaml.safe_load_all(ALL_KINDS_YAML)
    doc: dict[str, object] = dict(draw(st.sampled_from(list(base))))
    spec = doc.get("spec")
    if isinstance(spec, dict) and spec:
        spec = dict(spec)
        spec[draw(st.sampled_from(sorted(spec)))] = draw(YAML_VALUES)
        doc["spec"] = spec
    if draw(st.booleans()):
        doc[draw(st.sampled_from(["kind", "metadata", "apiVersion"]))] = draw(YAML_VALUES)
    return doc


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(YAML_VALUES, almost_valid_documents()))
def test_garbage_documents_are_reported_never_crash(body: object) -> None:
    problems: tuple[object, ...] = ()
    try:
        parse_documents([Document("fuzz.yaml", 0, body)])
    except InvalidResourcesError as err:
        problems = err.problems
    assert all("fuzz.yaml document 0" in str(p) for p in problems)


@settings(max_examples=200)
@given(st.text(max_size=200))
def test_garbage_yaml_text_is_reported_never_crashes(text: str) -> None:
    with contextlib.suppress(InvalidResourcesError):
        parse_documents(read_documents(["-"], io.StringIO(text)))
