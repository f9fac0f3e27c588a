"""Build agent NodeStates from operator YAML, through the same parser the controller uses."""

from __future__ import annotations

import yaml

from agent.state import NodeState
from weft.api.convert import ConfigUpdate, ReceivedResource
from weft.resources import parse_body

SHOP = """\
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {weft.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: weft.io/v1
kind: Workload
metadata: {name: frontend, namespace: shop, labels: {app: frontend}}
spec: {address: 10.88.1.2, node: node1, serviceAccount: frontend}
---
apiVersion: weft.io/v1
kind: Workload
metadata: {name: reviews-v1, namespace: shop, labels: {app: reviews}}
spec: {address: 10.88.1.3, node: node1, serviceAccount: reviews}
---
apiVersion: weft.io/v1
kind: Workload
metadata: {name: reviews-v2, namespace: shop, labels: {app: reviews}}
spec: {address: 10.88.2.3, node: node2, serviceAccount: reviews}
---
apiVersion: weft.io/v1
kind: Workload
metadata: {name: catalog, namespace: shop, labels: {app: catalog}}
spec: {address: 10.88.2.2, node: node2, serviceAccount: catalog}
---
apiVersion: weft.io/v1
kind: Workload
metadata: {name: old, namespace: legacy, labels: {app: old}}
spec: {address: 10.88.2.9, node: node2}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  clusterIP: 10.96.0.12
  selector: {app: reviews}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: catalog, namespace: shop}
spec:
  clusterIP: 10.96.0.11
  selector: {app: catalog}
  ports: [{name: http, port: 8080, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: shop}
spec:
  clusterIP: 10.96.0.30
  selector: {app: nobody}
  ports: [{name: http, port: 8080, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: old, namespace: legacy}
spec:
  clusterIP: 10.96.0.40
  selector: {app: old}
  ports: [{name: http, port: 8080, targetPort: 8080}]
"""


def received(text: str) -> tuple[ReceivedResource, ...]:
    return tuple(ReceivedResource(parse_body(body), 1) for body in yaml.safe_load_all(text))


def snapshot(text: str, version: int = 1) -> ConfigUpdate:
    return ConfigUpdate(version, True, received(text), ())


def node_state(node: str, text: str = SHOP, extra: str = "") -> NodeState:
    return NodeState(node).apply(snapshot(text + ("---\n" + extra if extra else "")))
