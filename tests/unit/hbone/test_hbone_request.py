"""What makes an HBONE CONNECT request well-formed: authority and header block validation."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weft.hbone.request import MalformedRequestError, parse_authority, validate_connect


@pytest.mark.parametrize(
    ("authority", "expected"),
    [
        ("10.1.2.3:8080", ("10.1.2.3", 8080)),
        ("[fd00::1]:443", ("fd00::1", 443)),
        ("127.0.0.1:1", ("127.0.0.1", 1)),
        ("127.0.0.1:65535", ("127.0.0.1", 65535)),
    ],
)
def test_parse_authority_accepts_ip_and_port(authority: str, expected: tuple[str, int]) -> None:
    assert parse_authority(authority) == expected


@pytest.mark.parametrize(
    ("authority", "complaint"),
    [
        ("10.1.2.3", "is not <ip>:<port>"),
        ("10.1.2.3:", "is not <ip>:<port>"),
        ("10.1.2.3:0", "out of range"),
        ("10.1.2.3:65536", "out of range"),
        ("10.1.2.3:080", "out of range"),
        ("10.1.2.3:+80", "is not <ip>:<port>"),
        ("shop.svc:80", "does not name an IP"),
        ("fd00::1:80", "must be in"),
        ("[10.1.2.3]:80", "must be in"),
        ("10.1.2.3:\uff18\uff10", "is not <ip>:<port>"),  # fullwidth digits
    ],
)
def test_parse_authority_rejects_what_is_not_ip_port(authority: str, complaint: str) -> None:
    with pytest.raises(MalformedRequestError, match=complaint):
        parse_authority(authority)


GOOD = [
    (b":method", b"CONNECT"),
    (b":authority", b"10.0.0.7:9080"),
    (b"forwarded", b"for=10.0.0.5"),
    (b"baggage", b"k8s.namespace.name=shop"),
    (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
]


def test_validate_connect_returns_authority_and_ordinary_headers() -> None:
    request = validate_connect(GOOD)
    assert request.authority == "10.0.0.7:9080"
    assert request.headers == (
        ("forwarded", "for=10.0.0.5"),
        ("baggage", "k8s.namespace.name=shop"),
        ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    )


@pytest.mark.parametrize(
    ("headers", "complaint"),
    [
        ([(b":method", b"GET"), (b":authority", b"10.0.0.7:80")], "is not CONNECT"),
        ([(b":authority", b"10.0.0.7:80")], "is not CONNECT"),
        ([(b":method", b"CONNECT")], "no :authority"),
        ([(b":method", b"CONNECT"), (b":authority", b"web:80")], "does not name an IP"),
        (
            [(b":method", b"CONNECT"), (b":authority", b"10.0.0.7:80"), (b":path", b"/")],
            "must not carry :path",
        ),
        (
            [(b":method", b"CONNECT"), (b":authority", b"10.0.0.7:80"), (b":scheme", b"https")],
            "must not carry :scheme",
        ),
        (
            [(b":method", b"CONNECT"), (b":authority", b"10.0.0.7:80"), (b":protocol", b"ws")],
            "extended CONNECT",
        ),
        ([(b":method", b"CONNECT"), (b":method", b"CONNECT")], "appears twice"),
        ([(b":method", b"CONNECT"), (b":status", b"200")], "unknown pseudo-header"),
        ([(b"forwarded", b"x"), (b":method", b"CONNECT")], "follows an ordinary header"),
        ([*GOOD, (b"Forwarded", b"x")], "not a lowercase token"),
        ([*GOOD, (b"bad header", b"x")], "not a lowercase token"),
        ([*GOOD, (b"connection", b"close")], "connection-specific"),
        ([*GOOD, (b"te", b"gzip")], "'te' may only be 'trailers'"),
        ([*GOOD, (b"baggage", b"a\r\nb")], "forbidden characters"),
        ([*GOOD, (b"baggage", b" padded")], "forbidden characters"),
        ([*GOOD, (b"baggage", b"nul\x00")], "forbidden characters"),
    ],
)
def test_validate_connect_rejects_malformed_requests(
    headers: list[tuple[bytes, bytes]], complaint: str
) -> None:
    with pytest.raises(MalformedRequestError, match=complaint):
        validate_connect(headers)


HEADER_BLOCKS = st.lists(
    st.tuples(
        st.one_of(
            st.sampled_from([b":method", b":authority", b":path", b"forwarded", b"te"]),
            st.binary(max_size=12),
        ),
        st.one_of(
            st.sampled_from([b"CONNECT", b"10.0.0.1:80", b"[::1]:1"]), st.binary(max_size=16)
        ),
    ),
    max_size=8,
)


@settings(deadline=None)  # time does not matter here; a loaded CI host is slow
@given(HEADER_BLOCKS)
def test_validate_connect_either_accepts_a_valid_authority_or_raises_its_own_error(
    headers: list[tuple[bytes, bytes]],
) -> None:
    try:
        request = validate_connect(headers)
    except MalformedRequestError:
        return
    _, port = parse_authority(request.authority)
    assert 0 < port < 65536
    assert (b":method", b"CONNECT") in headers


@settings(deadline=None)  # time does not matter here; a loaded CI host is slow
@given(st.text(max_size=30))
def test_parse_authority_raises_nothing_but_its_own_error(authority: str) -> None:
    with contextlib.suppress(MalformedRequestError):
        parse_authority(authority)
