"""Validation of an HBONE CONNECT request's header block: what makes it a 400."""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass

from weft.hbone.errors import HboneError

# RFC 9113 section 8.2.2: connection-specific fields are malformed in HTTP/2.
_CONNECTION_SPECIFIC = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"}
)
# RFC 9110 token characters, lowercase only (RFC 9113 section 8.2.1).
_FIELD_NAME = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9a-z]+$")
# Field values: visible ASCII, space, tab and obs-text; never CR, LF or NUL (RFC 9113 8.2.1).
_FIELD_VALUE = re.compile(rb"^[\t\x20-\x7e\x80-\xff]*$")
_REQUEST_PSEUDO = frozenset({b":method", b":authority", b":scheme", b":path", b":protocol"})


class MalformedRequestError(HboneError, ValueError):
    """The CONNECT request is malformed; the message says why (sent back with the 400)."""


@dataclass(frozen=True)
class ConnectRequest:
    """A validated CONNECT: the target `<ip>:<port>` and the ordinary (non-pseudo) headers."""

    authority: str
    headers: tuple[tuple[str, str], ...]


def parse_authority(authority: str) -> tuple[str, int]:
    """Split `<ipv4>:<port>` or `[<ipv6>]:<port>` into (ip, port); MalformedRequestError else."""
    host, separator, port_text = authority.rpartition(":")
    if not separator or not port_text.isascii() or not port_text.isdigit():
        raise MalformedRequestError(f":authority {authority!r} is not <ip>:<port>")
    port = int(port_text)
    if not 0 < port < 65536 or port_text != str(port):
        raise MalformedRequestError(f":authority {authority!r} has port out of range 1..65535")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        address = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        raise MalformedRequestError(
            f":authority {authority!r} does not name an IP address (HBONE targets are IP:port)"
        ) from None
    if (address.version == 6) != bracketed:
        raise MalformedRequestError(f":authority {authority!r}: IPv6 must be in [brackets]")
    return str(address), port


def validate_connect(headers: list[tuple[bytes, bytes]]) -> ConnectRequest:
    """The CONNECT request in `headers` (as decoded by HPACK); MalformedRequestError if bad."""
    pseudo: dict[bytes, bytes] = {}
    ordinary: list[tuple[str, str]] = []
    for name, value in headers:
        if name.startswith(b":"):
            if ordinary:
                raise MalformedRequestError("a pseudo-header follows an ordinary header")
            if name not in _REQUEST_PSEUDO:
                raise MalformedRequestError(f"unknown pseudo-header {name!r}")
            if name in pseudo:
                raise MalformedRequestError(f"pseudo-header {name!r} appears twice")
            pseudo[name] = value
            continue
        _check_field(name, value)
        ordinary.append((name.decode("ascii"), value.decode("latin-1")))
    method = pseudo.get(b":method")
    if method != b"CONNECT":
        raise MalformedRequestError(f"method {method!r} is not CONNECT (HBONE only tunnels)")
    if b":protocol" in pseudo:
        raise MalformedRequestError("extended CONNECT (:protocol) is not HBONE")
    # RFC 9113 section 8.5: a plain CONNECT omits :scheme and :path.
    for forbidden in (b":scheme", b":path"):
        if forbidden in pseudo:
            raise MalformedRequestError(f"CONNECT must not carry {forbidden.decode()}")
    authority_bytes = pseudo.get(b":authority")
    if authority_bytes is None:
        raise MalformedRequestError("CONNECT has no :authority")
    try:
        authority = authority_bytes.decode("ascii")
    except UnicodeDecodeError:
        raise MalformedRequestError(":authority is not ASCII") from None
    parse_authority(authority)
    return ConnectRequest(authority, tuple(ordinary))


@functools.lru_cache(maxsize=256)
def validate_connect_fields(fields: tuple[tuple[bytes, bytes], ...]) -> ConnectRequest:
    """validate_connect() remembered: a source agent sends the same few header lists again and
    again. A bounded cache (a list is at most 16 KiB: at most 4 MiB are held); a malformed
    list raises every time."""
    return validate_connect(list(fields))


def _check_field(name: bytes, value: bytes) -> None:
    if not _FIELD_NAME.match(name):
        raise MalformedRequestError(f"header name {name!r} is not a lowercase token")
    if name.decode("ascii") in _CONNECTION_SPECIFIC:
        raise MalformedRequestError(f"connection-specific header {name!r} is not allowed")
    if name == b"te" and value != b"trailers":
        raise MalformedRequestError("header 'te' may only be 'trailers'")
    if not _FIELD_VALUE.match(value) or value[:1] in (b" ", b"\t") or value[-1:] in (b" ", b"\t"):
        raise MalformedRequestError(f"header {name!r} has a value with forbidden characters")
