"""The controller's in-memory view of the store: resources by key with the indexes scoping needs.

Loaded from the store at start and updated after each committed change, under the writer lock
of the admin service, so it always equals some store revision. Each entry keeps its wire form,
built once, so a snapshot for a node is a list of ready messages.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from controller.store import Store
from weft.api.convert import resource_to_proto
from weft.api.v1 import resources_pb2
from weft.model import Kind, Resource, ResourceKey, Workload
from weft.resources import ParsedResource, parse_stored


@dataclass(frozen=True)
class Entry:
    key: ResourceKey
    resource: Resource
    revision: int
    wire: resources_pb2.Resource


class Catalog:
    """Current resources and indexes: by kind, workloads by node, workloads by namespace."""

    def __init__(self) -> None:
        self.revision = 0
        self._entries: dict[ResourceKey, Entry] = {}
        self._by_kind: dict[Kind, dict[ResourceKey, Entry]] = defaultdict(dict)
        self._workloads_by_node: dict[str, set[ResourceKey]] = defaultdict(set)
        self._workloads_by_namespace: dict[str, set[ResourceKey]] = defaultdict(set)
        # (namespace, label, value) -> workloads: selectors become set intersections.
        self._workloads_by_label: dict[tuple[str, str, str], set[ResourceKey]] = defaultdict(set)

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
        return self._entries.get(key)

    def of_kind(self, kind: Kind) -> Iterable[Entry]:
        return self._by_kind[kind].values()

    def workloads(self) -> Iterator[Workload]:
        for entry in self._by_kind[Kind.WORKLOAD].values():
            assert isinstance(entry.resource, Workload)
            yield entry.resource

    def workload_keys_on(self, node: str) -> set[ResourceKey]:
        return self._workloads_by_node.get(node, set())

    def workload_keys_in(self, namespace: str) -> set[ResourceKey]:
        return self._workloads_by_namespace.get(namespace, set())

    def workload_keys_matching(
        self, namespace: str, selector: Mapping[str, str]
    ) -> set[ResourceKey]:
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
        for key in self.workload_keys_on(node):
            resource = self._entries[key].resource
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
            entry = self._entries.pop(key, None)
            if entry is None:
                continue
            del self._by_kind[key.kind][key]
            if isinstance(entry.resource, Workload):
                self._workloads_by_node[entry.resource.node].discard(key)
                self._workloads_by_namespace[key.namespace].discard(key)
                for label in entry.resource.selector_labels.items():
                    self._workloads_by_label[(key.namespace, *label)].discard(key)
        self.revision = max(self.revision, revision)

    def _put(self, item: ParsedResource, revision: int, document: object) -> None:
        self.delete([item.key], self.revision)
        assert isinstance(document, dict)
        entry = Entry(
            item.key, item.resource, revision, resource_to_proto(item.key, document, revision)
        )
        self._entries[item.key] = entry
        self._by_kind[item.key.kind][item.key] = entry
        if isinstance(item.resource, Workload):
            self._workloads_by_node[item.resource.node].add(item.key)
            self._workloads_by_namespace[item.key.namespace].add(item.key)
            for label in item.resource.selector_labels.items():
                self._workloads_by_label[(item.key.namespace, *label)].add(item.key)
