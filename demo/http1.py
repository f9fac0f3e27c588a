"""Sans-I/O HTTP/1.1 framing for the demo services: bytes in, messages out, bytes to send."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Literal

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 8 * 1024 * 1024
_CRLF = b"\r\n"
_HEAD_END = b"\r\n\r\n"
# RFC 9110 token characters: a method or header name made of anything else is malformed.
_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_VERSION = re.compile(rb"^HTTP/1\.[01]$")
_ANY_VERSION = re.compile(rb"^HTTP/[0-9]\.[0-9]$")


class ParseError(Exception):
    """The peer sent bytes that are not valid HTTP/1.1; `status` is what a server should answer."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class _Message:
    """What requests and responses share: header lookup and whether the connection stays open."""

    version: str
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str, default: str | None = None) -> str | None:
        return _find_header(self.headers, name, default)

    @property
    def keep_alive(self) -> bool:
        return _keep_alive(self.version, self.header("connection"))


@dataclass(frozen=True)
class Request(_Message):
    """One complete HTTP/1.x request."""

    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""

    @property
    def path(self) -> str:
        """The target's path, also from the absolute form (`http://host/p`) a proxy may send."""
        target = self.target
        if target.startswith(("http://", "https://")):
            slash = target.find("/", target.index("//") + 2)
            target = target[slash:] if slash >= 0 else "/"
        return target.split("?", 1)[0]


@dataclass(frozen=True)
class Response(_Message):
    """One complete HTTP/1.x response."""

    status: int
    reason: str
    version: str
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""


def _find_header(
    headers: tuple[tuple[str, str], ...], name: str, default: str | None
) -> str | None:
    wanted = name.lower()
    for key, value in headers:
        if key == wanted:
            return value
    return default


def _keep_alive(version: str, connection: str | None) -> bool:
    tokens = {t.strip().lower() for t in (connection or "").split(",")}
    if version == "HTTP/1.0":
        return "keep-alive" in tokens
    return "close" not in tokens


@dataclass
class _Head:
    start_line: tuple[str, str, str]
    headers: tuple[tuple[str, str], ...]


@dataclass
class MessageParser:
    """Splits a byte stream into requests (kind="request") or responses (kind="response").

    Feed bytes with `feed`, call `feed_eof` when the peer closes, and collect complete messages
    with `next_message`, which returns None until one is complete. After a ParseError the
    connection must be closed: framing is lost.
    """

    kind: Literal["request", "response"]
    _buffer: bytearray = field(default_factory=bytearray)
    _head: _Head | None = None
    _eof: bool = False
    _chunks: bytearray = field(default_factory=bytearray)
    _chunk_pos: int = 0

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def feed_eof(self) -> None:
        self._eof = True

    @property
    def has_partial_message(self) -> bool:
        return self._head is not None or bool(self._buffer)

    def next_message(self) -> Request | Response | None:
        if self._head is None:
            self._head = self._parse_head()
            if self._head is None:
                return None
        body = self._parse_body(self._head)
        if body is None:
            return None
        head, self._head = self._head, None
        first, second, third = head.start_line
        if self.kind == "request":
            return Request(first, second, third, head.headers, body)
        return Response(int(second), third, first, head.headers, body)

    def _parse_head(self) -> _Head | None:
        # Tolerate blank lines before a request line (RFC 9112 section 2.2).
        while self._buffer.startswith(_CRLF):
            del self._buffer[:2]
        end = self._buffer.find(_HEAD_END)
        if end < 0:
            if len(self._buffer) > MAX_HEAD_BYTES:
                raise ParseError("request head exceeds 64 KiB", 431)
            if self._eof and self._buffer:
                raise ParseError("connection closed in the middle of a message head")
            return None
        if end > MAX_HEAD_BYTES:
            raise ParseError("request head exceeds 64 KiB", 431)
        raw = bytes(self._buffer[:end])
        del self._buffer[: end + len(_HEAD_END)]
        lines = raw.split(_CRLF)
        start_line = self._parse_start_line(lines[0])
        headers = tuple(_parse_header_line(line) for line in lines[1:])
        return _Head(start_line, headers)

    def _parse_start_line(self, line: bytes) -> tuple[str, str, str]:
        parts = line.split(b" ", 2)
        if self.kind == "request":
            if len(parts) != 3 or not _TOKEN.match(parts[0]) or not parts[1]:
                raise ParseError(f"malformed request line {line[:80]!r}")
            if not _VERSION.match(parts[2]):
                if _ANY_VERSION.match(parts[2]):
                    raise ParseError(f"unsupported HTTP version {parts[2][:20]!r}", 505)
                raise ParseError(f"malformed request line {line[:80]!r}")
            if any(c <= 0x20 or c >= 0x7F for c in parts[1]):
                raise ParseError("request target contains whitespace, control or non-ASCII bytes")
            return parts[0].decode("ascii"), parts[1].decode("ascii"), parts[2].decode("ascii")
        if len(parts) < 2 or not _VERSION.match(parts[0]):
            raise ParseError(f"malformed status line {line[:80]!r}")
        if len(parts[1]) != 3 or not parts[1].isdigit():
            raise ParseError(f"malformed status code {parts[1][:10]!r}")
        reason = parts[2].decode("latin-1") if len(parts) == 3 else ""
        return parts[0].decode("ascii"), parts[1].decode("ascii"), reason

    def _parse_body(self, head: _Head) -> bytes | None:
        headers = head.headers
        transfer_encoding = _find_header(headers, "transfer-encoding", None)
        lengths = [v for k, v in headers if k == "content-length"]
        if transfer_encoding is not None:
            if lengths:
                # Both framings at once is the request-smuggling shape: refuse it.
                raise ParseError("both Transfer-Encoding and Content-Length are present")
            if transfer_encoding.strip().lower() != "chunked":
                raise ParseError(f"unsupported Transfer-Encoding {transfer_encoding!r}", 501)
            return self._parse_chunked()
        if lengths:
            length = _parse_content_length(lengths)
            if len(self._buffer) < length:
                if self._eof:
                    raise ParseError("connection closed before the whole body arrived")
                return None
            body = bytes(self._buffer[:length])
            del self._buffer[:length]
            return body
        if self.kind == "request" or _response_has_no_body(int(head.start_line[1])):
            return b""
        # A response without framing runs until the server closes the connection.
        if not self._eof:
            if len(self._buffer) > MAX_BODY_BYTES:
                raise ParseError("response body exceeds 8 MiB")
            return None
        body = bytes(self._buffer)
        self._buffer.clear()
        return body

    def _parse_chunked(self) -> bytes | None:
        buffer = self._buffer
        while True:
            line_end = buffer.find(_CRLF, self._chunk_pos)
            if line_end < 0:
                self._need_more("chunk size line")
                return None
            size_field = bytes(buffer[self._chunk_pos : line_end]).split(b";", 1)[0].strip()
            try:
                size = int(size_field, 16)
            except ValueError:
                raise ParseError(f"malformed chunk size {size_field[:20]!r}") from None
            if size < 0 or len(self._chunks) + size > MAX_BODY_BYTES:
                raise ParseError("chunked body exceeds 8 MiB", 413)
            data_start = line_end + 2
            if size == 0:
                trailer_end = buffer.find(_HEAD_END, line_end)
                if buffer[data_start : data_start + 2] == _CRLF:
                    consumed = data_start + 2
                elif trailer_end >= 0:
                    consumed = trailer_end + 4
                else:
                    self._need_more("chunked trailer")
                    return None
                body = bytes(self._chunks)
                del buffer[:consumed]
                self._chunks.clear()
                self._chunk_pos = 0
                return body
            if len(buffer) < data_start + size + 2:
                self._need_more("chunk data")
                return None
            if buffer[data_start + size : data_start + size + 2] != _CRLF:
                raise ParseError("chunk data is not followed by CRLF")
            self._chunks += buffer[data_start : data_start + size]
            self._chunk_pos = data_start + size + 2

    def _need_more(self, what: str) -> None:
        if self._eof:
            raise ParseError(f"connection closed in the middle of the {what}")
        if self._chunk_pos > MAX_BODY_BYTES + MAX_HEAD_BYTES:
            raise ParseError("chunked body exceeds 8 MiB", 413)


def _parse_header_line(line: bytes) -> tuple[str, str]:
    name, sep, value = line.partition(b":")
    if not sep or not _TOKEN.match(name):
        # Covers obsolete line folding too (a line starting with whitespace): RFC 9112 says reject.
        raise ParseError(f"malformed header line {line[:80]!r}")
    if any(c in b"\r\n\x00" for c in value):
        raise ParseError(f"header {name.decode('ascii')!r} contains control bytes")
    return name.decode("ascii").lower(), value.strip(b" \t").decode("latin-1")


def _parse_content_length(values: list[str]) -> int:
    distinct = {v.strip() for v in values}
    if len(distinct) != 1:
        raise ParseError("conflicting Content-Length headers")
    value = distinct.pop()
    if not value.isdigit():
        raise ParseError(f"malformed Content-Length {value[:20]!r}")
    length = int(value)
    if length > MAX_BODY_BYTES:
        raise ParseError("body exceeds 8 MiB", 413)
    return length


def _response_has_no_body(status: int) -> bool:
    return 100 <= status < 200 or status in (204, 304)


def reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def encode_response(
    status: int,
    headers: list[tuple[str, str]] | tuple[tuple[str, str], ...] = (),
    body: bytes = b"",
    *,
    keep_alive: bool = True,
) -> bytes:
    """Serialize a response framed by Content-Length, with the Connection header it implies."""
    lines = [f"HTTP/1.1 {status} {reason_phrase(status)}"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines.append(f"content-length: {len(body)}")
    if not keep_alive:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def encode_request(
    method: str,
    target: str,
    host: str,
    headers: list[tuple[str, str]] | tuple[tuple[str, str], ...] = (),
    body: bytes = b"",
) -> bytes:
    """Serialize a keep-alive request; Content-Length is sent only when there is a body."""
    lines = [f"{method} {target} HTTP/1.1", f"host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
