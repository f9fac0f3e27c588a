"""`weft apply|get|delete|namespace|status`: the operator's commands, over the AdminService."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from controller.admin_client import AdminClient
from weft.controller_client import Credentials, add_admin_flags, admin_credential_path
from weft.errors import UsageError
from weft.model import DATAPLANE_MODE_LABEL, Kind, ResourceKey
from weft.resources import Document, parse_documents, read_documents, to_yaml

# What operators type: kubectl-style singular, plural and short names.
KIND_ALIASES: dict[str, Kind] = {}
for _kind, _extra in (
    (Kind.NAMESPACE, ("ns",)),
    (Kind.WORKLOAD, ("wl", "pod", "pods")),
    (Kind.SERVICE, ("svc",)),
    (Kind.WAYPOINT, ("wp",)),
    (Kind.AUTHORIZATION_POLICY, ("authz", "ap")),
    (Kind.PEER_AUTHENTICATION, ("pa",)),
    (Kind.HTTP_ROUTE, ("route", "routes")),
    (Kind.DESTINATION_RULE, ("dr",)),
    (Kind.FAULT_INJECTION, ("fault", "faults")),
    (Kind.RATE_LIMIT, ("ratelimit", "ratelimits")),
):
    for _alias in (_kind.value.lower(), _kind.value.lower() + "s", *_extra):
        KIND_ALIASES[_alias] = _kind
KIND_ALIASES["policies"] = Kind.AUTHORIZATION_POLICY

EXAMPLES = {
    "apply": "examples:\n  weft apply -f mesh.yaml\n  weft apply -f manifests/ --dry-run\n"
    "  cat policy.yaml | weft apply -f -\n",
    "get": "examples:\n  weft get workloads -n shop\n  weft get svc cart -n shop -o yaml\n"
    "  weft get authorizationpolicies -A -o json\n",
    "delete": "examples:\n  weft delete workload cart-1 -n shop\n  weft delete -f mesh.yaml\n",
    "namespace": "examples:\n  weft namespace enable shop\n  weft namespace disable shop\n",
    "status": "examples:\n  weft status\n  weft status -o json\n",
}


def parse_kind(text: str) -> Kind:
    kind = KIND_ALIASES.get(text.lower())
    if kind is None:
        names = ", ".join(k.value.lower() for k in Kind)
        raise UsageError(f"unknown resource kind {text!r}", hint=f"one of: {names}")
    return kind


def _client(args: argparse.Namespace) -> AdminClient:
    path = admin_credential_path(args.admin_credential, args.state_dir)
    return AdminClient(args.controller, Credentials.from_file(path))


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def _console() -> Console:
    return Console(highlight=False, soft_wrap=True)


# --- apply / delete -----------------------------------------------------------------------------


def _apply(args: argparse.Namespace) -> int:
    documents = read_documents(args.filename, sys.stdin)
    if not documents:
        raise UsageError("no resources found in " + ", ".join(args.filename))
    parse_documents(documents)  # fail fast, locally, with file names; the controller re-checks
    with _client(args) as client:
        result = client.apply(documents, dry_run=args.dry_run)
    if args.dry_run:
        print(f"{len(documents)} resource(s) valid (dry run, nothing applied)")
        return 0
    for verb, keys in (
        ("created", result.created),
        ("configured", result.configured),
        ("unchanged", result.unchanged),
    ):
        for key in keys:
            print(f"{str(key).lower().split('/')[0]}/{key.name} {verb}")
    print(f"revision {result.revision}")
    return 0


def _delete(args: argparse.Namespace) -> int:
    if args.filename:
        keys = [p.key for p in parse_documents(read_documents(args.filename, sys.stdin))]
    else:
        if not args.kind or not args.names:
            raise UsageError(
                "give KIND NAME... or -f FILE", hint="e.g. weft delete svc cart -n shop"
            )
        kind = parse_kind(args.kind)
        namespace = "" if kind is Kind.NAMESPACE else args.namespace
        keys = [ResourceKey(kind, namespace, n) for n in args.names]
    with _client(args) as client:
        revision, deleted = client.delete(keys)
    for key in deleted:
        print(f"{key.kind.value.lower()}/{key.name} deleted")
    missing = [k for k in keys if k not in deleted]
    for key in missing:
        print(f"{key} not found", file=sys.stderr)
    if deleted:
        print(f"revision {revision}")
    return 1 if missing else 0


# --- get ----------------------------------------------------------------------------------------


def _summary(kind: Kind, document: dict[str, Any]) -> list[str]:
    spec = document.get("spec") or {}
    labels = document["metadata"].get("labels", {})
    if kind is Kind.NAMESPACE:
        return [labels.get(DATAPLANE_MODE_LABEL, "-")]
    if kind is Kind.WORKLOAD:
        return [spec["address"], spec["node"], spec.get("serviceAccount", "default")]
    if kind is Kind.SERVICE:
        ports = ",".join(f"{p['port']}" for p in spec.get("ports", []))
        return [spec.get("clusterIP") or "None", ports]
    if kind is Kind.WAYPOINT:
        return [spec["address"], spec["node"]]
    if kind is Kind.AUTHORIZATION_POLICY:
        return [spec.get("action", "ALLOW") if spec else "ALLOW"]
    if kind is Kind.PEER_AUTHENTICATION:
        return [(spec.get("mtls") or {}).get("mode", "UNSET") if spec else "UNSET"]
    return [""]


SUMMARY_HEADERS = {
    Kind.NAMESPACE: ["DATAPLANE"],
    Kind.WORKLOAD: ["ADDRESS", "NODE", "SERVICE ACCOUNT"],
    Kind.SERVICE: ["VIP", "PORTS"],
    Kind.WAYPOINT: ["ADDRESS", "NODE"],
    Kind.AUTHORIZATION_POLICY: ["ACTION"],
    Kind.PEER_AUTHENTICATION: ["MTLS"],
}


def _get(args: argparse.Namespace) -> int:
    kind = parse_kind(args.kind)
    namespace = "" if args.all_namespaces or kind is Kind.NAMESPACE else args.namespace
    with _client(args) as client:
        found = client.get(kind, namespace, args.name or "")
    if args.name and not found:
        where = f" in namespace {namespace}" if namespace else ""
        raise UsageError(f"{kind.value} {args.name!r} not found{where}")
    documents = [doc for _, doc, _ in found]
    if args.output == "json":
        _print_json(documents[0] if args.name else {"items": documents})
        return 0
    if args.output == "yaml":
        sys.stdout.write(to_yaml(documents))
        return 0
    headers = SUMMARY_HEADERS.get(kind, [])
    table = Table(box=None, header_style="bold")
    if kind.namespaced:
        table.add_column("NAMESPACE")
    table.add_column("NAME")
    for header in headers:
        table.add_column(header)
    table.add_column("REVISION", justify="right")
    for key, document, revision in found:
        row = [key.namespace] if kind.namespaced else []
        row += [key.name, *(_summary(kind, document) if headers else []), str(revision)]
        table.add_row(*row)
    if not found:
        print(f"no {kind.value} resources" + (f" in namespace {namespace}" if namespace else ""))
    else:
        _console().print(table)
    return 0


# --- namespace ----------------------------------------------------------------------------------


def _namespace(args: argparse.Namespace) -> int:
    with _client(args) as client:
        found = client.get(Kind.NAMESPACE, "", args.name)
        if found:
            document = found[0][1]
        else:
            document = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": args.name}}
        labels = dict(document["metadata"].get("labels", {}))
        if args.action == "enable":
            labels[DATAPLANE_MODE_LABEL] = "ambient"
        else:
            labels.pop(DATAPLANE_MODE_LABEL, None)
        document["metadata"]["labels"] = labels
        if not labels:
            del document["metadata"]["labels"]
        result = client.apply([Document(f"namespace {args.action}", 0, document)])
    state = "meshed (ambient)" if args.action == "enable" else "not meshed"
    print(f"namespace {args.name} is {state}; revision {result.revision}")
    return 0


# --- status -------------------------------------------------------------------------------------


def _ago(timestamp: float) -> str:
    seconds = max(0, int(time.time() - timestamp))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds}s"


def _until(timestamp: float) -> str:
    when = dt.datetime.fromtimestamp(timestamp, dt.UTC).replace(microsecond=0)
    left = timestamp - time.time()
    return f"{when.isoformat()} ({'expired' if left < 0 else f'in {left / 3600:.1f}h'})"


def _status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        status = client.status()
    report: dict[str, Any] = {
        "controller": {
            "address": args.controller,
            "healthy": True,
            "trust_domain": status.trust_domain,
            "revision": status.revision,
            "resources": status.resources,
            "uptime_seconds": int(time.time() - status.started_at),
            "roots_expire": [_until(t) for t in status.root_not_after],
        },
        "agents": [
            {
                "node": a.node,
                "connected": a.connected,
                "sent_version": a.sent_version,
                "acked_version": a.acked_version,
                "lag": a.lag,
                "nacked_version": a.nacked_version or None,
                "nack_error": a.nack_error or None,
            }
            for a in status.agents
        ],
        "node_certificates": [
            {"node": c.node, "serial": c.serial, "expires": _until(c.not_after)}
            for c in status.node_certificates
        ],
    }
    if args.output == "json":
        _print_json(report)
        return 0
    console = _console()
    c = report["controller"]
    console.print(
        f"[bold]controller[/] {args.controller}: [green]healthy[/], trust domain "
        f"{c['trust_domain']}, revision {c['revision']}, {c['resources']} resources, "
        f"up {_ago(status.started_at)}"
    )
    for expiry in c["roots_expire"]:
        console.print(f"  trust bundle root expires {expiry}")
    table = Table(box=None, header_style="bold", title_justify="left")
    for column in ("NODE", "CONNECTED", "ACKED", "SENT", "LAG", "NACK", "NODE CERT EXPIRES"):
        table.add_column(column)
    certs = {cert.node: cert for cert in status.node_certificates}
    nodes = sorted({a.node for a in status.agents} | set(certs))
    agents = {a.node: a for a in status.agents}
    for node in nodes:
        agent = agents.get(node)
        nack = ""
        if agent is not None and agent.nacked_version:
            nack = f"[red]v{agent.nacked_version}: {agent.nack_error}[/]"
        table.add_row(
            node,
            ("[green]yes[/]" if agent.connected else "[yellow]no[/]") if agent else "never",
            str(agent.acked_version) if agent else "-",
            str(agent.sent_version) if agent else "-",
            str(agent.lag) if agent else "-",
            nack,
            _until(certs[node].not_after) if node in certs else "-",
        )
    if nodes:
        console.print(table)
    else:
        console.print("no agents have joined yet ('weft controller token create --node NAME')")
    return 0


# --- registration -------------------------------------------------------------------------------


def register(parser: argparse.ArgumentParser, name: str) -> None:
    parser.epilog = EXAMPLES.get(name)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_admin_flags(parser)
    if name == "apply":
        parser.add_argument(
            "-f", "--filename", action="append", required=True, help="file, directory or -"
        )
        parser.add_argument("--dry-run", action="store_true", help="validate only")
        parser.set_defaults(func=_apply)
    elif name == "get":
        parser.add_argument("kind", help="e.g. workloads, svc, authorizationpolicies")
        parser.add_argument("name", nargs="?")
        parser.add_argument("-n", "--namespace", default="default")
        parser.add_argument("-A", "--all-namespaces", action="store_true")
        parser.add_argument("-o", "--output", choices=["table", "yaml", "json"], default="table")
        parser.set_defaults(func=_get)
    elif name == "delete":
        parser.add_argument("kind", nargs="?")
        parser.add_argument("names", nargs="*")
        parser.add_argument("-n", "--namespace", default="default")
        parser.add_argument("-f", "--filename", action="append")
        parser.set_defaults(func=_delete)
    elif name == "namespace":
        parser.add_argument("action", choices=["enable", "disable"])
        parser.add_argument("name")
        parser.set_defaults(func=_namespace)
    elif name == "status":
        parser.add_argument("-o", "--output", choices=["table", "json"], default="table")
        parser.set_defaults(func=_status)
    else:
        raise ValueError(f"controller.admin_cli cannot build 'weft {name}'")
