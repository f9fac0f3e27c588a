"""A CONNECT request's HEADERS frame, HPACK-encoded once per (authority, headers) and reused;
the server's 200 answer as one constant frame.

A source agent sends the same few CONNECT requests over and over (one per application
connection to a destination); h2's send_headers() validated and HPACK-encoded each one, a
tenth of the agent's CPU per new connection. The block here is encoded without the dynamic
table (literal header fields without indexing, names from the static table where it has
them), so the same bytes are valid on any connection at any time and can be cached. The
stream's state machines still run in h2, as send_headers() runs them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import h2.connection
import h2.exceptions
import h2.stream
import h2.utilities
from hpack.hpack import encode_integer

# RFC 7541 appendix A: static-table indexes of the names a CONNECT uses.
_STATIC_NAME = {":authority": 1, ":method": 2}
_HEADERS_FRAME = 0x1
_END_HEADERS = 0x4
_FIELD_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
_CACHE_LIMIT = 1024

_blocks: dict[tuple[str, tuple[tuple[str, str], ...]], bytes] = {}


def header_block(authority: str, headers: tuple[tuple[str, str], ...]) -> bytes:
    """The HPACK block of `CONNECT authority` with `headers` (remembered).

    ValueError for a header h2 would refuse to send: an uppercase or empty name, a
    connection-specific or pseudo-header, a value with CR, LF or NUL.
    """
    key = (authority, headers)
    block = _blocks.get(key)
    if block is None:
        block = _encode([(":method", "CONNECT"), (":authority", authority), *headers])
        if len(_blocks) >= _CACHE_LIMIT:
            _blocks.clear()
        _blocks[key] = block
    return block


def send_connect(
    connection: h2.connection.H2Connection,
    stream_id: int,
    authority: str,
    headers: tuple[tuple[str, str], ...],
) -> None:
    """What connection.send_headers(stream_id, CONNECT headers) does, with a cached block."""
    block = header_block(authority, headers)
    if len(block) > connection.max_outbound_frame_size:
        # Too long for one frame (needs CONTINUATION): h2 knows how.
        connection.send_headers(
            stream_id, [(":method", "CONNECT"), (":authority", authority), *headers]
        )
        return
    streams = connection.streams
    limit = connection.remote_settings.max_concurrent_streams
    # h2 counts open streams by walking them all; len() bounds that count from above.
    if (
        stream_id not in streams
        and len(streams) >= limit
        and connection.open_outbound_streams + 1 > limit
    ):
        raise h2.exceptions.TooManyStreamsError(f"Max outbound streams is {limit}")
    connection.state_machine.process_input(h2.connection.ConnectionInputs.SEND_HEADERS)
    stream = connection._get_or_create_stream(
        stream_id, h2.connection.AllowedStreamIDs(connection.config.client_side)
    )
    stream.state_machine.process_input(h2.stream.StreamInputs.SEND_HEADERS)
    stream._authority = authority.encode("ascii")
    stream.request_method = b"CONNECT"
    frame_header = (
        len(block).to_bytes(3, "big")
        + bytes((_HEADERS_FRAME, _END_HEADERS))
        + stream_id.to_bytes(4, "big")
    )
    connection._data_to_send += frame_header + block


# `:status: 200` is entry 8 of HPACK's static table: the whole block is one byte.
_STATUS_200 = b"\x88"


def send_ok(connection: h2.connection.H2Connection, stream_id: int) -> None:
    """What connection.send_headers(stream_id, [(":status", "200")]) does, without encoding."""
    stream = connection.streams.get(stream_id)
    if stream is None:  # closed and forgotten: h2 raises what it raises for that
        connection.send_headers(stream_id, [(b":status", b"200")])
        return
    connection.state_machine.process_input(h2.connection.ConnectionInputs.SEND_HEADERS)
    stream.state_machine.process_input(h2.stream.StreamInputs.SEND_HEADERS)
    connection._data_to_send += (
        b"\x00\x00\x01" + bytes((_HEADERS_FRAME, _END_HEADERS)) + stream_id.to_bytes(4, "big")
    ) + _STATUS_200


def _encode(fields: Iterable[tuple[str, str]]) -> bytes:
    out = bytearray()
    for name, value in fields:
        if not name.startswith(":") and (
            not _FIELD_NAME.fullmatch(name) or name.encode() in h2.utilities.CONNECTION_HEADERS
        ):
            raise ValueError(f"header name {name!r} cannot be sent in HTTP/2")
        if not _FIELD_VALUE.fullmatch(value):
            raise ValueError(f"header {name!r} has a value with forbidden characters")
        index = _STATIC_NAME.get(name)
        if index is not None:  # literal without indexing, indexed name (RFC 7541 6.2.2)
            out += encode_integer(index, 4)
        else:  # literal without indexing, new name
            out.append(0)
            out += _string(name.encode("ascii"))
        out += _string(value.encode("latin-1"))
    return bytes(out)


def _string(raw: bytes) -> bytes:
    """An HPACK string literal without Huffman coding (RFC 7541 5.2)."""
    return bytes(encode_integer(len(raw), 7)) + raw
