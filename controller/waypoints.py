"""Waypoints as controller clients: their join-token subject, and what their own SVID may do.

A waypoint is bootstrapped like a node (a one-time token), but the token is for a Waypoint
resource, and what it gets is that waypoint's own workload SVID (`ns/<NS>/sa/<serviceAccount>`),
as Istio's waypoints authenticate to istiod with their own service account. Afterwards the SVID
is its credential on 15012: it may renew exactly that identity and watch that waypoint's
configuration, and nothing else, while the Waypoint resource exists.
"""

from __future__ import annotations

from controller.catalog import Catalog
from weft.identity import Identity
from weft.model import Kind, ResourceKey, Waypoint

SUBJECT_PREFIX = "waypoint:"


class WaypointRefusedError(Exception):
    """The caller may not act as this waypoint; the message says why (audit log, client)."""


def token_subject(namespace: str, name: str) -> str:
    """The join-token subject of a waypoint; node names are DNS names, so they never clash."""
    return f"{SUBJECT_PREFIX}{namespace}/{name}"


def parse_reference(text: str) -> tuple[str, str]:
    """`namespace/name` -> (namespace, name); ValueError naming the expected form."""
    namespace, slash, name = text.partition("/")
    if not slash or not namespace or not name or "/" in name:
        raise ValueError(f"expected NAMESPACE/NAME of a Waypoint, got {text!r}")
    return namespace, name


def subject_waypoint(subject: str) -> tuple[str, str] | None:
    """(namespace, name) when a token subject names a waypoint, else None (a node)."""
    if not subject.startswith(SUBJECT_PREFIX):
        return None
    return parse_reference(subject[len(SUBJECT_PREFIX) :])


def find_waypoint(catalog: Catalog, namespace: str, name: str) -> Waypoint:
    entry = catalog.get(ResourceKey(Kind.WAYPOINT, namespace, name))
    if entry is None or not isinstance(entry.resource, Waypoint):
        raise WaypointRefusedError(f"no Waypoint {namespace}/{name} is registered")
    return entry.resource


def waypoint_identity(waypoint: Waypoint, trust_domain: str) -> Identity:
    return Identity.for_workload(
        waypoint.metadata.namespace, waypoint.service_account, trust_domain
    )


def authorize_waypoint_caller(
    catalog: Catalog, caller_uri: str, namespace: str, name: str, trust_domain: str
) -> Waypoint:
    """The Waypoint `namespace/name` if `caller_uri` is its identity; WaypointRefusedError else."""
    waypoint = find_waypoint(catalog, namespace, name)
    expected = waypoint_identity(waypoint, trust_domain).uri
    if caller_uri != expected:
        raise WaypointRefusedError(
            f"{caller_uri} is not waypoint {namespace}/{name} (its identity is {expected})"
        )
    return waypoint


def waypoint_of_identity(catalog: Catalog, caller_uri: str, trust_domain: str) -> Waypoint:
    """A registered Waypoint whose identity is `caller_uri` (for renewals); refused if none."""
    for entry in catalog.of_kind(Kind.WAYPOINT):
        waypoint = entry.resource
        if (
            isinstance(waypoint, Waypoint)
            and waypoint_identity(waypoint, trust_domain).uri == caller_uri
        ):
            return waypoint
    raise WaypointRefusedError(f"{caller_uri} is the identity of no registered Waypoint")
