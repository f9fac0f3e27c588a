"""The backend side of the fast path: a pooled connection relaying each response to its client."""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING

from waypoint.fastpath.heads import CHUNKED, LENGTH, NO_BODY, recognize_response
from waypoint.http1 import LAST_CHUNK, encode_chunk

if TYPE_CHECKING:
    from waypoint.fastpath.front import FastFront
    from waypoint.fastpath.pool import FastPool

_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})(?:;[\x09\x20-\x7e\x80-\xff]*)?\r\n")
_MAX_CHUNK_LINE = 4096

HEAD, BODY, CHUNK_LINE, CHUNK_DATA, CHUNK_CRLF, TRAILERS, UNTIL_EOF, FREE = range(8)
MAX_RESPONSE_HEAD = 64 * 1024


class FastUpstream(asyncio.Protocol):
    """A keep-alive connection to an endpoint: sends a request head, passes the response on."""

    def __init__(self, pool: FastPool, endpoint: str) -> None:
        self.pool = pool
        self.endpoint = endpoint
        self.transport: asyncio.Transport | None = None
        self.alive = True
        self._front: FastFront | None = None
        self._state = FREE
        self._buf = b""
        self._left = 0
        self._sent = 0  # body bytes passed to the client
        self._head_only = False
        self._reusable = True
        self.client_paused = False  # we paused the client's reading (backend slow to read)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, front: FastFront, data: bytes, head_only: bool) -> None:
        self._front = front
        self._state = HEAD
        self._buf = b""
        self._sent = 0
        self._head_only = head_only
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        self.alive = False
        if self.transport is not None:
            self.transport.close()

    def abandon(self) -> None:
        """The client went away mid-exchange: this connection's state is unknown; close it."""
        self._front = None
        self.close()

    # --- asyncio.Protocol ------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        front = self._front
        if front is None:
            self.close()  # bytes nobody asked for
            return
        state = self._state
        if state is BODY:
            left = self._left
            if len(data) < left:
                self._left = left - len(data)
                self._sent += len(data)
                front.write(data)
                return
            if len(data) > left:
                self._reusable = False  # more than the response: the connection is confused
                data = data[:left]
            self._sent += left
            front.write(data)
            self._done()
        elif state is HEAD:
            self._head(self._buf + data if self._buf else data, front)
        elif state is UNTIL_EOF:
            self._sent += len(data)
            front.write(encode_chunk(data))
        else:
            self._chunked(data, front)

    def _head(self, buf: bytes, front: FastFront) -> None:
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_RESPONSE_HEAD:
                    self._fail_before_head()
                else:
                    self._buf = buf
                return
            head, rest = buf[: end + 4], buf[end + 4 :]
            parsed = recognize_response(head, self._head_only)
            if parsed is None:
                self._fail_before_head()
                return
            status, framing, length, reusable, out = parsed
            if status >= 200:
                break
            if status == 101:  # never asked for: the fast path sends no Upgrade
                self._fail_before_head()
                return
            buf = rest  # 1xx: dropped (the waypoint answers 100-continue itself)
        self._buf = b""
        self._reusable = reusable
        front.response_started(status)
        if framing is LENGTH:
            body = rest[:length]
            if len(rest) > length:
                self._reusable = False
            self._sent = len(body)
            front.write(out + body)
            self._left = length - len(body)
            if self._left:
                self._state = BODY
            else:
                self._done()
        elif framing is NO_BODY:
            if rest:
                self._reusable = False
            front.write(out)
            self._done()
        elif framing is CHUNKED:
            front.write(out)
            self._state = CHUNK_LINE
            if rest:
                self._chunked(rest, front)
        else:
            front.write(out + encode_chunk(rest))
            self._sent = len(rest)
            self._state = UNTIL_EOF

    def _chunked(self, data: bytes, front: FastFront) -> None:
        """Pass a chunked body through as it is, following its framing to find its end."""
        position, size = 0, len(data)
        while position < size:
            state = self._state
            if state is CHUNK_DATA:
                take = min(self._left, size - position)
                position += take
                self._left -= take
                if not self._left:
                    self._state = CHUNK_CRLF
                continue
            newline = data.find(b"\n", position)
            if newline < 0:
                self._buf += data[position:]
                position = size
                if len(self._buf) > _MAX_CHUNK_LINE:
                    self._fail_after_head()
                    return
                break
            line = self._buf + data[position : newline + 1]
            self._buf = b""
            position = newline + 1
            if state is CHUNK_LINE:
                matched = _CHUNK_SIZE.fullmatch(line)
                if matched is None:
                    self._fail_after_head()
                    return
                self._left = int(matched.group(1), 16)
                self._state = CHUNK_DATA if self._left else TRAILERS
            elif state is CHUNK_CRLF:
                if line != b"\r\n":
                    self._fail_after_head()
                    return
                self._state = CHUNK_LINE
            elif line == b"\r\n":  # TRAILERS: the empty line ends the message
                if position < size:
                    self._reusable = False
                self._sent += position
                front.write(data[:position])
                self._done()
                return
            elif not line.endswith(b"\r\n") or len(line) > _MAX_CHUNK_LINE:
                self._fail_after_head()
                return
        self._sent += size
        front.write(data)

    def _done(self) -> None:
        front, self._front = self._front, None
        self._state = FREE
        if front is not None and front.body_pending():
            self._reusable = False  # answered before the request body ended: framing lost
        if self.client_paused and front is not None:
            front.resume_client_reading()
        self.client_paused = False
        if self._reusable:
            self.pool.give_back(self)
        else:
            self.close()
        if front is not None:
            front.response_done(self._sent)

    def _fail_before_head(self) -> None:
        front, self._front = self._front, None
        self.close()
        if front is not None:
            front.upstream_failed()

    def _fail_after_head(self) -> None:
        front, self._front = self._front, None
        self.close()
        if front is not None:
            front.upstream_aborted()

    def eof_received(self) -> bool:
        self.alive = False  # never taken from the pool again
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        front = self._front
        if front is None:
            return
        state = self._state
        if state is HEAD:
            self._fail_before_head()
        elif state is UNTIL_EOF:
            front.write(LAST_CHUNK)
            self._reusable = False
            self._done()
        else:
            self._fail_after_head()

    def pause_writing(self) -> None:
        front = self._front
        if front is not None:
            front.pause_client_reading()
            self.client_paused = True

    def resume_writing(self) -> None:
        front = self._front
        if self.client_paused and front is not None:
            front.resume_client_reading()
        self.client_paused = False
