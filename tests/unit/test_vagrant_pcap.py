"""vm/vagrant/pcap.py reads what tcpdump writes and recognises TLS records."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from vm.vagrant.pcap import looks_like_tls, read_segments


def _frame(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x18, 65535, 0, 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0,
        IPv4Address(src).packed, IPv4Address(dst).packed,
    )  # fmt: skip
    return b"\x52\x54\x00\x00\x00\x01" * 2 + b"\x08\x00" + ip + tcp


def _pcap(frames: list[bytes]) -> bytes:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for f in frames:
        out += struct.pack("<IIII", 0, 0, len(f), len(f)) + f
    return out


def test_segments_carry_addresses_ports_and_payload(tmp_path: Path) -> None:
    hello = b"\x16\x03\x01\x00\x05hello"
    path = tmp_path / "c.pcap"
    arp = b"\xff" * 12 + b"\x08\x06" + bytes(28)
    path.write_bytes(_pcap([_frame("10.77.0.11", 40000, "10.77.0.12", 15008, hello), arp]))
    (segment,) = read_segments(path)
    assert (segment.src, segment.sport) == (IPv4Address("10.77.0.11"), 40000)
    assert (segment.dst, segment.dport) == (IPv4Address("10.77.0.12"), 15008)
    assert segment.payload == hello
    assert segment.ports() == {40000, 15008}


def test_tls_records_are_told_from_plaintext() -> None:
    assert looks_like_tls(b"\x17\x03\x03\x00\x20" + bytes(32))
    assert looks_like_tls(b"\x16\x03\x01\x02\x00")
    assert not looks_like_tls(b"GET / HTTP/1.1\r\n")
    assert not looks_like_tls(b"WEFT-VM-MARKER-0011")
    assert not looks_like_tls(b"\x17\x03")


def test_a_file_that_is_not_a_pcap_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.pcap"
    path.write_bytes(b"not a capture at all, really")
    with pytest.raises(ValueError, match="not a pcap file"):
        read_segments(path)
