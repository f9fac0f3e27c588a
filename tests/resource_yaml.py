"""Operator YAML that tests of every tier apply, built so each test states only what differs.

The text is the compact flow style an operator writes (and some tests edit with str.replace).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

FRONTEND_PRINCIPAL = "cluster.local/ns/shop/sa/frontend"


def documents(*texts: str) -> str:
    """One multi-document YAML text, as `weft apply -f` reads it."""
    return "---\n".join(texts)


def namespace(name: str, *, ambient: bool = True) -> str:
    """A Namespace; `ambient` puts it in the mesh (`weft.io/dataplane-mode: ambient`)."""
    labels = ", labels: {weft.io/dataplane-mode: ambient}" if ambient else ""
    return f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}{labels}}}\n"


def workload(
    name: str,
    namespace: str,
    address: str,
    node: str,
    *,
    app: str | None = None,
    service_account: str | None = None,
) -> str:
    """A Workload labelled `app: <app, else name>`."""
    account = f", serviceAccount: {service_account}" if service_account else ""
    return (
        "apiVersion: weft.io/v1\nkind: Workload\n"
        f"metadata: {{name: {name}, namespace: {namespace}, labels: {{app: {app or name}}}}}\n"
        f"spec: {{address: {address}, node: {node}{account}}}\n"
    )


def service(
    name: str,
    namespace: str,
    cluster_ip: str,
    port: int,
    *,
    target_port: int | None = None,
    app: str | None = None,
    port_name: str = "http",
) -> str:
    """A Service selecting `app: <app, else name>`, with one port."""
    return (
        "apiVersion: v1\nkind: Service\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\n"
        "spec:\n"
        f"  clusterIP: {cluster_ip}\n"
        f"  selector: {{app: {app or name}}}\n"
        f"  ports: [{{name: {port_name}, port: {port}, targetPort: {target_port or port}}}]\n"
    )


def _selector(app: str | None) -> str:
    return f"  selector: {{matchLabels: {{app: {app}}}}}\n" if app else ""


def authorization_policy(
    name: str,
    namespace: str,
    *,
    action: str = "ALLOW",
    app: str | None = None,
    principals: Sequence[str] = (),
    ip_blocks: Sequence[str] = (),
) -> str:
    """An L4 AuthorizationPolicy with one rule, from these principals and/or IP blocks, for the
    workloads labelled `app: <app>` (without `app`, the whole namespace)."""
    source = []
    if principals:
        source.append(f"principals: {json.dumps(list(principals))}")
    if ip_blocks:
        source.append(f"ipBlocks: {json.dumps(list(ip_blocks))}")
    return (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\n"
        f"spec:\n{_selector(app)}"
        f"  action: {action}\n"
        "  rules:\n"
        f"  - from: [{{source: {{{', '.join(source)}}}}}]\n"
    )


def peer_authentication(name: str, namespace: str, mode: str, *, app: str | None = None) -> str:
    """A PeerAuthentication (STRICT or PERMISSIVE) for `app`'s workloads, else the namespace's."""
    return (
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\n"
        f"spec:\n{_selector(app)}"
        f"  mtls: {{mode: {mode}}}\n"
    )


# The policy the agent's policy tests, its plaintext inbound tests and the lab's tests apply:
# only the frontend may call catalog (a client with no identity matches no principal).
CATALOG_CALLERS = authorization_policy(
    "catalog-callers", "shop", app="catalog", principals=[FRONTEND_PRINCIPAL]
)
