"""Checks across resources that one document alone cannot make: addresses must be unique.

Two workloads with one IP, or two services with one VIP, would make capture and routing
ambiguous, so an apply that would create such a pair is refused as a whole, naming both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from ipaddress import IPv4Address

from weft.model import Resource, ResourceKey, Service, Waypoint, Workload
from weft.resources import ParsedResource


def _address(resource: Resource) -> tuple[str, IPv4Address] | None:
    """The address a resource claims, and in which family of addresses it must be unique."""
    if isinstance(resource, Workload | Waypoint):
        return "endpoint address", resource.address
    if isinstance(resource, Service) and resource.vip is not None:
        return "service VIP", resource.vip
    return None


AddressClaim = tuple[str, IPv4Address]


def address_claim(resource: Resource) -> AddressClaim | None:
    return _address(resource)


def address_conflicts(
    batch: Sequence[ParsedResource], owner_of: Callable[[AddressClaim], ResourceKey | None]
) -> list[str]:
    """One message per address claimed twice once `batch` replaces what it names.

    `owner_of` answers who holds an address now (the catalog's index).
    """
    replaced = {item.key for item in batch}
    owners: dict[AddressClaim, ResourceKey] = {}
    problems = []
    for item in batch:
        claim = _address(item.resource)
        if claim is None:
            continue
        other = owners.get(claim)
        if other is None:
            current = owner_of(claim)
            other = current if current is not None and current not in replaced else None
        if other is not None:
            problems.append(
                f"{item.key}: {claim[0]} {claim[1]} is already used by {other}; "
                "give one of them another address"
            )
        else:
            owners[claim] = item.key
    return problems
