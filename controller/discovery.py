"""Discovery fan-out: per-node views, snapshot-then-delta updates, ACK/NACK bookkeeping.

No gRPC here: a Watcher is a queue of ready WatchUpdate messages that the gRPC handler drains.
The hub's lock orders everything: the admin service commits a change, updates the catalog and
calls `publish` while holding it, so every watcher sees revisions in store order.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from controller.catalog import Catalog
from controller.scoping import SharedScope, node_scope, shared_scope
from weft.api.convert import update_to_proto
from weft.api.v1 import discovery_pb2
from weft.model import ResourceKey


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
    node: str
    state: AgentState
    updates: queue.Queue[discovery_pb2.WatchUpdate | None] = field(default_factory=queue.Queue)
    view: set[ResourceKey] = field(default_factory=set)

    def next_update(self, timeout: float) -> discovery_pb2.WatchUpdate | None:
        try:
            return self.updates.get(timeout=timeout)
        except queue.Empty:
            return None


class DiscoveryHub:
    def __init__(
        self,
        catalog: Catalog,
        on_nack: Callable[[str, int, str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.catalog = catalog
        self.lock = threading.RLock()
        self._watchers: set[Watcher] = set()
        self._agents: dict[str, AgentState] = {}
        self._shared: SharedScope | None = None
        self._shared_revision = -1
        self._on_nack = on_nack
        self._clock = clock

    def _shared_scope(self) -> SharedScope:
        if self._shared is None or self._shared_revision != self.catalog.revision:
            self._shared = shared_scope(self.catalog)
            self._shared_revision = self.catalog.revision
        return self._shared

    def subscribe(self, node: str) -> Watcher:
        """Register a watcher and queue its snapshot; a reconnect starts over from a snapshot."""
        with self.lock:
            state = self._agents.setdefault(node, AgentState(node))
            state.connected = True
            state.connected_since = self._clock()
            watcher = Watcher(node, state)
            watcher.view = node_scope(self.catalog, self._shared_scope(), node)
            version = self.catalog.revision
            entries = (self.catalog.get(k) for k in sorted(watcher.view))
            upserts = [e.wire for e in entries if e is not None]
            watcher.updates.put(update_to_proto(version, True, upserts, ()))
            state.sent_version = version
            self._watchers.add(watcher)
            return watcher

    def unsubscribe(self, watcher: Watcher) -> None:
        with self.lock:
            self._watchers.discard(watcher)
            if not any(w.node == watcher.node for w in self._watchers):
                watcher.state.connected = False
            watcher.updates.put(None)

    def publish(self, changed: set[ResourceKey]) -> None:
        """Queue each watcher's delta for the catalog's current revision (caller holds the lock)."""
        with self.lock:
            version = self.catalog.revision
            shared = self._shared_scope()
            for watcher in self._watchers:
                view = node_scope(self.catalog, shared, watcher.node)
                removed = watcher.view - view
                upserted = (view - watcher.view) | (changed & view)
                watcher.view = view
                state = watcher.state
                if not removed and not upserted:
                    # Nothing this node sees changed: it is as current as it was.
                    if state.acked_version == state.sent_version:
                        state.acked_version = version
                    state.sent_version = version
                    continue
                entries = (self.catalog.get(k) for k in sorted(upserted))
                wire = [e.wire for e in entries if e is not None]
                watcher.updates.put(update_to_proto(version, False, wire, sorted(removed)))
                state.sent_version = version

    def acknowledge(self, watcher: Watcher, version: int, error: str) -> None:
        with self.lock:
            state = watcher.state
            if error:
                state.nacked_version = version
                state.nack_error = error
                if self._on_nack is not None:
                    self._on_nack(watcher.node, version, error)
            else:
                state.acked_version = max(state.acked_version, version)
                if state.nacked_version and version >= state.nacked_version:
                    # A later version applied cleanly: the NACK is history.
                    state.nacked_version, state.nack_error = 0, ""

    def agents(self) -> list[AgentState]:
        with self.lock:
            return [
                AgentState(**vars(s)) for s in sorted(self._agents.values(), key=lambda s: s.node)
            ]

    def close(self) -> None:
        with self.lock:
            for watcher in list(self._watchers):
                self.unsubscribe(watcher)
