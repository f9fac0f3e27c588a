"""The program table, the C sources and the map mirrors agree with each other (no root needed)."""

from __future__ import annotations

import ctypes
import re
import socket
from ipaddress import IPv4Address

import pytest

from agent.bpf.loader import EBPF_DIR, Loader
from agent.bpf.maps import MAP_LAYOUTS, EnrollmentC, OrigC, TupleC, _be32_to_addr, _orig_from_c
from agent.bpf.programs import NODE, ProgramSpec
from weft.errors import UsageError

HEADER = (EBPF_DIR / "include" / "weft_maps.h").read_text()


def declared_maps() -> set[str]:
    """Map names declared in weft_maps.h (BPF_TABLE_PINNED and WEFT_SOCKHASH_PINNED)."""
    tables = re.findall(r"BPF_TABLE_PINNED\(\"[a-z_]+\",[^,]+,[^,]+,\s*(\w+),", HEADER)
    sockhashes = re.findall(r"^WEFT_SOCKHASH_PINNED\((\w+),", HEADER, re.MULTILINE)
    return set(tables) | set(sockhashes)


def test_every_map_in_the_header_has_a_mirror_and_a_valid_name() -> None:
    assert declared_maps() == set(MAP_LAYOUTS)
    for name in MAP_LAYOUTS:
        assert name.startswith("weft_")
        assert len(name) <= 15  # BPF_OBJ_NAME_LEN - 1


@pytest.mark.parametrize("spec", NODE, ids=lambda s: s.function)
def test_every_program_is_an_entry_function_of_its_source(spec: ProgramSpec) -> None:
    source = (EBPF_DIR / spec.source).read_text()
    assert re.search(rf"^int {spec.function}\(", source, re.MULTILINE)
    assert spec.function.startswith("weft_")


def test_mirrors_have_the_c_layouts_written_in_their_docstrings() -> None:
    assert ctypes.sizeof(EnrollmentC) == 8
    assert ctypes.sizeof(OrigC) == 16
    assert OrigC.cgroup_id.offset == 8
    assert ctypes.sizeof(TupleC) == 12


def test_network_order_fields_decode_to_addresses_and_ports() -> None:
    raw = OrigC(
        addr=int.from_bytes(socket.inet_aton("10.1.2.3"), "little"),
        port=int.from_bytes((8080).to_bytes(2, "big"), "little"),
        cgroup_id=7,
    )
    orig = _orig_from_c(raw)
    assert (orig.addr, orig.port, orig.cgroup_id) == (IPv4Address("10.1.2.3"), 8080, 7)
    assert _be32_to_addr(raw.addr) == IPv4Address("10.1.2.3")


def test_every_value_the_c_requires_is_passed_as_a_cflag() -> None:
    loader = Loader("node-a", outbound_port=15001)
    flags = loader.cflags()
    assert '-DWEFT_PIN_DIR="/sys/fs/bpf/weft/node-a/maps"' in flags
    assert "-DWEFT_OUTBOUND_PORT=15001" in flags
    required = set(re.findall(r"#ifndef (WEFT_\w+)\n#error", HEADER))
    for source in EBPF_DIR.glob("weft_*.c"):
        required |= set(re.findall(r"#ifndef (WEFT_\w+)\n#error", source.read_text()))
    assert required == {"WEFT_PIN_DIR", "WEFT_OUTBOUND_PORT"}
    for name in required:
        assert any(f.startswith(f"-D{name}=") for f in flags)


@pytest.mark.parametrize("scope", ["", "Node", "../etc", "a/b", "x" * 64])
def test_scope_names_that_are_not_a_safe_bpffs_directory_are_refused(scope: str) -> None:
    with pytest.raises(UsageError, match="invalid eBPF scope name"):
        Loader(scope)
