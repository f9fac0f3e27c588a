"""Cheaper hyperframe frame construction: the valid flag names of a frame type, computed once.

hyperframe builds a set of the valid flag names for every frame it makes (Flags.__init__); h2
makes several frames per tunnel (HEADERS, WINDOW_UPDATE, RST_STREAM...) and the core one per
received DATA frame, and that set was about 5% of an agent's CPU per new connection. The sets
are cached per `defined_flags` list (a class attribute of each frame type); behaviour is
hyperframe's own.
"""

from __future__ import annotations

from collections.abc import Iterable

import hyperframe.flags

_CACHE_LIMIT = 64  # frame types are few; anything else is not cached
_valid: dict[int, tuple[object, frozenset[str]]] = {}


def _init(self: hyperframe.flags.Flags, defined_flags: Iterable[hyperframe.flags.Flag]) -> None:
    # Keyed by id(); the entry keeps the list alive, so the id cannot be reused meanwhile.
    entry = _valid.get(id(defined_flags))
    if entry is not None and entry[0] is defined_flags:
        valid = entry[1]
    else:
        valid = frozenset(flag.name for flag in defined_flags)
        if isinstance(defined_flags, list) and len(_valid) < _CACHE_LIMIT:
            _valid[id(defined_flags)] = (defined_flags, valid)
    self._valid_flags = valid  # type: ignore[assignment]  # only ever tested with `in`
    self._flags = set()


def install() -> None:
    """Swap in the cached Flags.__init__ (idempotent)."""
    hyperframe.flags.Flags.__init__ = _init  # type: ignore[method-assign]
