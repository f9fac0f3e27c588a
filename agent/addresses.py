"""IPv4 addresses parsed and formatted once: clients and destinations repeat from connection to
connection, and ipaddress parses and formats in Python (a few microseconds each)."""

from __future__ import annotations

import functools
from ipaddress import IPv4Address

# Bounded: a node sees a limited set of peers, but a scan of many sources must not grow the agent.
_ADDRESS_CACHE_LIMIT = 4096


@functools.lru_cache(maxsize=_ADDRESS_CACHE_LIMIT)
def parse_address(text: str) -> IPv4Address:
    """IPv4Address(text), remembered."""
    return IPv4Address(text)


@functools.lru_cache(maxsize=_ADDRESS_CACHE_LIMIT)
def address_text(address: IPv4Address) -> str:
    """str(address), remembered."""
    return str(address)
