"""Local replies: the status, the Envoy wording operators know, and x-weft-reason."""

from __future__ import annotations

import pytest

from waypoint import responses
from waypoint.http1 import Data, EndOfMessage, Http1Error, Response, ResponseParser
from waypoint.resilience import Failure


def parse(wire: bytes, method: str = "GET") -> tuple[Response, bytes]:
    parser = ResponseParser()
    parser.expect(method)
    events = parser.feed(wire)
    assert isinstance(events[0], Response)
    assert isinstance(events[-1], EndOfMessage)
    return events[0], b"".join(e.data for e in events if isinstance(e, Data))


@pytest.mark.parametrize(
    ("reply", "status", "reason", "body"),
    [
        (responses.rbac_denied(), 403, "rbac_access_denied", b"RBAC: access denied"),
        (responses.no_healthy_upstream(), 503, "no_healthy_upstream", b"no healthy upstream"),
        (
            responses.upstream_failure(Failure.CONNECT_FAILURE),
            503,
            "upstream_connect_error",
            b"upstream connect error or disconnect/reset before headers. "
            b"reset reason: connection failure",
        ),
        (
            responses.upstream_failure(Failure.PER_TRY_TIMEOUT),
            504,
            "upstream_request_timeout",
            b"upstream request timeout",
        ),
        (
            responses.upstream_timeout(),
            504,
            "upstream_request_timeout",
            b"upstream request timeout",
        ),
        (responses.rate_limited(), 429, "local_rate_limited", b"local_rate_limited"),
        (responses.fault_abort(418), 418, "fault_injected", b"fault filter abort"),
        (responses.route_not_found(), 404, "route_not_found", b""),
    ],
)
def test_local_reply_round_trips_with_its_reason(
    reply: responses.LocalReply, status: int, reason: str, body: bytes
) -> None:
    response, received = parse(reply.encode())
    assert response.status == status
    assert response.header("x-weft-reason") == reason
    assert received == body


def test_circuit_open_names_the_limit_that_was_reached() -> None:
    reply = responses.circuit_open("http.http1MaxPendingRequests")
    assert reply.status == 503
    assert b"reset reason: overflow" in reply.body
    assert b"http.http1MaxPendingRequests" in reply.body


def test_reply_to_head_keeps_the_length_but_sends_no_body() -> None:
    wire = responses.rbac_denied().encode(head_only=True)
    response, received = parse(wire, method="HEAD")
    assert response.header("content-length") == str(len(b"RBAC: access denied"))
    assert received == b""
    assert wire.endswith(b"\r\n\r\n")


def test_closing_reply_says_connection_close() -> None:
    response, _ = parse(responses.route_not_found().encode(keep_alive=False))
    assert response.header("connection") == "close"
    assert response.keep_alive is False


def test_redirect_carries_its_location() -> None:
    response, _ = parse(responses.redirect(301, "https://reviews/a").encode())
    assert (response.status, response.header("location")) == (301, "https://reviews/a")


def test_protocol_errors_are_attributed_to_the_side_that_broke_them() -> None:
    client = responses.protocol_error(Http1Error(431, "header section above 65536 bytes"))
    backend = responses.protocol_error(Http1Error(502, "malformed status line"))
    assert (client.status, client.reason) == (431, "downstream_protocol_error")
    assert (backend.status, backend.reason) == (502, "upstream_protocol_error")
