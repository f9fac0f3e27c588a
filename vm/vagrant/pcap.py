"""Reads a classic pcap file of Ethernet/IPv4/TCP frames into (src, dst, payload) segments."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

_MAGICS = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">", b"\x4d\x3c\xb2\xa1": "<",
           b"\xa1\xb2\x3c\x4d": ">"}  # fmt: skip
ETH_IPV4 = 0x0800
PROTO_TCP = 6
TLS_CONTENT_TYPES = {0x14, 0x15, 0x16, 0x17}  # change_cipher_spec, alert, handshake, data


@dataclass(frozen=True)
class Segment:
    src: IPv4Address
    sport: int
    dst: IPv4Address
    dport: int
    payload: bytes

    def ports(self) -> set[int]:
        return {self.sport, self.dport}


def read_segments(path: Path) -> list[Segment]:
    data = path.read_bytes()
    if len(data) < 24 or data[:4] not in _MAGICS:
        raise ValueError(f"{path}: not a pcap file")
    order = _MAGICS[data[:4]]
    (linktype,) = struct.unpack(order + "I", data[20:24])
    if linktype != 1:
        raise ValueError(f"{path}: link type {linktype}, expected Ethernet (1)")
    segments = []
    offset = 24
    while offset + 16 <= len(data):
        _, _, caplen, _ = struct.unpack(order + "IIII", data[offset : offset + 16])
        frame = data[offset + 16 : offset + 16 + caplen]
        offset += 16 + caplen
        segment = _tcp_segment(frame)
        if segment is not None:
            segments.append(segment)
    return segments


def _tcp_segment(frame: bytes) -> Segment | None:
    if len(frame) < 14 + 20 or struct.unpack("!H", frame[12:14])[0] != ETH_IPV4:
        return None
    ip = frame[14:]
    ihl = (ip[0] & 0x0F) * 4
    total = struct.unpack("!H", ip[2:4])[0]
    if ip[9] != PROTO_TCP or len(ip) < ihl + 20:
        return None
    tcp = ip[ihl:total]
    data_offset = (tcp[12] >> 4) * 4
    sport, dport = struct.unpack("!HH", tcp[:4])
    return Segment(
        IPv4Address(ip[12:16]), sport, IPv4Address(ip[16:20]), dport, bytes(tcp[data_offset:])
    )


def looks_like_tls(payload: bytes) -> bool:
    """A TLS record header: content type, version 3.x, a length that fits a record."""
    if len(payload) < 5 or payload[0] not in TLS_CONTENT_TYPES or payload[1] != 3:
        return False
    length: int = struct.unpack("!H", payload[3:5])[0]
    return length <= (1 << 14) + 2048
