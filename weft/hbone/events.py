"""Events the HBONE protocol core reports, one frozen dataclass per thing that happened."""

from __future__ import annotations

from dataclasses import dataclass

# HTTP/2 error codes (RFC 9113 section 7) that HBONE uses by name.
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
CONNECT_ERROR = 0xA  # the TCP connection behind a CONNECT stream was reset or failed
ENHANCE_YOUR_CALM = 0xB


@dataclass(frozen=True)
class TunnelRequested:
    """Server: a well-formed CONNECT arrived; answer it with accept() or reject()."""

    stream_id: int
    authority: str
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class TunnelRejected:
    """Server: the core itself answered a malformed CONNECT (400) or one over the stream limit."""

    stream_id: int
    status: int
    reason: str


@dataclass(frozen=True)
class TunnelEstablished:
    """Client: the peer answered 200; bytes may flow both ways."""

    stream_id: int


@dataclass(frozen=True)
class TunnelRefused:
    """Client: the peer answered with a status other than 200 (401, 503, 400, ...)."""

    stream_id: int
    status: int


@dataclass(frozen=True)
class DataReceived:
    """Tunnelled bytes arrived; acknowledge(stream_id, flow_controlled_length) once consumed."""

    stream_id: int
    data: bytes
    flow_controlled_length: int


@dataclass(frozen=True)
class StreamEnded:
    """The peer half-closed the stream (END_STREAM): the TCP equivalent is a FIN."""

    stream_id: int


@dataclass(frozen=True)
class StreamReset:
    """The stream was reset (RST_STREAM), by the peer or by the core: the TCP equivalent is RST."""

    stream_id: int
    error_code: int
    remote: bool


@dataclass(frozen=True)
class WindowOpened:
    """The peer gave back send window; stream_id 0 means the whole connection."""

    stream_id: int


@dataclass(frozen=True)
class ConnectionClosed:
    """The connection is over: GOAWAY received, or a protocol error made the core send one."""

    error_code: int
    last_stream_id: int
    reason: str
    remote: bool


Event = (
    TunnelRequested
    | TunnelRejected
    | TunnelEstablished
    | TunnelRefused
    | DataReceived
    | StreamEnded
    | StreamReset
    | WindowOpened
    | ConnectionClosed
)
