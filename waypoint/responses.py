"""Replies the waypoint makes itself, worded as Envoy words them so operators recognise them.

Every local reply carries `x-weft-reason` (a stable snake_case cause, also written to the access
log as the response flag), so a client-side trace tells apart the backend's own 503 from the
waypoint's "no healthy upstream" or "circuit open" without reading waypoint logs.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus

from waypoint.authz import DENIED_BODY
from waypoint.http1 import Http1Error, serialize_response_head
from waypoint.resilience import Failure

Headers = tuple[tuple[str, str], ...]
REASON_HEADER = "x-weft-reason"


@dataclass(frozen=True)
class LocalReply:
    """A complete response the waypoint sends without asking a backend."""

    status: int
    reason: str  # the x-weft-reason value
    body: bytes = b""
    headers: Headers = ()

    def header_list(self, keep_alive: bool = True) -> list[tuple[str, str]]:
        headers = [
            ("content-type", "text/plain"),
            ("content-length", str(len(self.body))),
            (REASON_HEADER, self.reason),
            *self.headers,
        ]
        if not keep_alive:
            headers.append(("connection", "close"))
        return headers

    def encode(self, keep_alive: bool = True, head_only: bool = False) -> bytes:
        """The HTTP/1.1 bytes; `head_only` for an answer to HEAD (length kept, body omitted)."""
        try:
            phrase = HTTPStatus(self.status).phrase
        except ValueError:
            phrase = "Unknown"
        head = serialize_response_head(self.status, phrase, self.header_list(keep_alive))
        return head if head_only else head + self.body


def rbac_denied() -> LocalReply:
    return LocalReply(403, "rbac_access_denied", DENIED_BODY)


def route_not_found() -> LocalReply:
    return LocalReply(404, "route_not_found")


def no_backend() -> LocalReply:
    """A route matched but has no backend with weight above zero (Gateway API: 500)."""
    return LocalReply(500, "no_backend", b"no backend with a weight above zero for this route")


def no_healthy_upstream() -> LocalReply:
    return LocalReply(503, "no_healthy_upstream", b"no healthy upstream")


_RESET_REASONS = {
    Failure.CONNECT_FAILURE: ("upstream_connect_error", "connection failure"),
    Failure.RESET: ("upstream_reset", "connection termination"),
}


def upstream_failure(failure: Failure) -> LocalReply:
    """No response came back: 503 for a connect failure or reset, 504 for a per-try timeout."""
    if failure is Failure.PER_TRY_TIMEOUT:
        return upstream_timeout()
    reason, envoy_reason = _RESET_REASONS[failure]
    body = (
        f"upstream connect error or disconnect/reset before headers. reset reason: {envoy_reason}"
    )
    return LocalReply(503, reason, body.encode())


def circuit_open(limit: str) -> LocalReply:
    """The backend's connectionPool is full; `limit` names the DestinationRule field."""
    body = (
        "upstream connect error or disconnect/reset before headers. reset reason: overflow "
        f"(circuit open: connectionPool {limit} reached)"
    )
    return LocalReply(503, "circuit_open", body.encode())


def upstream_timeout() -> LocalReply:
    return LocalReply(504, "upstream_request_timeout", b"upstream request timeout")


def rate_limited() -> LocalReply:
    return LocalReply(429, "local_rate_limited", b"local_rate_limited")


def fault_abort(status: int) -> LocalReply:
    return LocalReply(status, "fault_injected", b"fault filter abort")


def redirect(status: int, location: str) -> LocalReply:
    return LocalReply(status, "redirect", headers=(("location", location),))


def request_headers_timeout() -> LocalReply:
    """A client sent part of a request head and not the rest in time (slowloris)."""
    return LocalReply(408, "request_headers_timeout", b"request timeout")


def protocol_error(error: Http1Error) -> LocalReply:
    """The client (4xx/5xx from the request codec) or the backend (502) broke HTTP/1.1."""
    reason = "upstream_protocol_error" if error.status == 502 else "downstream_protocol_error"
    return LocalReply(error.status, reason, error.message.encode("latin-1", "replace"))
