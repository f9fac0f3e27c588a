"""IPv4 addresses parsed and formatted once: clients and destinations repeat from connection to
connection, and ipaddress parses and formats in Python (a few microseconds each)."""

from __future__ import annotations

from ipaddress import IPv4Address

_ADDRESS_CACHE_LIMIT = 4096
_parsed: dict[str, IPv4Address] = {}
_texts: dict[IPv4Address, str] = {}


def parse_address(text: str) -> IPv4Address:
    """IPv4Address(text), remembered."""
    found = _parsed.get(text)
    if found is None:
        if len(_parsed) >= _ADDRESS_CACHE_LIMIT:
            _parsed.clear()
        found = _parsed[text] = IPv4Address(text)
    return found


def address_text(address: IPv4Address) -> str:
    """str(address), remembered."""
    found = _texts.get(address)
    if found is None:
        if len(_texts) >= _ADDRESS_CACHE_LIMIT:
            _texts.clear()
        found = _texts[address] = str(address)
    return found
