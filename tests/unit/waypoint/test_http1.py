"""The HTTP/1.1 codec: framing, keep-alive, upgrades and the smuggling defences, byte for byte."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from waypoint.http1 import (
    CONTINUE,
    LAST_CHUNK,
    BodyFraming,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Event,
    Http1Error,
    Request,
    RequestParser,
    Response,
    ResponseParser,
    Upgraded,
    encode_chunk,
    serialize_request_head,
    serialize_response_head,
)


def feed_all(parser: RequestParser | ResponseParser, data: bytes) -> list[Event]:
    return parser.feed(data)


def body_of(events: list[Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Data))


def refused_status(data: bytes) -> int:
    with pytest.raises(Http1Error) as refused:
        RequestParser().feed(data)
    return refused.value.status


# --- requests: heads and bodies ---------------------------------------------------------------


def test_get_without_body_yields_request_then_end_of_message() -> None:
    events = RequestParser().feed(b"GET /a?b=1 HTTP/1.1\r\nHost: svc\r\nX-Id: 7\r\n\r\n")
    assert events == [
        Request(method="GET", target="/a?b=1", headers=(("host", "svc"), ("x-id", "7"))),
        EndOfMessage(),
    ]


def test_header_names_are_lowercased_and_values_trimmed() -> None:
    (request, _) = RequestParser().feed(b"GET / HTTP/1.1\r\nHOST:   svc \t\r\n\r\n")
    assert isinstance(request, Request)
    assert request.headers == (("host", "svc"),)


def test_content_length_body_is_streamed_as_it_arrives() -> None:
    parser = RequestParser()
    first = parser.feed(b"POST /p HTTP/1.1\r\nHost: s\r\nContent-Length: 10\r\n\r\nhello")
    assert isinstance(first[0], Request)
    assert first[0].framing is BodyFraming.CONTENT_LENGTH
    assert first[1:] == [Data(b"hello")]
    assert parser.feed(b"world") == [Data(b"world"), EndOfMessage()]


def test_chunked_body_with_extension_and_trailers() -> None:
    parser = RequestParser()
    events = parser.feed(
        b"POST /p HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: 42\r\n\r\n"
    )
    assert isinstance(events[0], Request)
    assert events[0].framing is BodyFraming.CHUNKED
    assert body_of(events) == b"hello world"
    assert events[-1] == EndOfMessage(trailers=(("x-checksum", "42"),))


def test_chunked_body_split_at_every_byte_parses_the_same() -> None:
    wire = (
        b"POST /p HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"a\r\n0123456789\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    parser = RequestParser()
    events: list[Event] = []
    for index in range(len(wire)):
        events += parser.feed(wire[index : index + 1])
    assert body_of(events) == b"0123456789abc"
    assert events[-1] == EndOfMessage()


def test_pipelined_requests_on_keep_alive_are_all_parsed() -> None:
    events = RequestParser().feed(
        b"GET /1 HTTP/1.1\r\nHost: s\r\n\r\nGET /2 HTTP/1.1\r\nHost: s\r\n\r\n"
    )
    targets = [e.target for e in events if isinstance(e, Request)]
    assert targets == ["/1", "/2"]


def test_connection_close_ignores_bytes_after_the_request() -> None:
    parser = RequestParser()
    events = parser.feed(
        b"GET /1 HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\n\r\n"
    )
    assert [type(e) for e in events] == [Request, EndOfMessage]
    assert isinstance(events[0], Request)
    assert events[0].keep_alive is False
    assert parser.feed(b"more") == []


def test_http10_closes_unless_keep_alive_is_asked_for() -> None:
    (plain, _) = RequestParser().feed(b"GET / HTTP/1.0\r\n\r\n")
    (kept, _) = RequestParser().feed(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
    assert isinstance(plain, Request)
    assert isinstance(kept, Request)
    assert (plain.keep_alive, kept.keep_alive) == (False, True)


def test_expect_100_continue_is_reported_for_the_proxy_to_answer() -> None:
    (request,) = RequestParser().feed(
        b"PUT /p HTTP/1.1\r\nHost: s\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n"
    )
    assert isinstance(request, Request)
    assert request.expects_continue
    assert CONTINUE == b"HTTP/1.1 100 Continue\r\n\r\n"


def test_leading_empty_lines_before_a_request_are_ignored() -> None:
    events = RequestParser().feed(b"\r\n\r\nGET / HTTP/1.1\r\nHost: s\r\n\r\n")
    assert isinstance(events[0], Request)


def test_clean_close_between_requests_is_connection_closed() -> None:
    parser = RequestParser()
    parser.feed(b"GET / HTTP/1.1\r\nHost: s\r\n\r\n")
    assert parser.feed_eof() == [ConnectionClosed()]


def test_close_in_the_middle_of_a_body_is_an_error() -> None:
    parser = RequestParser()
    parser.feed(b"POST / HTTP/1.1\r\nHost: s\r\nContent-Length: 5\r\n\r\nab")
    with pytest.raises(Http1Error, match="in the middle of a message"):
        parser.feed_eof()


# --- upgrades --------------------------------------------------------------------------------


def test_upgrade_request_pauses_parsing_until_the_proxy_decides() -> None:
    parser = RequestParser()
    events = parser.feed(
        b"GET /ws HTTP/1.1\r\nHost: s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        b"\x81\x05hello"
    )
    assert isinstance(events[0], Request)
    assert events[0].upgrade == "websocket"
    assert events[1:] == [EndOfMessage()]
    assert parser.switch_protocol() == [Upgraded(b"\x81\x05hello")]
    assert parser.feed(b"more") == [Upgraded(b"more")]


def test_refused_upgrade_resumes_parsing_the_buffered_request() -> None:
    parser = RequestParser()
    parser.feed(
        b"GET /ws HTTP/1.1\r\nHost: s\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"
        b"GET /next HTTP/1.1\r\nHost: s\r\n\r\n"
    )
    resumed = parser.resume()
    assert isinstance(resumed[0], Request)
    assert resumed[0].target == "/next"


def test_connect_request_is_an_upgrade() -> None:
    (request, _) = RequestParser().feed(
        b"CONNECT 10.0.0.1:80 HTTP/1.1\r\nHost: 10.0.0.1:80\r\n\r\n"
    )
    assert isinstance(request, Request)
    assert request.upgrade == "CONNECT"


# --- smuggling and strictness ------------------------------------------------------------------


def test_content_length_with_transfer_encoding_is_400() -> None:
    wire = b"POST / HTTP/1.1\r\nHost: s\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert refused_status(wire) == 400


def test_duplicate_content_length_is_400_even_when_equal() -> None:
    wire = b"POST / HTTP/1.1\r\nHost: s\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\n"
    assert refused_status(wire) == 400


def test_comma_listed_content_length_is_400() -> None:
    assert refused_status(b"POST / HTTP/1.1\r\nHost: s\r\nContent-Length: 4, 5\r\n\r\n") == 400


@pytest.mark.parametrize("length", [b"+4", b"-1", b"0x10", b"4 4", b"\xb2", b""])
def test_non_decimal_content_length_is_400(length: bytes) -> None:
    assert refused_status(b"POST / HTTP/1.1\r\nHost: s\r\nContent-Length: " + length + b"\r\n\r\n")


def test_transfer_encoding_not_ending_in_chunked_is_501() -> None:
    assert refused_status(b"POST / HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: gzip\r\n\r\n") == 501


def test_transfer_encoding_in_http10_is_400() -> None:
    assert refused_status(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n") == 400


def test_obs_fold_is_400() -> None:
    status = refused_status(b"GET / HTTP/1.1\r\nHost: s\r\nX-A: one\r\n two\r\n\r\n")
    assert status == 400


def test_space_before_colon_is_400() -> None:
    assert refused_status(b"GET / HTTP/1.1\r\nHost : s\r\n\r\n") == 400


def test_header_line_without_colon_is_400_even_for_a_known_name() -> None:
    assert refused_status(b"GET / HTTP/1.1\r\nHost: s\r\nhost\r\n\r\n") == 400


@pytest.mark.parametrize("method", [b"G(T", b"G T", b"", b"GET\x00"])
def test_invalid_method_is_400(method: bytes) -> None:
    assert refused_status(method + b" / HTTP/1.1\r\nHost: s\r\n\r\n") == 400


def test_bare_lf_line_ending_is_400() -> None:
    assert refused_status(b"GET / HTTP/1.1\r\nHost: s\nX-A: b\r\n\r\n") == 400


def test_nul_in_header_value_is_400() -> None:
    assert refused_status(b"GET / HTTP/1.1\r\nHost: s\r\nX-A: a\x00b\r\n\r\n") == 400


def test_http11_without_host_is_400() -> None:
    assert refused_status(b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n") == 400


def test_two_hosts_is_400() -> None:
    assert refused_status(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n") == 400


def test_http2_version_on_http1_connection_is_505() -> None:
    assert refused_status(b"GET / HTTP/2.0\r\nHost: s\r\n\r\n") == 505


def test_oversized_header_section_is_431_before_it_is_complete() -> None:
    parser = RequestParser(max_header_bytes=1024)
    parser.feed(b"GET / HTTP/1.1\r\nHost: s\r\n")
    with pytest.raises(Http1Error) as refused:
        parser.feed(b"X-Big: " + b"a" * 1100)
    assert refused.value.status == 431


def test_default_header_limit_is_64_kib() -> None:
    fits = b"GET / HTTP/1.1\r\nHost: s\r\nX-Big: " + b"a" * 60_000 + b"\r\n\r\n"
    assert isinstance(RequestParser().feed(fits)[0], Request)
    too_big = b"GET / HTTP/1.1\r\nHost: s\r\nX-Big: " + b"a" * 66_000 + b"\r\n\r\n"
    assert refused_status(too_big) == 431


@pytest.mark.parametrize("size_line", [b"0x5", b" 5", b"5 ", b"-5", b"g", b"", b"1" * 16])
def test_malformed_chunk_size_is_400(size_line: bytes) -> None:
    wire = b"POST / HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n" + size_line
    assert refused_status(wire + b"\r\nhello\r\n0\r\n\r\n") == 400


def test_chunk_data_longer_than_its_size_is_400() -> None:
    wire = b"POST / HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n"
    assert refused_status(wire) == 400


def test_parser_stays_failed_after_an_error() -> None:
    parser = RequestParser()
    with pytest.raises(Http1Error):
        parser.feed(b"BAD\r\n\r\n")
    with pytest.raises(Http1Error, match="already failed"):
        parser.feed(b"GET / HTTP/1.1\r\nHost: s\r\n\r\n")


# --- responses (client side) ----------------------------------------------------------------


def test_response_with_content_length_is_framed_by_it() -> None:
    parser = ResponseParser()
    parser.expect("GET")
    events = parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1")
    assert events[0] == Response(
        200, "OK", (("content-length", "2"),), framing=BodyFraming.CONTENT_LENGTH,
        content_length=2,
    )  # fmt: skip
    assert events[1:] == [Data(b"ok"), EndOfMessage()]


def test_response_to_head_has_no_body_despite_content_length() -> None:
    parser = ResponseParser()
    parser.expect("HEAD")
    parser.expect("GET")
    events = parser.feed(
        b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"
    )
    assert [type(e) for e in events] == [Response, EndOfMessage, Response, EndOfMessage]


def test_response_without_length_reads_until_close() -> None:
    parser = ResponseParser()
    parser.expect("GET")
    events = parser.feed(b"HTTP/1.1 200 OK\r\n\r\npart")
    assert isinstance(events[0], Response)
    assert events[0].keep_alive is False
    assert parser.feed_eof() == [EndOfMessage(), ConnectionClosed()]
    assert body_of(events) == b"part"


def test_informational_response_precedes_the_final_one() -> None:
    parser = ResponseParser()
    parser.expect("PUT")
    events = parser.feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\n\r\n")
    statuses = [e.status for e in events if isinstance(e, Response)]
    assert statuses == [100, 201]


def test_switching_protocols_response_hands_over_the_rest() -> None:
    parser = ResponseParser()
    parser.expect("GET")
    events = parser.feed(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\nxyz")
    assert events[-1] == Upgraded(b"xyz")


def test_response_smuggling_is_502() -> None:
    parser = ResponseParser()
    parser.expect("GET")
    with pytest.raises(Http1Error) as refused:
        parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
    assert refused.value.status == 502


def test_unsolicited_response_is_502() -> None:
    with pytest.raises(Http1Error) as refused:
        ResponseParser().feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert refused.value.status == 502


# --- serialization -----------------------------------------------------------------------------


def test_serialized_request_head_is_byte_exact() -> None:
    assert serialize_request_head("GET", "/x", [("host", "s"), ("x-a", "1")]) == (
        b"GET /x HTTP/1.1\r\nhost: s\r\nx-a: 1\r\n\r\n"
    )


def test_serialized_response_head_is_byte_exact() -> None:
    assert serialize_response_head(404, "Not Found", [("content-length", "0")]) == (
        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
    )


def test_header_injection_through_a_value_is_refused() -> None:
    with pytest.raises(ValueError, match="CR/LF"):
        serialize_response_head(200, "OK", [("x-a", "1\r\nSet-Cookie: evil=1")])


def test_chunk_encoding_is_hex_length_prefixed() -> None:
    assert encode_chunk(b"0123456789abcdef!") == b"11\r\n0123456789abcdef!\r\n"
    assert encode_chunk(b"") == b""
    assert LAST_CHUNK == b"0\r\n\r\n"


# --- properties -------------------------------------------------------------------------------

TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
tokens = st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=12)
values = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30).map(
    str.strip
)
targets = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1)
framing_names = {"content-length", "transfer-encoding", "host", "connection", "upgrade", "expect"}


@settings(max_examples=300)
@given(st.binary(max_size=600))
def test_random_bytes_raise_nothing_but_http1_error(data: bytes) -> None:
    for parser in (RequestParser(max_header_bytes=256), ResponseParser(max_header_bytes=256)):
        if isinstance(parser, ResponseParser):
            parser.expect("GET")
        status = 400
        try:
            parser.feed(data)
            parser.feed_eof()
        except Http1Error as error:
            status = error.status
        assert 400 <= status <= 599


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_random_bytes_after_a_valid_head_raise_nothing_but_http1_error(data: bytes) -> None:
    parser = RequestParser()
    try:
        parser.feed(b"POST / HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n" + data)
        parser.feed_eof()
    except Http1Error:
        pass


@settings(max_examples=200)
@given(
    request_line=st.tuples(tokens, targets),
    headers=st.lists(
        st.tuples(tokens.filter(lambda n: n.lower() not in framing_names), values), max_size=8
    ),
    body=st.binary(max_size=300),
    chunked=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=5),
)
def test_valid_requests_round_trip_however_they_are_split(
    request_line: tuple[str, str],
    headers: list[tuple[str, str]],
    body: bytes,
    chunked: bool,
    cuts: list[int],
) -> None:
    method, target = request_line
    framing = ("transfer-encoding", "chunked") if chunked else ("content-length", str(len(body)))
    sent_headers = [("host", "svc"), *headers, framing]
    wire = serialize_request_head(method, target, sent_headers)
    if chunked:
        wire += encode_chunk(body[:100]) + encode_chunk(body[100:]) + LAST_CHUNK
    else:
        wire += body
    parser = RequestParser()
    events: list[Event] = []
    previous = 0
    for cut in [*sorted(c for c in cuts if c < len(wire)), len(wire)]:
        events += parser.feed(wire[previous:cut])
        previous = cut
    request = events[0]
    assert isinstance(request, Request)
    assert (request.method, request.target) == (method, target)
    assert request.headers == tuple((n.lower(), v) for n, v in sent_headers)
    assert body_of(events) == body
    assert events[-1] == EndOfMessage()


@pytest.mark.parametrize("value", ["1\r\nx: y", "1\r", "1\rx", "\nx", "1\n", "1\x00"])
def test_any_cr_lf_or_nul_in_a_value_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="CR/LF/NUL"):
        serialize_request_head("GET", "/", [("host", "s"), ("x-a", value), ("x-b", "2")])


def test_a_header_name_that_is_not_a_token_is_refused() -> None:
    with pytest.raises(ValueError, match="invalid name"):
        serialize_request_head("GET", "/", [("x a", "1")])
