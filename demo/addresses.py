"""HOST:PORT parsing for the services' command lines: addresses only, never names to resolve."""

from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    """Parse `HOST:PORT` or `[V6HOST]:PORT`; raise ValueError saying what is wrong."""
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
    else:
        host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not HOST:PORT (for example 10.0.1.5:8080)")
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r} has no valid port (1-65535) after the colon")
    return Address(host, int(port_text))


def address_argument(text: str) -> Address:
    """argparse `type=` wrapper: a bad address becomes a usage error naming the flag's value."""
    try:
        return parse_address(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
