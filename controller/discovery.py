"""Discovery fan-out: per-node views, snapshot-then-delta updates, ACK/NACK bookkeeping.

No gRPC here: a Watcher is a queue of encoded WatchUpdate messages that the gRPC handler sends
as they are (an update is a header plus each resource's pre-encoded `upserts` field).
The hub's lock orders everything: the admin service commits a change, updates the catalog and
calls `publish` while holding it, so every watcher sees revisions in store order.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from controller.catalog import Catalog, key_of_id, resource_id
from controller.scoping import (
    changes_local_scopes,
    local_scope,
    shared_scope,
    updated_shared_scope,
    waypoint_scope,
)
from weft.api.convert import update_to_proto
from weft.model import ResourceKey, Workload


@dataclass
class AgentState:
    """What `weft status` shows for one node's agent."""

    node: str
    connected: bool = False
    connected_since: float = 0.0
    sent_version: int = 0
    acked_version: int = 0
    nacked_version: int = 0
    nack_error: str = ""


@dataclass(eq=False)
class Watcher:
    """One open stream. Its view is the shared scope plus `local`; updates are encoded bytes."""

    node: str
    state: AgentState
    updates: queue.Queue[bytes | None] = field(default_factory=queue.Queue)
    local: set[str] = field(default_factory=set)
    waypoint: tuple[str, str] | None = None  # (namespace, name) when a waypoint is watching


def _header(version: int, snapshot: bool) -> bytes:
    return update_to_proto(version, snapshot, (), ()).SerializeToString()


class DiscoveryHub:
    def __init__(self, catalog: Catalog, clock: Callable[[], float] = time.time) -> None:
        self.catalog = catalog
        self.lock = threading.RLock()
        self._watchers: set[Watcher] = set()
        self._agents: dict[str, AgentState] = {}
        self._shared = shared_scope(catalog)
        self._clock = clock

    def subscribe(self, node: str, waypoint: tuple[str, str] | None = None) -> Watcher:
        """Register a watcher and queue its snapshot; a reconnect starts over from a snapshot.

        A waypoint watches under the name `node` with `waypoint` = its (namespace, name)."""
        with self.lock:
            state = self._agents.setdefault(node, AgentState(node))
            state.connected = True
            state.connected_since = self._clock()
            watcher = Watcher(node, state, waypoint=waypoint)
            watcher.local = self._local_scope(watcher)
            version = self.catalog.revision
            view = self._shared.everyone | watcher.local
            watcher.updates.put(self._encode(version, True, view, ()))
            state.sent_version = version
            self._watchers.add(watcher)
            return watcher

    def _encode(
        self, version: int, snapshot: bool, upserts: Iterable[str], removals: Iterable[str]
    ) -> bytes:
        parts = [_header(version, snapshot)]
        for rid in sorted(upserts):
            entry = self.catalog.by_id(rid)
            if entry is not None:
                parts.append(entry.upsert_bytes)
        removed = [key_of_id(rid) for rid in sorted(removals)]
        if removed:
            parts.append(update_to_proto(0, False, (), removed).SerializeToString())
        return b"".join(parts)

    def unsubscribe(self, watcher: Watcher) -> None:
        with self.lock:
            self._watchers.discard(watcher)
            if not any(w.node == watcher.node for w in self._watchers):
                watcher.state.connected = False
            watcher.updates.put(None)

    def publish(self, changed: set[ResourceKey]) -> None:
        """Queue each watcher's delta for the catalog's current revision.

        The shared scope is diffed once; per node only its local part is recomputed, so the
        cost per watcher is proportional to its own workloads, not to the mesh.
        """
        with self.lock:
            version = self.catalog.revision
            changed_ids = {resource_id(k) for k in changed}
            old = self._shared
            new = updated_shared_scope(self.catalog, old, changed_ids)
            self._shared = new
            shared_added = new.everyone - old.everyone
            shared_removed = old.everyone - new.everyone
            everyone_local = changes_local_scopes(changed_ids)
            workload_nodes = {
                e.resource.node
                for e in map(self.catalog.by_id, changed_ids)
                if e is not None and isinstance(e.resource, Workload)
            }
            for watcher in self._watchers:
                old_local = watcher.local
                if (
                    everyone_local
                    or watcher.node in workload_nodes
                    or not changed_ids.isdisjoint(old_local)
                ):
                    watcher.local = self._local_scope(watcher)
                local = watcher.local
                removed = {
                    r
                    for r in shared_removed | (old_local - local)
                    if r not in new.everyone and r not in local
                }
                added = {
                    r
                    for r in shared_added | (local - old_local)
                    if r not in old.everyone and r not in old_local
                }
                added |= {r for r in changed_ids if r in new.everyone or r in local}
                state = watcher.state
                if not removed and not added:
                    # Nothing this node sees changed: it is as current as it was.
                    if state.acked_version == state.sent_version:
                        state.acked_version = version
                    state.sent_version = version
                    continue
                watcher.updates.put(self._encode(version, False, added, removed))
                state.sent_version = version

    def _local_scope(self, watcher: Watcher) -> set[str]:
        if watcher.waypoint is not None:
            return waypoint_scope(self.catalog, self._shared, watcher.waypoint[0])
        return local_scope(self.catalog, self._shared, watcher.node)

    def acknowledge(self, watcher: Watcher, version: int, error: str) -> None:
        with self.lock:
            state = watcher.state
            if error:
                state.nacked_version = version
                state.nack_error = error
            else:
                state.acked_version = max(state.acked_version, version)
                if state.nacked_version and version >= state.nacked_version:
                    # A later version applied cleanly: the NACK is history.
                    state.nacked_version, state.nack_error = 0, ""

    def agents(self) -> list[AgentState]:
        with self.lock:
            states = sorted(self._agents.values(), key=lambda s: s.node)
            return [AgentState(**vars(s)) for s in states]

    def close(self) -> None:
        with self.lock:
            for watcher in list(self._watchers):
                self.unsubscribe(watcher)
