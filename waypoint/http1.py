"""A sans-I/O HTTP/1.1 codec: request parsing (server side), response parsing (client side).

Bytes go in through `feed()`, frozen events come out; nothing here touches a socket, so the
asyncio shell only moves bytes. Bodies are streamed as `Data` events, never buffered whole.

Strict where request smuggling lives (RFC 9112 §6.3, §11.2): Transfer-Encoding with
Content-Length -> 400; a second or comma-listed Content-Length -> 400; a non-digit length -> 400;
a Transfer-Encoding other than a final `chunked` -> 501 (request) / 502 (response); obs-fold -> 400;
bare CR or LF -> 400; a method or header name that is not a token -> 400; control characters in a
value -> 400; a header section above `max_header_bytes` (default 64 KiB) -> 431; HTTP/1.1
without exactly one Host -> 400; chunk sizes are hex digits only.

Choice of parser, measured by bench/waypoint_parsers.py (a 462-byte GET with 9 headers, a fresh
parser per request, median of rounds of 1,000, CPython 3.11 on this 2-core machine, 2026-11-23):
    httptools 0.9 (llhttp, C)     2.4 us/request  (~420k req/s)
    this module (pure Python)    11.1 us/request  (~90k req/s)
    h11 0.16 (pure Python)       28.1 us/request  (~36k req/s)
httptools is ~4.7x faster, but its response parser cannot be told that the request was HEAD (a
HEAD response with Content-Length would wait for a body that never comes), it has no header
size limit and it accepts obs-fold; h11 is strict but 2.5x slower than this module and will not
parse a pipelined request before the previous response is sent. At ~11 us the parser is a
small share of a waypoint hop (TLS dominates, design.md §9), so Weft uses its own codec: no
dependency, every rule above under our control and tested byte for byte.

On the plain listener, common requests do not come here: fastpath/ accepts a head only when
one regular expression over its bytes finds it plainly valid (a common method, origin-form
target, HTTP/1.1, `token: value` lines without control characters, one Host, at most one
decimal Content-Length, no Transfer-Encoding, Upgrade or Expect) and hands anything else, with
its connection, to this codec, so every rule above still decides what is refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

DEFAULT_MAX_HEADER_BYTES = 64 * 1024
MAX_CHUNK_LINE_BYTES = 4096  # chunk size + extensions; longer lines are an attack, not a chunk

Headers = tuple[tuple[str, str], ...]

# RFC 9110 §5.6.2 token; a header line is `name ":" OWS value OWS` (§5.1, RFC 9112 §5).
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_TOKEN_RE = re.compile(_TOKEN)
_TARGET_RE = re.compile(r"[\x21-\x7e]+")
_VERSION_RE = re.compile(r"HTTP/(\d)\.(\d)")
# Control characters other than HTAB, searched for once line breaks (CRLF) are removed, so a
# bare CR or LF is caught too.
_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_DIGITS_RE = re.compile(r"[0-9]{1,18}")
_CHUNK_SIZE_RE = re.compile(rb"([0-9A-Fa-f]{1,15})(?:;[\x09\x20-\x7e\x80-\xff]*)?")
_REASON_RE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")


class Http1Error(Exception):
    """The peer sent something this codec refuses; `status` is the reply the proxy should send."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.events: list[Event] = []  # what the same bytes completed before the error


class BodyFraming(Enum):
    """How the message body is delimited (RFC 9112 §6.3)."""

    NONE = "none"
    CONTENT_LENGTH = "content-length"
    CHUNKED = "chunked"
    UNTIL_CLOSE = "until-close"  # responses only: the body ends when the connection does


def _header(headers: Headers, name: str) -> str | None:
    for key, value in headers:
        if key == name:
            return value
    return None


@dataclass(frozen=True, slots=True)
class Request:
    """A request head. Header names are lowercase; values keep their bytes (latin-1)."""

    method: str
    target: str
    headers: Headers
    http_version: str = "1.1"
    framing: BodyFraming = BodyFraming.NONE
    content_length: int | None = None
    keep_alive: bool = True
    expects_continue: bool = False
    upgrade: str | None = None  # the Upgrade protocol, or "CONNECT" for a CONNECT request

    def header(self, name: str) -> str | None:
        """The first value of a header (name in lowercase), or None."""
        return _header(self.headers, name)


@dataclass(frozen=True, slots=True)
class Response:
    """A final (>= 200) or informational (1xx) response head."""

    status: int
    reason: str
    headers: Headers
    http_version: str = "1.1"
    framing: BodyFraming = BodyFraming.NONE
    content_length: int | None = None
    keep_alive: bool = True

    @property
    def informational(self) -> bool:
        return self.status < 200

    def header(self, name: str) -> str | None:
        return _header(self.headers, name)


@dataclass(frozen=True, slots=True)
class Data:
    """A piece of a message body, in the order received (chunk boundaries are not preserved)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    trailers: Headers = ()


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed cleanly between messages."""


@dataclass(frozen=True, slots=True)
class Upgraded:
    """The connection switched protocols (101 or CONNECT 2xx); the bytes after are opaque."""

    data: bytes


Event = Request | Response | Data | EndOfMessage | ConnectionClosed | Upgraded


class _State(Enum):
    HEAD = 1
    LENGTH_BODY = 2
    CHUNK_SIZE = 3
    CHUNK_DATA = 4
    CHUNK_END = 5
    TRAILERS = 6
    UNTIL_CLOSE_BODY = 7
    PAUSED = 8  # after an upgrade request: wait for the proxy to say whether it switched
    CLOSED = 9  # Connection: close was honoured, or the peer went away; data is ignored
    SWITCHED = 10  # opaque bytes after a switch are passed through as Upgraded events
    FAILED = 11


class _Head(NamedTuple):  # a tuple: built once per message, the cheapest record to build
    start_line: str
    headers: Headers
    content_length: int | None
    transfer_encoding: str | None
    connection: frozenset[str]
    host_count: int


class _MessageParser:
    """The parts shared by request and response parsing: head splitting and body framing."""

    _error_status = 400  # what a framing error maps to; 502 when the backend is at fault

    def __init__(self, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES) -> None:
        self.max_header_bytes = max_header_bytes
        self._buffer = bytearray()
        self._state = _State.HEAD
        self._remaining = 0
        self._scanned = 0  # bytes of the buffer already searched for the end of the head
        self._keep_alive = True

    def feed(self, data: bytes) -> list[Event]:
        """Add bytes received from the peer; return the events they complete.

        On a protocol error the events completed by the same bytes before it are on the
        error's `events`, so the request they belong to can be answered as the one that failed.
        """
        if self._state is _State.FAILED:
            raise Http1Error(self._error_status, "the connection already failed; close it")
        if self._state is _State.CLOSED:
            return []
        if self._state is _State.SWITCHED:
            return [Upgraded(data)] if data else []
        events: list[Event] = []
        state = self._state  # compared by identity: hashing an Enum member runs Python code
        if (
            not self._buffer
            and data
            and (
                state is _State.LENGTH_BODY
                or state is _State.CHUNK_DATA
                or state is _State.UNTIL_CLOSE_BODY
            )
        ):
            data = self._body_without_buffer(data, events)
        self._buffer += data
        try:
            self._run(events)
        except Http1Error as error:
            self._state = _State.FAILED
            if error.status != self._error_status and self._error_status == 502:
                # Whatever the backend got wrong, the client is owed a 502 Bad Gateway.
                error = Http1Error(502, error.message)
            error.events = events
            raise error from None
        return events

    def feed_eof(self) -> list[Event]:
        """The peer closed its side; a message cut short is an error."""
        state = self._state
        if state is _State.UNTIL_CLOSE_BODY:
            self._state = _State.CLOSED
            return [EndOfMessage(), ConnectionClosed()]
        if state in (_State.CLOSED, _State.SWITCHED, _State.PAUSED) or (
            state is _State.HEAD and not self._buffer.strip(b"\r\n")
        ):
            self._state = _State.CLOSED
            return [ConnectionClosed()]
        self._state = _State.FAILED
        raise Http1Error(self._error_status, "connection closed in the middle of a message")

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def _run(self, events: list[Event]) -> None:
        while True:
            state = self._state
            if state is _State.HEAD:
                if not self._parse_head(events):
                    return
            elif state is _State.LENGTH_BODY:
                if not self._buffer:
                    return
                take = min(self._remaining, len(self._buffer))
                events.append(Data(self._take(take)))
                self._remaining -= take
                if self._remaining == 0:
                    self._end_message(events, ())
            elif state is _State.CHUNK_SIZE:
                if not self._parse_chunk_size():
                    return
            elif state is _State.CHUNK_DATA:
                if not self._buffer:
                    return
                take = min(self._remaining, len(self._buffer))
                events.append(Data(self._take(take)))
                self._remaining -= take
                if self._remaining == 0:
                    self._state = _State.CHUNK_END
            elif state is _State.CHUNK_END:
                if len(self._buffer) < 2:
                    return
                if self._buffer[:2] != b"\r\n":
                    raise Http1Error(self._error_status, "chunk data not followed by CRLF")
                del self._buffer[:2]
                self._state = _State.CHUNK_SIZE
            elif state is _State.TRAILERS:
                if not self._parse_trailers(events):
                    return
            elif state is _State.UNTIL_CLOSE_BODY:
                if self._buffer:
                    events.append(Data(bytes(self._buffer)))
                    self._buffer.clear()
                return
            elif state is _State.CLOSED:
                self._buffer.clear()
                return
            elif state is _State.SWITCHED:
                if self._buffer:
                    events.append(Upgraded(bytes(self._buffer)))
                    self._buffer.clear()
                return
            else:  # PAUSED: keep the bytes for whoever takes over the connection
                return

    def _take(self, count: int) -> bytes:
        """The first `count` buffered bytes, removed from the buffer, copied once."""
        buffer = self._buffer
        if count == len(buffer):
            data = bytes(buffer)
            buffer.clear()
            return data
        with memoryview(buffer) as view:
            data = bytes(view[:count])
        del buffer[:count]
        return data

    def _body_without_buffer(self, data: bytes, events: list[Event]) -> bytes:
        """Body bytes that arrive with nothing buffered go out as they came (no copy through the
        buffer: a streamed body is most of the bytes a proxy moves); returns what is left."""
        state = self._state
        if state is _State.UNTIL_CLOSE_BODY:
            events.append(Data(data))
            return b""
        take = min(self._remaining, len(data))
        events.append(Data(data if take == len(data) else data[:take]))
        self._remaining -= take
        if self._remaining == 0:
            if state is _State.LENGTH_BODY:
                self._end_message(events, ())
            else:
                self._state = _State.CHUNK_END
        return data[take:] if take < len(data) else b""

    # --- head -------------------------------------------------------------------------------

    def _parse_head(self, events: list[Event]) -> bool:
        buffer = self._buffer
        # RFC 9112 §2.2: a server SHOULD ignore empty lines received before the request line.
        while buffer.startswith(b"\r\n"):
            del buffer[:2]
        if not buffer:
            return False
        end = buffer.find(b"\r\n\r\n", max(0, self._scanned - 3))
        if end < 0:
            if len(buffer) > self.max_header_bytes:
                raise Http1Error(431, f"header section above {self.max_header_bytes} bytes")
            self._scanned = len(buffer)
            return False
        if end + 4 > self.max_header_bytes:
            raise Http1Error(431, f"header section above {self.max_header_bytes} bytes")
        head_text = buffer[:end].decode("latin-1")
        del buffer[: end + 4]
        self._scanned = 0
        self._on_head(self._split_head(head_text), events)
        return True

    def _split_head(self, text: str) -> _Head:
        lines = text.split("\r\n")
        unfolded = text.replace("\r\n", "")
        # isprintable() is a quick "no control character at all"; the regex decides otherwise
        # (HTAB and bytes above 0x7f are allowed but are not printable).
        if not unfolded.isprintable() and _CONTROL_RE.search(unfolded) is not None:
            raise Http1Error(400, "bare CR or LF or a control character in the header section")
        headers: list[tuple[str, str]] = []
        content_length: int | None = None
        transfer_encoding: str | None = None
        connection: set[str] = set()
        host_count = 0
        for line in lines[1:]:
            raw_name, colon, value = line.partition(":")
            name = _LOWER_NAMES.get(raw_name)
            if name is None or not colon:
                name = _validate_header_name(raw_name, line, colon)
            value = value.strip(" \t")
            headers.append((name, value))
            if name not in _FRAMING_NAMES:
                continue
            if name == "content-length":
                if content_length is not None:
                    raise Http1Error(400, "more than one Content-Length header")
                if _DIGITS_RE.fullmatch(value) is None:
                    raise Http1Error(400, f"Content-Length is not a decimal length: {value!r}")
                content_length = int(value)
            elif name == "transfer-encoding":
                transfer_encoding = (
                    value if transfer_encoding is None else f"{transfer_encoding}, {value}"
                )
            elif name == "connection":
                connection.update(token.strip().lower() for token in value.split(","))
            elif name == "host":
                host_count += 1
        if transfer_encoding is not None and content_length is not None:
            raise Http1Error(400, "both Transfer-Encoding and Content-Length (request smuggling)")
        return _Head(
            lines[0], tuple(headers), content_length, transfer_encoding, frozenset(connection),
            host_count,
        )  # fmt: skip

    def _chunked_or_refuse(self, transfer_encoding: str, refuse_status: int) -> None:
        codings = [c.strip().lower() for c in transfer_encoding.split(",")]
        if codings[-1] != "chunked" or codings.count("chunked") != 1:
            raise Http1Error(refuse_status, f"unsupported Transfer-Encoding {transfer_encoding!r}")
        if len(codings) > 1:
            # We do not decode gzip etc.; forwarding them re-framed would corrupt the body.
            raise Http1Error(refuse_status, f"unsupported Transfer-Encoding {transfer_encoding!r}")

    def _on_head(self, head: _Head, events: list[Event]) -> None:
        raise NotImplementedError

    def _start_body(self, framing: BodyFraming, length: int | None) -> None:
        if framing is BodyFraming.CONTENT_LENGTH and length:
            self._state = _State.LENGTH_BODY
            self._remaining = length
        elif framing is BodyFraming.CHUNKED:
            self._state = _State.CHUNK_SIZE
        elif framing is BodyFraming.UNTIL_CLOSE:
            self._state = _State.UNTIL_CLOSE_BODY

    # --- chunked body -----------------------------------------------------------------------

    def _parse_chunk_size(self) -> bool:
        end = self._buffer.find(b"\r\n", 0, MAX_CHUNK_LINE_BYTES + 2)
        if end < 0:
            if len(self._buffer) > MAX_CHUNK_LINE_BYTES:
                raise Http1Error(self._error_status, "chunk size line too long")
            return False
        matched = _CHUNK_SIZE_RE.fullmatch(self._buffer, 0, end)
        if matched is None:
            raise Http1Error(self._error_status, "malformed chunk size line")
        size = int(matched.group(1), 16)
        del self._buffer[: end + 2]
        if size == 0:
            self._state = _State.TRAILERS
        else:
            self._remaining = size
            self._state = _State.CHUNK_DATA
        return True

    def _parse_trailers(self, events: list[Event]) -> bool:
        if self._buffer[:2] == b"\r\n":
            del self._buffer[:2]
            self._end_message(events, ())
            return True
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > self.max_header_bytes:
                raise Http1Error(431, f"trailer section above {self.max_header_bytes} bytes")
            return False
        text = "\r\n" + self._buffer[:end].decode("latin-1")  # no start line: prepend an empty one
        del self._buffer[: end + 4]
        head = self._split_head(text)
        self._end_message(events, head.headers)
        return True

    def _end_message(self, events: list[Event], trailers: Headers) -> None:
        events.append(EndOfMessage(trailers))
        self._state = _State.HEAD if self._keep_alive else _State.CLOSED


class RequestParser(_MessageParser):
    """Server side: parses requests from a client, pipelined requests included."""

    def __init__(self, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES) -> None:
        super().__init__(max_header_bytes)
        self._pause_after = False  # an upgrade or CONNECT request waits for the backend's answer

    def _on_head(self, head: _Head, events: list[Event]) -> None:
        parts = head.start_line.split(" ")
        if len(parts) != 3:
            raise Http1Error(400, f"malformed request line {head.start_line[:64]!r}")
        method, target, version_text = parts
        if method not in _KNOWN_METHODS and _TOKEN_RE.fullmatch(method) is None:
            raise Http1Error(400, f"method is not a token: {method[:32]!r}")
        if _TARGET_RE.fullmatch(target) is None:
            raise Http1Error(400, "request target is empty or has invalid characters")
        version = "1.1" if version_text == "HTTP/1.1" else _parse_version(version_text)
        if version == "1.1" and head.host_count != 1:
            raise Http1Error(400, f"HTTP/1.1 request needs exactly one Host, got {head.host_count}")
        if version == "1.0" and head.host_count > 1:
            raise Http1Error(400, "more than one Host header")
        framing = BodyFraming.NONE
        if head.transfer_encoding is not None:
            if version == "1.0":
                raise Http1Error(400, "Transfer-Encoding in an HTTP/1.0 request")
            self._chunked_or_refuse(head.transfer_encoding, 501)
            framing = BodyFraming.CHUNKED
        elif head.content_length is not None:
            framing = BodyFraming.CONTENT_LENGTH
        keep_alive = _keep_alive(version, head.connection)
        upgrade: str | None = None
        if method == "CONNECT":
            upgrade = "CONNECT"
        elif "upgrade" in head.connection:
            upgrade = _header(head.headers, "upgrade")
        expect = _header(head.headers, "expect")
        request = Request(
            method=method,
            target=target,
            headers=head.headers,
            http_version=version,
            framing=framing,
            content_length=head.content_length,
            keep_alive=keep_alive,
            expects_continue=version == "1.1" and expect is not None
            and expect.lower() == "100-continue",
            upgrade=upgrade,
        )  # fmt: skip
        events.append(request)
        self._keep_alive = keep_alive
        self._pause_after = upgrade is not None
        self._start_body(framing, head.content_length)
        if self._state is _State.HEAD:
            self._end_message(events, ())

    def _end_message(self, events: list[Event], trailers: Headers) -> None:
        super()._end_message(events, trailers)
        if self._pause_after and self._state is _State.HEAD:
            self._state = _State.PAUSED

    def switch_protocol(self) -> list[Event]:
        """The backend accepted the upgrade: return the bytes that followed the request head."""
        self._state = _State.SWITCHED
        events: list[Event] = []
        self._run(events)
        return events

    def resume(self) -> list[Event]:
        """The backend refused the upgrade: go on parsing requests from the buffered bytes."""
        if self._state is _State.PAUSED:
            self._state = _State.HEAD
            self._pause_after = False
        events: list[Event] = []
        try:
            self._run(events)
        except Http1Error:
            self._state = _State.FAILED
            raise
        return events


class ResponseParser(_MessageParser):
    """Client side: parses the backend's responses; call `expect(method)` before each request."""

    _error_status = 502

    def __init__(self, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES) -> None:
        super().__init__(max_header_bytes)
        self._methods: list[str] = []

    def expect(self, method: str) -> None:
        """Note a request was sent: HEAD and CONNECT change how its response is framed."""
        self._methods.append(method)

    def _on_head(self, head: _Head, events: list[Event]) -> None:
        version_text, _, rest = head.start_line.partition(" ")
        status_text, _, reason = rest.partition(" ")
        try:
            version = "1.1" if version_text == "HTTP/1.1" else _parse_version(version_text)
        except Http1Error as error:
            raise Http1Error(502, error.message) from None
        if len(status_text) != 3 or not status_text.isdigit() or status_text[0] == "0":
            raise Http1Error(502, f"malformed status line {head.start_line[:64]!r}")
        if _REASON_RE.fullmatch(reason) is None:
            raise Http1Error(502, "invalid reason phrase")
        if not self._methods:
            raise Http1Error(502, "response received with no request outstanding")
        status = int(status_text)
        method = self._methods[0]
        if 100 <= status < 200:
            events.append(Response(status, reason, head.headers, version, keep_alive=True))
            if status == 101:
                self._switch(events)
            return
        self._methods.pop(0)
        if method == "CONNECT" and 200 <= status < 300:
            events.append(Response(status, reason, head.headers, version))
            self._switch(events)
            return
        framing = BodyFraming.UNTIL_CLOSE
        length = head.content_length
        if method == "HEAD" or status in (204, 304):
            framing, length = BodyFraming.NONE, None
        elif head.transfer_encoding is not None:
            self._chunked_or_refuse(head.transfer_encoding, 502)
            framing = BodyFraming.CHUNKED
        elif length is not None:
            framing = BodyFraming.CONTENT_LENGTH
        keep_alive = (
            _keep_alive(version, head.connection) and framing is not BodyFraming.UNTIL_CLOSE
        )
        events.append(Response(status, reason, head.headers, version, framing, length, keep_alive))
        self._keep_alive = keep_alive
        self._start_body(framing, length)
        if self._state is _State.HEAD:
            self._end_message(events, ())

    def _switch(self, events: list[Event]) -> None:
        self._state = _State.SWITCHED
        if self._buffer:
            events.append(Upgraded(bytes(self._buffer)))
            self._buffer.clear()


# Header names already validated, mapped to their lowercase form: names repeat across requests,
# and a dictionary hit is several times cheaper than a regular expression. Bounded so a client
# sending endless distinct names cannot grow it.
_LOWER_NAMES: dict[str, str] = {}
_LOWER_NAMES_LIMIT = 2048
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
_FRAMING_NAMES = frozenset({"content-length", "transfer-encoding", "connection", "host"})


def _validate_header_name(raw_name: str, line: str, colon: str) -> str:
    if not colon or _TOKEN_RE.fullmatch(raw_name) is None:
        if line[:1] in (" ", "\t"):
            raise Http1Error(400, "obsolete line folding (obs-fold) is not accepted")
        raise Http1Error(400, f"malformed header line {line[:64]!r}")
    name = raw_name.lower()
    if len(_LOWER_NAMES) < _LOWER_NAMES_LIMIT:
        _LOWER_NAMES[raw_name] = name
    return name


def _parse_version(text: str) -> str:
    matched = _VERSION_RE.fullmatch(text)
    if matched is None:
        raise Http1Error(400, f"malformed HTTP version {text[:16]!r}")
    if matched.group(1) != "1":
        raise Http1Error(505, f"HTTP version {text} is not supported here")
    return "1.1" if matched.group(2) != "0" else "1.0"


def _keep_alive(version: str, connection: frozenset[str]) -> bool:
    if version == "1.0":
        return "keep-alive" in connection
    return "close" not in connection


# --- serialization ----------------------------------------------------------------------------

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"
_UNSAFE_VALUE_RE = re.compile(r"[\x00\r\n]")


def _serialize_headers(parts: list[str], headers: Iterable[tuple[str, str]]) -> bytes:
    lines = len(parts) + 1  # line breaks: the start line's (in parts, checked) and the last one
    for name, value in headers:
        # Refuse header injection: a name must be a token (names the parser accepted are known
        # tokens), and no value may start a new line (checked on the whole text below).
        if name not in _SENDABLE_NAMES and not _sendable_name(name):
            raise ValueError(f"header {name!r} cannot be sent: invalid name")
        parts.append(f"{name}: {value}\r\n")
        lines += 1
    parts.append("\r\n")
    text = "".join(parts)
    # Every CR and LF in the text must be one of the line breaks written above: a CR, LF or
    # CRLF inside a value adds to these counts; one pass each in C instead of a regex per value.
    if (
        text.count("\r\n") != lines
        or text.count("\r") != lines
        or (text.count("\n") != lines or "\0" in text)
    ):
        raise ValueError("a header cannot be sent: CR/LF/NUL in its value")
    return text.encode("latin-1")


# Header names known to be tokens: the parser's lowercase names and those checked once here.
_SENDABLE_NAMES: set[str] = set()


def _sendable_name(name: str) -> bool:
    if _TOKEN_RE.fullmatch(name) is None:
        return False
    if len(_SENDABLE_NAMES) < _LOWER_NAMES_LIMIT:
        _SENDABLE_NAMES.add(name)
    return True


def serialize_request_head(
    method: str, target: str, headers: Iterable[tuple[str, str]], http_version: str = "1.1"
) -> bytes:
    """The bytes of a request line and header section; the caller writes framing headers."""
    if _TOKEN_RE.fullmatch(method) is None or _TARGET_RE.fullmatch(target) is None:
        raise ValueError(f"cannot send request line {method!r} {target!r}")
    return _serialize_headers([f"{method} {target} HTTP/{http_version}\r\n"], headers)


def serialize_response_head(
    status: int, reason: str, headers: Iterable[tuple[str, str]], http_version: str = "1.1"
) -> bytes:
    """The bytes of a status line and header section; the caller writes framing headers."""
    if _UNSAFE_VALUE_RE.search(reason) is not None:
        raise ValueError(f"cannot send reason phrase {reason!r}")
    return _serialize_headers([f"HTTP/{http_version} {status} {reason}\r\n"], headers)


def encode_chunk(data: bytes) -> bytes:
    """One chunk of a chunked body; empty data encodes nothing (the last chunk is LAST_CHUNK)."""
    if not data:
        return b""
    return b"%x\r\n%b\r\n" % (len(data), data)
