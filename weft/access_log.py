"""Access logs: a fast JSON line formatter generated from a dataclass, and a buffered line writer.

The agent writes a line per connection and the waypoint one per request, so both parts are on
the data path. `json_line_formatter` generates, once, a function that writes a record as the text
json.dumps would give (sorted keys, the caller's separators), with each string through json's C
escaper and numbers written as json writes them: a single f-string, a fraction of the encoder's
time. `BufferedLog` collects lines and writes them in batches (per event-loop iteration, or per
interval and line count), as whole lines of at most PIPE_BUF bytes per write, so processes sharing a
pipe never interleave inside a line; a stream that cannot be written costs its lines, never the
caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import select
import sys
import typing
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import MISSING, dataclass, fields
from json.encoder import encode_basestring_ascii
from select import PIPE_BUF
from typing import Any, TextIO

log = logging.getLogger(__name__)

SPACED = (", ", ": ")  # json.dumps' default separators
COMPACT = (",", ":")
FLOAT_DIGITS = 3  # floats are durations in milliseconds: written to the microsecond


def json_line_formatter(
    record_type: type,
    *,
    separators: tuple[str, str] = SPACED,
    omit_empty: bool = False,
    exclude: Collection[str] = (),
    expressions: Mapping[str, str] | None = None,
    names: Mapping[str, Any] | None = None,
) -> Callable[[Any], str]:
    """A function writing its argument `r`, a `record_type` dataclass, as one JSON object.

    The text is json.dumps({field: value}, sort_keys=True, separators=separators) of the fields
    not in `exclude`, floats rounded to FLOAT_DIGITS places. Fields typed str, int, float and
    tuple[str, ...] are supported. With `omit_empty`, a field holding "" or () is left out (a
    number never is). With `expressions` (field -> a Python expression over `r` and `names`,
    double quotes only), `r` is whatever those expressions read, and a field not listed is
    written as its dataclass default: a line made from a plain tuple, with no record built.
    """
    item_sep, key_sep = separators
    hints = typing.get_type_hints(record_type)
    known = {f.name for f in fields(record_type)}
    for option, named in (("exclude", exclude), ("expressions", expressions or {})):
        if unknown := sorted(set(named) - known):
            raise ValueError(f"{option} names no field of {record_type.__name__}: {unknown}")
    namespace: dict[str, Any] = {"esc": encode_basestring_ascii, **(names or {})}
    parts: list[tuple[bool, str]] = []  # (left out when empty, f-string source of key and value)
    for item in sorted(fields(record_type), key=lambda f: f.name):
        name = item.name
        if name in exclude:
            continue
        key = f'"{name}"{key_sep}'
        if expressions is not None and name not in expressions:
            if item.default is MISSING:
                raise ValueError(f"expressions must name {name!r}: it has no default")
            if omit_empty and item.default in ("", ()):
                continue
            constant = _json_constant(item.default, separators)
            parts.append((False, _literal(key + constant)))
            continue
        expression = f"r.{name}" if expressions is None else f"({expressions[name]})"
        kind = hints[name]
        if kind is str:
            value = f"esc({expression})"
        elif kind == tuple[str, ...]:
            value = f'"[" + _item_sep.join(map(esc, {expression})) + "]"'
            namespace["_item_sep"] = item_sep
        elif kind is int:  # format "d": the digits json writes (a non-integer is an error)
            parts.append((False, _literal(key) + "{" + expression + ":d}"))
            continue
        elif kind is float:  # repr: how json writes a float
            parts.append((False, _literal(key) + f"{{round({expression}, {FLOAT_DIGITS})!r}}"))
            continue
        else:
            raise TypeError(
                f"{record_type.__name__}.{name} is {kind}: a JSON line field must be str, int, "
                "float or tuple[str, ...]"
            )
        if omit_empty:  # the key (with its separator) and value, or nothing
            key_name = f"_key{len(parts)}"
            namespace[key_name] = item_sep + key
            parts.append((True, f'{{{key_name} + {value} if {expression} else ""}}'))
        else:
            parts.append((False, _literal(key) + "{" + value + "}"))
    source = _line_source(parts, item_sep)
    exec(compile(source, f"<{record_type.__name__} access line>", "exec"), namespace)
    formatter: Callable[[Any], str] = namespace["line"]
    return formatter


def _line_source(parts: list[tuple[bool, str]], item_sep: str) -> str:
    """The generated function's source. An optional part carries its own leading separator; so
    does every other part but the first, unless an optional part comes before that one: then
    every part carries one, and the line's first separator is cut off."""
    sep = _literal(item_sep)
    if parts and not parts[0][0]:
        body = parts[0][1] + "".join(text if opt else sep + text for opt, text in parts[1:])
        return f"def line(r):\n    return f'{{{{{body}}}}}'\n"
    body = "".join(text if opt else sep + text for opt, text in parts)
    return f"def line(r):\n    return '{{' + f'{body}'[{len(item_sep)}:] + '}}'\n"


def _json_constant(value: Any, separators: tuple[str, str]) -> str:
    if isinstance(value, tuple):
        value = list(value)
    elif isinstance(value, float):
        value = round(value, FLOAT_DIGITS)
    return json.dumps(value, separators=separators)


def _literal(text: str) -> str:
    """`text` as it is written inside a generated f'...' string."""
    if not (text.isascii() and text.isprintable()):
        raise ValueError(f"access-log separators and defaults must be printable ASCII: {text!r}")
    return text.replace("\\", "\\\\").replace("'", "\\'").replace("{", "{{").replace("}", "}}")


@dataclass(frozen=True)
class FlushPolicy:
    """When a BufferedLog writes what it holds: at the end of the event-loop iteration that
    buffered the first line (`interval_s` None), or `interval_s` later; and at once when more
    than `max_lines` are waiting (a count, not bytes: no len() per line on the caller's path)."""

    interval_s: float | None = None
    max_lines: int = 160  # about 100 KiB of access-log lines (600-800 bytes each)

    def __post_init__(self) -> None:
        if self.interval_s is not None and not self.interval_s > 0:
            raise ValueError(f"a flush interval must be positive seconds, not {self.interval_s}")
        if self.max_lines < 1:
            raise ValueError(f"max_lines must be at least 1, not {self.max_lines}")


PER_ITERATION = FlushPolicy()  # one write per loop turn, however many connections closed in it


class BufferedLog:
    """Lines written through a buffer, in batches, by `policy`; everything on `flush()`.

    `write_later(format, args)` keeps a line's facts and formats it at the flush, off the
    caller's path. A stream with a file descriptor gets writes of whole lines of at most
    PIPE_BUF bytes (after its own buffer is flushed, so what was printed before goes first),
    each atomic on a pipe. Without a running event loop, a line is written at once. If the
    stream cannot be written (closed, a broken pipe) the batch is lost: counted in `dropped`
    and warned about once, never raised to the writer of a line.
    """

    def __init__(self, stream: TextIO | None, policy: FlushPolicy) -> None:
        self.stream = stream  # None: sys.stderr at the flush (where it is then)
        self.policy = policy
        self.dropped = 0
        self._lines: list[Any] = []  # str, or (format, args) when _deferred
        self._deferred = False
        self._room = policy.max_lines
        self._handle: asyncio.Handle | None = None

    def write(self, line: str) -> None:
        self._lines.append(line)
        self._room -= 1
        if self._handle is None or self._room < 0:
            self._schedule()

    def write_later(self, format_line: Callable[..., str], args: tuple[Any, ...]) -> None:
        """Buffer a line that `format_line(*args)` will produce at the flush."""
        self._lines.append((format_line, args))
        self._deferred = True
        self._room -= 1
        if self._handle is None or self._room < 0:
            self._schedule()

    def _schedule(self) -> None:
        if self._room < 0:
            self.flush()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop to come back to: write now
            self.flush()
            return
        if self.policy.interval_s is None:
            self._handle = loop.call_soon(self.flush)
        else:
            self._handle = loop.call_later(self.policy.interval_s, self.flush)

    def flush(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if not self._lines:
            return
        lines, self._lines, self._room = self._lines, [], self.policy.max_lines
        if self._deferred:
            self._deferred = False
            lines = [item if isinstance(item, str) else item[0](*item[1]) for item in lines]
        text = "\n".join(lines) + "\n"
        stream = self.stream or sys.stderr
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):  # not a file (a StringIO in tests)
            fd = -1
        data = b""
        done = 0  # bytes of data written
        try:
            if fd < 0:
                stream.write(text)
                stream.flush()
                return
            stream.flush()  # whatever was printed before goes first
            data = text.encode("utf-8", "backslashreplace")
            size = len(data)
            if size <= PIPE_BUF:  # the usual batch: one write (made here: this runs per batch)
                try:
                    written = os.write(fd, data)
                except BlockingIOError:
                    written = 0
                if written < size:
                    _write_all(fd, data[written:])
                return
            for piece in whole_lines(data, PIPE_BUF):
                _write_all(fd, piece)
                done += len(piece)
        except (OSError, ValueError) as err:  # closed, a broken pipe, a full disk
            self._lost(data.count(b"\n", done) if data else len(lines), err)

    def _lost(self, count: int, err: Exception) -> None:
        first = self.dropped == 0
        self.dropped += count
        if first:  # the log may go to that same stream: a failure to warn is not raised either
            with contextlib.suppress(OSError, ValueError):
                log.warning(
                    "access-log lines cannot be written (%r); dropping them until the stream "
                    "takes writes again",
                    err,
                )


def whole_lines(data: bytes, limit: int) -> Iterator[bytes]:
    """`data` cut after newlines into pieces of at most `limit` bytes (a longer line alone)."""
    start = 0
    while start < len(data):
        end = data.rfind(b"\n", start, start + limit)
        if end < 0:
            end = data.find(b"\n", start + limit)
            end = len(data) - 1 if end < 0 else end
        yield data[start : end + 1]
        start = end + 1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:  # a non-blocking descriptor: wait until it takes more
            select.select([], [fd], [], 1.0)
            continue
        view = view[written:]
