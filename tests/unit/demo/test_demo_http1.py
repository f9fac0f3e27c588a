"""demo.http1: request and response framing, byte-exact, plus garbage that must fail cleanly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from demo.http1 import (
    MessageParser,
    ParseError,
    Request,
    Response,
    encode_request,
    encode_response,
)


def parse_all(kind: str, data: bytes, eof: bool = False) -> list[Request | Response]:
    parser = MessageParser(kind)  # type: ignore[arg-type]
    parser.feed(data)
    if eof:
        parser.feed_eof()
    messages = []
    while (message := parser.next_message()) is not None:
        messages.append(message)
    return messages


def test_parses_pipelined_requests_in_order_with_bodies() -> None:
    data = (
        b"GET /products/1 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"DELETE /reviews/2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
    )
    first, second = parse_all("request", data)
    assert isinstance(first, Request)
    assert (first.method, first.target, first.body) == ("GET", "/products/1", b"")
    assert isinstance(second, Request)
    assert (second.method, second.path, second.body) == ("DELETE", "/reviews/2", b"abc")
    assert second.header("HOST") == "a"


def test_request_split_at_every_byte_parses_the_same() -> None:
    data = b"GET /x?y=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"
    for cut in range(len(data)):
        parser = MessageParser("request")
        parser.feed(data[:cut])
        assert parser.next_message() is None
        parser.feed(data[cut:])
        message = parser.next_message()
        assert isinstance(message, Request)
        assert (message.path, message.body) == ("/x", b"hi")


def test_chunked_request_body_is_reassembled() -> None:
    data = (
        b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"
    )
    (request,) = parse_all("request", data)
    assert request.body == b"abcde"


def test_keep_alive_defaults_follow_the_http_version() -> None:
    (v11,) = parse_all("request", b"GET / HTTP/1.1\r\n\r\n")
    (v11_close,) = parse_all("request", b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
    (v10,) = parse_all("request", b"GET / HTTP/1.0\r\n\r\n")
    (v10_keep,) = parse_all("request", b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert [m.keep_alive for m in (v11, v11_close, v10, v10_keep)] == [True, False, False, True]


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n folded: value\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
        (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"GET /\xff HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n" + b"a: " + b"b" * 70_000 + b"\r\n\r\n", 431),
    ],
)
def test_malformed_requests_raise_parse_error_with_the_status_to_answer(
    data: bytes, status: int
) -> None:
    with pytest.raises(ParseError) as raised:
        parse_all("request", data)
    assert raised.value.status == status


def test_truncated_request_at_eof_is_an_error_not_a_hang() -> None:
    with pytest.raises(ParseError):
        parse_all("request", b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab", eof=True)


def test_response_round_trips_through_encode_and_parse() -> None:
    wire = encode_response(200, [("x-demo-version", "v2")], b'{"a":1}', keep_alive=False)
    assert wire == (
        b"HTTP/1.1 200 OK\r\nx-demo-version: v2\r\ncontent-length: 7\r\nconnection: close\r\n\r\n"
        b'{"a":1}'
    )
    (response,) = parse_all("response", wire)
    assert isinstance(response, Response)
    assert (response.status, response.body, response.keep_alive) == (200, b'{"a":1}', False)


def test_response_without_framing_runs_until_eof() -> None:
    parser = MessageParser("response")
    parser.feed(b"HTTP/1.1 200 OK\r\n\r\npart one,")
    assert parser.next_message() is None
    parser.feed(b" part two")
    parser.feed_eof()
    message = parser.next_message()
    assert isinstance(message, Response)
    assert message.body == b"part one, part two"


def test_no_content_response_has_no_body_even_without_length() -> None:
    (response, following) = parse_all(
        "response", b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
    )
    assert isinstance(response, Response)
    assert isinstance(following, Response)
    assert (response.status, following.status) == (204, 200)


def test_encode_request_sends_host_and_length_only_with_a_body() -> None:
    assert (
        encode_request("GET", "/p", "10.0.0.1:80")
        == b"GET /p HTTP/1.1\r\nhost: 10.0.0.1:80\r\n\r\n"
    )
    assert b"content-length: 2" in encode_request("DELETE", "/p", "h:1", body=b"hi")


@given(st.binary(max_size=512))
def test_garbage_either_parses_or_raises_parse_error(data: bytes) -> None:
    for kind in ("request", "response"):
        status = 0
        try:
            parse_all(kind, data, eof=True)
        except ParseError as error:
            status = error.status
        assert status == 0 or 400 <= status < 600


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["GET", "DELETE", "POST"]),
            st.from_regex(r"/[a-z0-9/]{0,20}", fullmatch=True),
            st.binary(max_size=64),
        ),
        min_size=1,
        max_size=5,
    ),
    st.integers(min_value=1, max_value=64),
)
def test_any_split_of_encoded_requests_parses_back_to_the_same_requests(
    requests: list[tuple[str, str, bytes]], chunk: int
) -> None:
    wire = b"".join(encode_request(m, t, "h:1", body=b) for m, t, b in requests)
    parser = MessageParser("request")
    parsed: list[Request] = []
    for start in range(0, len(wire), chunk):
        parser.feed(wire[start : start + chunk])
        while (message := parser.next_message()) is not None:
            assert isinstance(message, Request)
            parsed.append(message)
    assert [(m.method, m.target, m.body) for m in parsed] == requests


@pytest.mark.parametrize(
    ("target", "path"),
    [
        ("/products/1?x=1", "/products/1"),
        ("http://10.0.0.1:8080/products/1", "/products/1"),
        ("http://10.0.0.1:8080", "/"),
    ],
)
def test_path_drops_query_and_absolute_form_authority(target: str, path: str) -> None:
    (request,) = parse_all("request", f"GET {target} HTTP/1.1\r\n\r\n".encode())
    assert isinstance(request, Request)
    assert request.path == path
