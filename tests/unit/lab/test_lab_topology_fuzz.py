"""vm.lab.topology under hypothesis: any change to a valid document parses or names a field."""

from __future__ import annotations

import copy
from typing import Any

import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from vm.lab.topology import DEFAULT_TOPOLOGY, parse_topology
from weft.errors import ConfigError

DOCUMENT: dict[str, Any] = yaml.safe_load(DEFAULT_TOPOLOGY.read_text())

ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 70000),
    st.text(max_size=20),
    st.sampled_from(["10.77.0.300", "10.88.1.0/24", "10.96.0.99", "node1", "control", "{python}"]),
    st.lists(st.integers(0, 9), max_size=3),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
)


def paths(node: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += paths(value, (*prefix, index))
    return found


ALL_PATHS = paths(DOCUMENT)


@settings(max_examples=300, deadline=None)
@example([(("demo", "traffic", "workload"), [1])])
@example([(("nodes", 1, "name"), {"a": "b"})])
@given(st.lists(st.tuples(st.sampled_from(ALL_PATHS), ANY_VALUE), min_size=1, max_size=3))
def test_any_edit_either_parses_or_raises_a_config_error_naming_a_field(
    edits: list[tuple[tuple[object, ...], object]],
):
    document = copy.deepcopy(DOCUMENT)
    for path, value in edits:
        target: Any = document
        try:
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit replaced a parent of this path
    error: ConfigError | None = None
    try:
        parse_topology(document, "fuzz.yaml")
    except ConfigError as raised:
        error = raised
    if error is not None:
        assert str(error).startswith("fuzz.yaml: field '")
        assert error.field
