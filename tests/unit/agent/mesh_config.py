"""Build agent NodeStates from operator YAML, through the same parser the controller uses."""

from __future__ import annotations

import yaml

from agent.state import NodeState
from tests.resource_yaml import documents, namespace, service, workload
from weft.api.convert import ConfigUpdate, ReceivedResource
from weft.resources import parse_body

SHOP = documents(
    namespace("shop"),
    namespace("legacy", ambient=False),
    workload("frontend", "shop", "10.88.1.2", "node1", service_account="frontend"),
    workload("reviews-v1", "shop", "10.88.1.3", "node1", app="reviews", service_account="reviews"),
    workload("reviews-v2", "shop", "10.88.2.3", "node2", app="reviews", service_account="reviews"),
    workload("catalog", "shop", "10.88.2.2", "node2", service_account="catalog"),
    workload("old", "legacy", "10.88.2.9", "node2"),
    service("reviews", "shop", "10.96.0.12", 80, target_port=8080),
    service("catalog", "shop", "10.96.0.11", 8080),
    service("empty", "shop", "10.96.0.30", 8080, app="nobody"),
    service("old", "legacy", "10.96.0.40", 8080),
)


def received(text: str) -> tuple[ReceivedResource, ...]:
    return tuple(ReceivedResource(parse_body(body), 1) for body in yaml.safe_load_all(text))


def snapshot(text: str, version: int = 1) -> ConfigUpdate:
    return ConfigUpdate(version, True, received(text), ())


def node_state(node: str, text: str = SHOP, extra: str = "") -> NodeState:
    return NodeState(node).apply(snapshot(text + ("---\n" + extra if extra else "")))
