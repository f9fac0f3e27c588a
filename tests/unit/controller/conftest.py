"""Shared helpers for controller tests: resource batches built through the real YAML parser."""

from __future__ import annotations

from weft.resources import Document, ParsedResource, parse_documents


def workload_doc(
    name: str,
    node: str,
    *,
    ns: str = "shop",
    app: str | None = None,
    sa: str = "default",
    ip: str = "10.1.0.1",
) -> dict[str, object]:
    return {
        "apiVersion": "weft.io/v1",
        "kind": "Workload",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": app or name}},
        "spec": {"address": ip, "node": node, "serviceAccount": sa},
    }


def service_doc(name: str, app: str, ns: str = "shop", vip: str = "10.96.0.1") -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "clusterIP": vip,
            "selector": {"app": app},
            "ports": [{"port": 80, "targetPort": 8080}],
        },
    }


def namespace_doc(name: str, mode: str = "ambient") -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {"weft.io/dataplane-mode": mode}},
    }


def parsed(*bodies: dict[str, object]) -> list[ParsedResource]:
    return parse_documents([Document("test.yaml", i, b) for i, b in enumerate(bodies)])


def ip_of(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
