"""The ctypes mirrors of agent/bpf/maps.py have the sizes and field offsets bcc compiled from
ebpf/include/weft_maps.h, and every program file compiles and loads."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any

import pytest

from agent.bpf import libbpf
from agent.bpf.loader import Loader
from agent.bpf.maps import MAP_LAYOUTS
from agent.bpf.programs import NODE

# bcc's Table() cannot wrap a sockhash: checked via the kernel
SOCKHASH_MAPS = {"weft_splice", "weft_msg_sk"}


def layout(ctype: Any) -> tuple[int, list[tuple[str, int, int]]]:
    """(size, [(field, offset, size)]) of a ctypes type; scalars have no fields."""
    fields = [
        (name, getattr(ctype, name).offset, getattr(ctype, name).size)
        for name, *_ in getattr(ctype, "_fields_", ())
        if not name.startswith("__pad")
    ]
    return ctypes.sizeof(ctype), fields


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = Path("/sys/fs/bpf") / f"wkt-{os.getpid()}-layouts"
    root.mkdir()
    loader = Loader("layouts", pin_root=root)
    bpf = loader.compile("weft_connect.c")  # the header declares every map in every file
    try:
        yield loader, bpf
    finally:
        bpf.cleanup()
        loader.remove()
        root.rmdir()


def test_every_pinned_map_has_a_mirror_and_every_mirror_a_map(compiled: Any) -> None:
    loader, _ = compiled
    assert sorted(p.name for p in loader.maps_dir.iterdir()) == sorted(MAP_LAYOUTS)


@pytest.mark.parametrize("name", sorted(set(MAP_LAYOUTS) - SOCKHASH_MAPS))
def test_mirror_matches_bcc_layout(compiled: Any, name: str) -> None:
    _, bpf = compiled
    table = bpf[name.encode()]
    key_mirror, value_mirror = MAP_LAYOUTS[name]
    assert layout(key_mirror) == layout(table.Key)
    assert layout(value_mirror) == layout(table.Leaf)


@pytest.mark.parametrize("name", sorted(MAP_LAYOUTS))
def test_mirror_sizes_match_the_kernel_map(compiled: Any, name: str) -> None:
    loader, _ = compiled
    key_mirror, value_mirror = MAP_LAYOUTS[name]
    fd = libbpf.obj_get(str(loader.maps_dir / name))
    try:
        info = libbpf.map_info(fd)
    finally:
        os.close(fd)
    assert (info.key_size, info.value_size) == (
        ctypes.sizeof(key_mirror),
        ctypes.sizeof(value_mirror),
    )
    assert len(name) <= 15
    assert name.startswith("weft_")


def test_every_program_compiles_and_loads(compiled: Any) -> None:
    loader, _ = compiled
    sources: dict[str, Any] = {}
    try:
        for spec in NODE:
            if spec.source not in sources:
                sources[spec.source] = loader.compile(spec.source)
            assert loader.load_program(sources[spec.source], spec) >= 0
    finally:
        for bpf in sources.values():
            bpf.cleanup()
