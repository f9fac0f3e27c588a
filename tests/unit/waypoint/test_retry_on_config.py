"""HTTPRoute `retry.retryOn` (Istio's retry conditions, gRPC ones included): parsed, checked by
name, and compiled into the waypoint's retry policy; a bad condition applies nothing."""

from __future__ import annotations

import io

import pytest

from waypoint import config
from waypoint.compiler import CompileError, compile_resources
from weft import model
from weft.resources import Document, InvalidResourcesError, parse_documents, read_documents

ROUTE = """\
apiVersion: v1
kind: Service
metadata: {{name: ratings, namespace: ratings, labels: {{weft.io/use-waypoint: waypoint}}}}
spec:
  clusterIP: 10.96.0.20
  selector: {{app: ratings}}
  ports: [{{name: grpc, port: 9090, targetPort: 9090}}]
---
apiVersion: weft.io/v1
kind: Waypoint
metadata: {{name: waypoint, namespace: ratings}}
spec: {{address: 10.88.1.9, node: node1}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: ratings, namespace: ratings}}
spec:
  parentRefs: [{{group: "", kind: Service, name: ratings, port: 9090}}]
  rules:
  - backendRefs: [{{name: ratings, port: 9090}}]
    retry: {retry}
"""


def parse(retry: str) -> list[model.Resource]:
    documents = read_documents(["-"], io.StringIO(ROUTE.format(retry=retry)))
    return [
        p.resource
        for p in parse_documents([Document("ratings.yaml", d.index, d.body) for d in documents])
    ]


def compiled_retry(retry: str) -> config.RetryPolicy:
    compiled = compile_resources(parse(retry), "waypoint", "ratings")
    (service,) = compiled.config.services
    (route,) = service.routes
    assert route.retry is not None
    return route.retry


def test_grpc_conditions_compile_to_the_grpc_statuses_they_retry() -> None:
    policy = compiled_retry(
        "{attempts: 3, retryOn: 'unavailable, cancelled,deadline-exceeded,internal,"
        "resource-exhausted'}"
    )
    assert policy.attempts == 3
    assert policy.grpc_statuses == {14, 1, 4, 13, 8}
    assert policy.retry_on == {
        config.RetryOn.UNAVAILABLE, config.RetryOn.CANCELLED, config.RetryOn.DEADLINE_EXCEEDED,
        config.RetryOn.INTERNAL, config.RetryOn.RESOURCE_EXHAUSTED,
    }  # fmt: skip


def test_retry_on_replaces_the_default_conditions_and_codes_join_them() -> None:
    # Istio: retryOn says exactly what is retried; a status code in it, or in Gateway API's
    # codes, is a retriable status code.
    policy = compiled_retry("{attempts: 2, codes: [502], retryOn: 'connect-failure,503'}")
    assert policy.retry_on == {
        config.RetryOn.CONNECT_FAILURE, config.RetryOn.RETRIABLE_STATUS_CODES,
    }  # fmt: skip
    assert policy.retriable_status_codes == {502, 503}
    assert policy.grpc_statuses == frozenset()


def test_without_retry_on_the_route_keeps_its_defaults() -> None:
    policy = compiled_retry("{attempts: 2}")
    assert policy.retry_on == {
        config.RetryOn.CONNECT_FAILURE, config.RetryOn.RESET, config.RetryOn.SERVER_ERROR,
    }  # fmt: skip
    assert policy.grpc_statuses == frozenset()


def test_every_documented_condition_is_one_the_waypoint_enforces() -> None:
    assert {c.value for c in config.RetryOn} == set(model.RETRY_ON_CONDITIONS)


@pytest.mark.parametrize("bad", ["unavailable,not-a-condition", "UNAVAILABLE", "200", "5xx,"])
def test_unknown_condition_is_rejected_by_name_with_what_is_allowed(bad: str) -> None:
    with pytest.raises(InvalidResourcesError) as raised:
        parse(f"{{attempts: 3, retryOn: '{bad}'}}")
    [problem] = raised.value.problems
    message = problem.message
    assert "HTTPRoute ratings/ratings" in message
    assert "spec.rules[0].retry.retryOn" in message
    for allowed in ("5xx", "connect-failure", "unavailable", "resource-exhausted"):
        assert allowed in message
    wrong = bad.rsplit(",", maxsplit=1)[-1].strip()
    assert repr(wrong) in message


def test_a_bad_retry_on_in_one_document_applies_nothing() -> None:
    # One batch: a good route, then a route with a bad condition. Validation covers the whole
    # batch before anything is used, so the good one is not applied either.
    good = ROUTE.format(retry="{attempts: 3, retryOn: unavailable}")
    bad_route = good.split("---\n")[2].replace(
        "{name: ratings, namespace", "{name: other, namespace"
    )
    text = good + "---\n" + bad_route.replace("retryOn: unavailable", "retryOn: sometimes")
    documents = read_documents(["-"], io.StringIO(text))
    with pytest.raises(InvalidResourcesError) as raised:
        parse_documents(list(documents))
    [problem] = raised.value.problems
    assert "HTTPRoute ratings/other" in problem.message
    assert "'sometimes'" in problem.message


def test_compiler_rejects_an_unknown_condition_in_a_model_built_in_code() -> None:
    resources = parse("{attempts: 3}")
    route = next(r for r in resources if isinstance(r, model.HTTPRoute))
    rule = route.rules[0]
    assert rule.retry is not None
    broken = model.HTTPRoute(
        metadata=route.metadata, parent_refs=route.parent_refs,
        rules=(model.RouteRule(backend_refs=rule.backend_refs,
                               retry=model.RouteRetry(attempts=1, retry_on=("sometimes",))),),
    )  # fmt: skip
    others = [r for r in resources if not isinstance(r, model.HTTPRoute)]
    with pytest.raises(CompileError, match=r"HTTPRoute ratings/ratings rule 0: .*'sometimes'.*"
                       r"allowed: 5xx, gateway-error"):  # fmt: skip
        compile_resources([*others, broken], "waypoint", "ratings")
