"""The controller's in-memory view of the store: resources by key with the indexes scoping needs.

Loaded from the store at start and updated after each committed change, under the hub's lock,
so it always equals some store revision. Internally a resource is named by its string id
("Kind/namespace/name"): scoping does set arithmetic over tens of thousands of them per change,
and strings hash and compare in C. Each entry keeps its wire form, encoded once, so a node's
snapshot is a concatenation of ready bytes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from controller.conflicts import AddressClaim, address_claim
from controller.store import Store
from weft.api.convert import resource_to_proto, update_to_proto
from weft.api.v1 import resources_pb2
from weft.model import Kind, Resource, ResourceKey, Service, Workload
from weft.resources import ParsedResource, parse_stored


def resource_id(key: ResourceKey) -> str:
    return str(key)


def key_of_id(rid: str) -> ResourceKey:
    kind, _, rest = rid.partition("/")
    namespace, _, name = rest.rpartition("/")
    return ResourceKey(Kind(kind), namespace, name)


@dataclass(frozen=True)
class Entry:
    id: str
    key: ResourceKey
    resource: Resource
    revision: int
    wire: resources_pb2.Resource
    # This resource as the `upserts` field of a WatchUpdate: updates are concatenations.
    upsert_bytes: bytes


class Catalog:
    """Current resources and indexes: by kind, workloads by node, namespace and label."""

    def __init__(self) -> None:
        self.revision = 0
        self._entries: dict[str, Entry] = {}
        self._by_kind: dict[Kind, dict[str, Entry]] = defaultdict(dict)
        self._workloads_by_node: dict[str, set[str]] = defaultdict(set)
        self._workloads_by_namespace: dict[str, set[str]] = defaultdict(set)
        # (namespace, label, value) -> workload ids: selectors become set intersections.
        self._workloads_by_label: dict[tuple[str, str, str], set[str]] = defaultdict(set)
        self._services_by_namespace: dict[str, dict[str, Service]] = defaultdict(dict)
        self._address_owners: dict[AddressClaim, ResourceKey] = {}

    @classmethod
    def load(cls, store: Store) -> Catalog:
        catalog = cls()
        for stored in store.resources():
            catalog._put(parse_stored(stored.document), stored.revision, stored.document)
        catalog.revision = store.revision()
        return catalog

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: ResourceKey) -> Entry | None:
        return self._entries.get(resource_id(key))

    def by_id(self, rid: str) -> Entry | None:
        return self._entries.get(rid)

    def of_kind(self, kind: Kind) -> Iterable[Entry]:
        return self._by_kind[kind].values()

    def workloads(self) -> Iterator[Workload]:
        for entry in self._by_kind[Kind.WORKLOAD].values():
            assert isinstance(entry.resource, Workload)
            yield entry.resource

    def address_owner(self, claim: AddressClaim) -> ResourceKey | None:
        return self._address_owners.get(claim)

    def services_in(self, namespace: str) -> Iterable[Service]:
        return self._services_by_namespace.get(namespace, {}).values()

    def workload_ids_on(self, node: str) -> set[str]:
        return self._workloads_by_node.get(node, set())

    def workload_ids_matching(self, namespace: str, selector: Mapping[str, str]) -> set[str]:
        """Workloads of `namespace` whose labels include all of `selector` (empty: none)."""
        sets = sorted(
            (self._workloads_by_label.get((namespace, k, v), set()) for k, v in selector.items()),
            key=len,
        )
        if not sets:
            return set()
        return set(sets[0]).intersection(*sets[1:])

    def workloads_on(self, node: str) -> list[Workload]:
        out = []
        for rid in self.workload_ids_on(node):
            resource = self._entries[rid].resource
            assert isinstance(resource, Workload)
            out.append(resource)
        return out

    def counts(self) -> dict[Kind, int]:
        return {kind: len(self._by_kind[kind]) for kind in Kind}

    # --- updates -------------------------------------------------------------------------------

    def apply(
        self, batch: Iterable[ParsedResource], changed: set[ResourceKey], revision: int
    ) -> None:
        for item in batch:
            if item.key in changed:
                self._put(item, revision, item.document)
        self.revision = max(self.revision, revision)

    def delete(self, keys: Iterable[ResourceKey], revision: int) -> None:
        for key in keys:
            self._remove(resource_id(key))
        self.revision = max(self.revision, revision)

    def _remove(self, rid: str) -> None:
        entry = self._entries.pop(rid, None)
        if entry is None:
            return
        del self._by_kind[entry.key.kind][rid]
        claim = address_claim(entry.resource)
        if claim is not None and self._address_owners.get(claim) == entry.key:
            del self._address_owners[claim]
        if isinstance(entry.resource, Service):
            self._services_by_namespace[entry.key.namespace].pop(rid, None)
        if isinstance(entry.resource, Workload):
            namespace = entry.key.namespace
            self._workloads_by_node[entry.resource.node].discard(rid)
            self._workloads_by_namespace[namespace].discard(rid)
            for label, value in entry.resource.selector_labels.items():
                self._workloads_by_label[(namespace, label, value)].discard(rid)

    def _put(self, item: ParsedResource, revision: int, document: Mapping[str, object]) -> None:
        rid = resource_id(item.key)
        self._remove(rid)
        wire = resource_to_proto(item.key, document, revision)
        upsert = update_to_proto(0, False, [wire], ()).SerializeToString()
        entry = Entry(rid, item.key, item.resource, revision, wire, upsert)
        self._entries[rid] = entry
        self._by_kind[item.key.kind][rid] = entry
        claim = address_claim(item.resource)
        if claim is not None:
            self._address_owners[claim] = item.key
        if isinstance(item.resource, Service):
            self._services_by_namespace[item.key.namespace][rid] = item.resource
        if isinstance(item.resource, Workload):
            namespace = item.key.namespace
            self._workloads_by_node[item.resource.node].add(rid)
            self._workloads_by_namespace[namespace].add(rid)
            for label, value in item.resource.selector_labels.items():
                self._workloads_by_label[(namespace, label, value)].add(rid)
