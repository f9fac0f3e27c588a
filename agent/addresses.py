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


# address -> its text, keyed by the address's integer (IPv4Address._ip, what int() returns): an
# lru_cache would hash the IPv4Address, three Python calls, and a connection names up to three
# addresses. Bounded like the parse cache.
_ADDRESS_TEXTS: dict[int, str] = {}


def address_text(address: IPv4Address) -> str:
    """str(address), remembered."""
    text = _ADDRESS_TEXTS.get(address._ip)  # type: ignore[attr-defined]
    if text is None:
        if len(_ADDRESS_TEXTS) >= _ADDRESS_CACHE_LIMIT:
            _ADDRESS_TEXTS.clear()
        text = _ADDRESS_TEXTS[int(address)] = str(address)
    return text
