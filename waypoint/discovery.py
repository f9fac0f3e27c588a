"""The waypoint's view of the mesh from the controller's Watch, and what it compiles into.

Pure: `WaypointView.apply(update)` returns the next view (a snapshot replaces everything, a
delta edits it); `compile()` turns it into this waypoint's configuration and backend endpoints
with the same compiler `weft waypoint compile -f` uses, raising CompileError for a view it
cannot serve (the caller NACKs it and keeps the last good one). `route_to` says how to reach an
endpoint: over HBONE to the node agent answering for it (in the mesh) or plain TCP (outside).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from waypoint.compiler import CompiledWaypoint, CompileError, compile_resources
from waypoint.outbound import EndpointRoute
from weft.api.convert import ConfigUpdate
from weft.identity import DEFAULT_TRUST_DOMAIN
from weft.model import DataplaneMode, Kind, Namespace, Resource, ResourceKey, Workload

HBONE_PORT = 15008  # peers dial the endpoint's own address on 15008; its node's agent answers


@dataclass(frozen=True)
class WaypointView:
    """Every resource the controller sent this waypoint, at one version."""

    name: str
    namespace: str
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    version: int = 0
    resources: Mapping[ResourceKey, Resource] = field(default_factory=dict)

    def apply(self, update: ConfigUpdate) -> WaypointView:
        if not update.snapshot and update.version <= self.version:
            raise CompileError(
                f"version {update.version} is not newer than the applied {self.version}"
            )
        resources: dict[ResourceKey, Resource] = {} if update.snapshot else dict(self.resources)
        for key in update.removals:
            resources.pop(key, None)
        for received in update.upserts:
            resources[received.parsed.key] = received.parsed.resource
        return WaypointView(self.name, self.namespace, self.trust_domain, update.version, resources)

    def compile(self) -> CompiledWaypoint:
        """This waypoint's configuration; CompileError when it is not (or no longer) declared."""
        return compile_resources(list(self.resources.values()), self.name, self.namespace)

    def _workload_at(self, address: str) -> Workload | None:
        try:
            wanted = IPv4Address(address)
        except ValueError:
            return None
        for resource in self.resources.values():
            if isinstance(resource, Workload) and resource.address == wanted:
                return resource
        return None

    def in_mesh(self, workload: Workload) -> bool:
        namespace = self.resources.get(ResourceKey(Kind.NAMESPACE, "", workload.metadata.namespace))
        if not isinstance(namespace, Namespace):
            return False
        return namespace.dataplane_mode == DataplaneMode.AMBIENT and not workload.meshed_opt_out

    def route_to(self, endpoint: str) -> EndpointRoute | None:
        """HBONE to `endpoint`'s own address on 15008 (its node agent answers with the
        workload's SVID) when the workload is in the mesh; None: plain TCP."""
        host, _, _ = endpoint.rpartition(":")
        workload = self._workload_at(host)
        if workload is None or not self.in_mesh(workload):
            return None
        return EndpointRoute((host, HBONE_PORT), workload.identity(self.trust_domain))
