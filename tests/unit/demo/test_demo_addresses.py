"""demo.addresses: HOST:PORT parsing with errors that say what is wrong."""

from __future__ import annotations

import pytest

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
