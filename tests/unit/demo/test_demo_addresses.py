"""demo.addresses: HOST:PORT parsing with errors that say what is wrong."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from demo.addresses import Address, parse_address


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("10.0.1.5:8080", Address("10.0.1.5", 8080)),
        ("127.0.0.1:1", Address("127.0.0.1", 1)),
        ("[fd00::5]:9090", Address("fd00::5", 9090)),
    ],
)
def test_parses_and_prints_back_host_port(text: str, address: Address) -> None:
    assert parse_address(text) == address
    assert str(address) == text


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("10.0.1.5", "is not HOST:PORT"),
        (":8080", "is not HOST:PORT"),
        ("10.0.1.5:http", "no valid port"),
        ("10.0.1.5:0", "no valid port"),
        ("10.0.1.5:65536", "no valid port"),
    ],
)
def test_rejects_bad_addresses_saying_why(text: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse_address(text)


@given(
    st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str)),
    st.integers(min_value=1, max_value=65535),
)
def test_any_ip_and_port_round_trips(host: str, port: int) -> None:
    assert parse_address(str(Address(host, port))) == Address(host, port)


@given(st.text(max_size=40))
def test_any_text_parses_or_raises_value_error(text: str) -> None:
    try:
        address = parse_address(text)
    except ValueError:
        return
    assert 0 < address.port < 65536
    assert address.host
