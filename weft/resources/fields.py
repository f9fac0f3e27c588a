"""Typed reading of one YAML mapping: every field is checked, every unknown field rejected by name.

A `Fields` wraps a mapping and the dotted path that led to it; each accessor marks its field as
read, and `done()` fails on the first field nobody read, so an unsupported Istio or Gateway API
field is reported by name instead of being silently ignored.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from enum import Enum
from ipaddress import IPv4Address, IPv4Network, ip_address, ip_network
from typing import TypeVar

E = TypeVar("E", bound=Enum)
T = TypeVar("T")

DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9\-]{0,61}[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([a-z0-9.\-]{0,251}[a-z0-9])?$")
LABEL_KEY = re.compile(
    r"^([a-z0-9]([a-z0-9.\-]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([A-Za-z0-9_.\-]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9_.\-]{0,61}[A-Za-z0-9])?)?$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")
_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?(?:h|ms|m|s))+$")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


class FieldError(Exception):
    """One invalid field: its dotted path inside the document, what was expected, what was found."""

    def __init__(self, path: str, expected: str, got: object = None) -> None:
        super().__init__(f"{path}: expected {expected}")
        self.path = path
        self.expected = expected
        self.got = got


def describe(value: object) -> object:
    """What to show the operator for a wrong value: short values as-is, big ones by type."""
    if isinstance(value, str | int | float | bool) or value is None:
        text = repr(value)
        return value if len(text) <= 80 else f"{text[:77]}..."
    return f"a {type(value).__name__}"


def parse_duration(path: str, value: object) -> float:
    """Gateway API / Istio durations ("500ms", "1.5s", "1m30s") in seconds."""
    if not isinstance(value, str) or not _DURATION.match(value):
        raise FieldError(path, "a duration such as '500ms', '1.5s' or '1m30s'", describe(value))
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(value))


class Fields:
    """The fields of one mapping, read once each, with `done()` rejecting the rest."""

    def __init__(self, data: object, path: str, *, int_keys: bool = False) -> None:
        if not isinstance(data, Mapping):
            raise FieldError(path or "document", "a mapping", describe(data))
        for key in data:
            if not isinstance(key, str) and not (int_keys and type(key) is int):
                raise FieldError(path or "document", "string field names", describe(key))
        self._data: Mapping[str | int, object] = data
        self.path = path
        self._read: set[str | int] = set()

    def child_path(self, name: str | int) -> str:
        return f"{self.path}.{name}" if self.path else str(name)

    def names(self) -> list[str | int]:
        """The field names present, for maps whose keys are data (port names, port numbers)."""
        return list(self._data)

    def has(self, name: str) -> bool:
        return self._data.get(name) is not None

    def raw(self, name: str | int) -> object:
        self._read.add(name)
        return self._data.get(name)

    def done(self) -> None:
        for key in self._data:
            if key not in self._read:
                raise FieldError(self.child_path(key), "no such field (unsupported by Weft)")

    # --- scalars ----------------------------------------------------------------------------

    def text(self, name: str, *, pattern: re.Pattern[str] | None = None, what: str = "") -> str:
        value = self.opt_text(name, pattern=pattern, what=what)
        if value is None:
            raise FieldError(self.child_path(name), f"{what or 'a string'} (required)")
        return value

    def opt_text(
        self, name: str, *, pattern: re.Pattern[str] | None = None, what: str = ""
    ) -> str | None:
        value = self.raw(name)
        if value is None:
            return None
        expected = what or "a string"
        if not isinstance(value, str) or (pattern is not None and not pattern.match(value)):
            raise FieldError(self.child_path(name), expected, describe(value))
        return value

    def opt_int(self, name: str, *, low: int = 0, high: int = 2**31 - 1) -> int | None:
        value = self.raw(name)
        if value is None:
            return None
        # bool is an int in Python; `true` for a port is a mistake, not 1.
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise FieldError(
                self.child_path(name), f"an integer from {low} to {high}", describe(value)
            )
        return value

    def integer(self, name: str, *, low: int = 0, high: int = 2**31 - 1) -> int:
        value = self.opt_int(name, low=low, high=high)
        if value is None:
            raise FieldError(self.child_path(name), f"an integer from {low} to {high} (required)")
        return value

    def port(self, name: str) -> int:
        return self.integer(name, low=1, high=65535)

    def opt_port(self, name: str) -> int | None:
        return self.opt_int(name, low=1, high=65535)

    def opt_float(self, name: str, *, low: float, high: float) -> float | None:
        value = self.raw(name)
        if value is None:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
        ):
            raise FieldError(
                self.child_path(name), f"a number from {low:g} to {high:g}", describe(value)
            )
        return float(value)

    def opt_bool(self, name: str) -> bool | None:
        value = self.raw(name)
        if value is None:
            return None
        if not isinstance(value, bool):
            raise FieldError(self.child_path(name), "true or false", describe(value))
        return value

    def opt_enum(self, name: str, enum: type[E]) -> E | None:
        value = self.raw(name)
        if value is None:
            return None
        for member in enum:
            if member.value == value:
                return member
        choices = " or ".join(repr(m.value) for m in enum)
        raise FieldError(self.child_path(name), f"one of {choices}", describe(value))

    def opt_duration(self, name: str) -> float | None:
        value = self.raw(name)
        return None if value is None else parse_duration(self.child_path(name), value)

    def opt_ipv4(self, name: str) -> IPv4Address | None:
        value = self.raw(name)
        if value is None:
            return None
        return to_ipv4(self.child_path(name), value)

    def ipv4(self, name: str) -> IPv4Address:
        value = self.opt_ipv4(name)
        if value is None:
            raise FieldError(self.child_path(name), "an IPv4 address (required)")
        return value

    # --- collections ------------------------------------------------------------------------

    def opt_fields(self, name: str, *, int_keys: bool = False) -> Fields | None:
        value = self.raw(name)
        return None if value is None else Fields(value, self.child_path(name), int_keys=int_keys)

    def fields(self, name: str | int) -> Fields:
        value = self.raw(name)
        if value is None:
            raise FieldError(self.child_path(name), "a mapping (required)")
        return Fields(value, self.child_path(name))

    def items(self, name: str) -> Iterator[tuple[str, object]]:
        """The items of a list field with their paths; a missing field is an empty list."""
        value = self.raw(name)
        if value is None:
            return iter(())
        if not isinstance(value, list):
            raise FieldError(self.child_path(name), "a list", describe(value))
        return ((f"{self.child_path(name)}[{i}]", item) for i, item in enumerate(value))

    def list_of_fields(self, name: str) -> Iterator[Fields]:
        return (Fields(item, path) for path, item in self.items(name))

    def str_list(
        self, name: str, *, check: Callable[[str, str], T] | None = None
    ) -> tuple[str, ...]:
        out: list[str] = []
        for path, item in self.items(name):
            if not isinstance(item, str) or not item:
                raise FieldError(path, "a non-empty string", describe(item))
            if check is not None:
                check(path, item)
            out.append(item)
        return tuple(out)

    def string_map(self, name: str, *, labels: bool = False) -> dict[str, str]:
        """A map of strings; with `labels`, keys and values follow Kubernetes label syntax."""
        value = self.raw(name)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise FieldError(self.child_path(name), "a mapping of strings", describe(value))
        out: dict[str, str] = {}
        for key, item in value.items():
            path = f"{self.child_path(name)}.{key}"
            if not isinstance(key, str) or (labels and not LABEL_KEY.match(key)):
                raise FieldError(
                    self.child_path(name), "label keys like 'app' or 'weft.io/x'", describe(key)
                )
            if not isinstance(item, str) or (labels and not LABEL_VALUE.match(item)):
                raise FieldError(
                    path, "a label value (letters, digits, '-', '_', '.')", describe(item)
                )
            out[key] = item
        return out


def to_ipv4(path: str, value: object) -> IPv4Address:
    if isinstance(value, str):
        try:
            address = ip_address(value)
        except ValueError:
            pass
        else:
            if isinstance(address, IPv4Address):
                return address
    raise FieldError(path, "an IPv4 address such as 10.96.0.10", describe(value))


def to_ipv4_network(path: str, value: object) -> IPv4Network:
    if isinstance(value, str):
        try:
            network = ip_network(value, strict=False)
        except ValueError:
            pass
        else:
            if isinstance(network, IPv4Network):
                return network
    raise FieldError(path, "an IPv4 address or CIDR such as 10.1.0.0/16", describe(value))
