"""Errors of the HBONE tunnel, each saying what the operator should look at next."""

from __future__ import annotations

from weft.errors import UnavailableError, WeftError


class HboneError(WeftError):
    """Base of every error the HBONE code raises; nothing else escapes its protocol core."""


class StreamClosedError(HboneError):
    """The stream (or its whole connection) is closed; nothing more can be sent on it."""


class StreamResetError(HboneError):
    """The peer or the core reset the stream: the tunnelled TCP connection was aborted."""

    def __init__(self, stream_id: int, error_code: int) -> None:
        super().__init__(f"HBONE stream {stream_id} was reset (HTTP/2 error code {error_code:#x})")
        self.stream_id = stream_id
        self.error_code = error_code


class TunnelRefusedError(HboneError):
    """The peer answered the CONNECT with a status other than 200."""

    HINTS = {
        400: "the CONNECT request was malformed; check the :authority (<ip>:<port>) and headers",
        401: "an AuthorizationPolicy at the destination denied this source identity",
        503: "the destination has no such workload or it did not accept the TCP connection",
    }

    def __init__(self, authority: str, status: int) -> None:
        super().__init__(
            f"HBONE CONNECT to {authority} was answered {status}",
            hint=self.HINTS.get(status, "see the destination agent's access log"),
        )
        self.authority = authority
        self.status = status


class TunnelUnavailableError(HboneError, UnavailableError):
    """No HBONE connection could be made to the peer (TCP, TLS or identity failure)."""
