"""Recognising the fast path's request heads and its backends' response heads, byte-wise."""

from __future__ import annotations

import re

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# A request line with a common method, an origin-form target and HTTP/1.1, then header lines
# `token ":" value` whose values hold no control character but HTAB, then the empty line.
_REQUEST_HEAD = re.compile(
    rb"(GET|HEAD|POST|PUT|DELETE|PATCH|OPTIONS) (/[\x21-\x7e]*) HTTP/1\.1\r\n"
    rb"(?:" + _TOKEN + rb":[\t\x20-\x7e\x80-\xff]*\r\n)*\r\n"
)
_RESPONSE_HEAD = re.compile(
    rb"HTTP/1\.([01]) ([1-9][0-9][0-9])(?: [\t\x20-\x7e\x80-\xff]*)?\r\n"
    rb"(?:" + _TOKEN + rb":[\t\x20-\x7e\x80-\xff]*\r\n)*\r\n"
)
# The request fields the fast path reads or acts on (the framing and hop-by-hop ones send the
# request to the general path, but Connection: keep-alive); a match spans "\r\nname:value".
_REQUEST_FIELD = re.compile(
    rb"\r\n(host|content-length|x-request-id|traceparent|user-agent|connection|keep-alive"
    rb"|transfer-encoding|upgrade|expect|te|trailer|proxy-connection|http2-settings):([^\r]*)"
)
# Response fields that are hop-by-hop (RFC 9110 §7.6.1): dropped before the client sees them.
_RESPONSE_HOP_FIELD = re.compile(
    rb"\r\n(connection|keep-alive|proxy-connection|te|trailer|upgrade|http2-settings|expect):"
)
# The response fields that decide its framing or are removed (lowercase copy; name and value).
_RESPONSE_FIELD = re.compile(
    rb"\r\n(content-length|transfer-encoding|connection|keep-alive|proxy-connection|te|trailer"
    rb"|upgrade|http2-settings|expect):([^\r]*)"
)


# (method, target, host, content length, x-request-id or None, traceparent or None,
#  user-agent or None, the head to forward up to its last CRLF, traceparent removed)
FastRequest = tuple[str, str, str, int, str | None, str | None, str | None, bytes]


def _value(head: bytes, lowered: bytes, key: bytes) -> bytes | None:
    """The value of the header line `key` (b"\\r\\nname:") starts, or None if there is none."""
    start = lowered.find(key)
    if start < 0:
        return None
    start += len(key)
    return head[start : head.index(b"\r\n", start)].strip(b" \t")


def _without_line(head: bytes, lowered: bytes, key: bytes) -> tuple[bytes, bytes]:
    """`head` (and its lowercase copy) without the header line starting with `key`."""
    start = lowered.find(key)
    end = lowered.index(b"\r\n", start + 2)
    return head[:start] + head[end:], lowered[:start] + lowered[end:]


def recognize_request(head: bytes) -> FastRequest | None:
    """What the fast path needs of a request head (the bytes up to and with its empty line),
    or None when the head is anything but the common, plainly valid shape.

    One expression validates the head whole; one scan of its lowercase copy finds the fields
    that matter (most requests carry one or two of them), each with its value's position in
    the original bytes."""
    if _REQUEST_HEAD.fullmatch(head) is None:
        return None
    host = length = request_id = traceparent = agent = None
    drop: list[tuple[int, int]] = []  # lines not forwarded: traceparent, keep-alive hop fields
    for found in _REQUEST_FIELD.finditer(head.lower()):
        name = found.group(1)
        value = head[found.start(2) : found.end(2)].strip(b" \t")
        if name == b"host":
            if host is not None:
                return None
            host = value
        elif name == b"content-length":
            if length is not None or not value.isdigit() or len(value) > 18:
                return None
            length = int(value)
        elif name == b"x-request-id":
            if request_id is not None:
                return None
            request_id = value
            if not value:  # empty: replaced by a generated one, as the general path does
                drop.append(found.span())
        elif name == b"traceparent":
            if traceparent is not None:
                return None
            traceparent = value
            drop.append(found.span())
        elif name == b"user-agent":
            agent = agent or value
        elif name == b"connection":
            # `Connection: keep-alive` (what HTTP/1.1 means anyway) is dropped as hop-by-hop;
            # any other token, like any other hop-by-hop field, needs the general path.
            if value.lower() != b"keep-alive":
                return None
            drop.append(found.span())
        elif name == b"keep-alive":
            drop.append(found.span())
        else:  # Transfer-Encoding, Upgrade, Expect, TE, Trailer, ...
            return None
    if host is None:
        return None
    if drop:
        kept, start = [], 0
        for begin, end in drop:
            kept.append(head[start:begin])
            start = end
        kept.append(head[start:])
        head = b"".join(kept)
    method, _, rest = head.partition(b" ")
    return (
        method.decode(),
        rest[: rest.index(b" ")].decode("latin-1"),
        host.decode("latin-1"),
        length or 0,
        request_id.decode("latin-1") if request_id else None,
        traceparent.decode("latin-1") if traceparent is not None else None,
        agent.decode("latin-1") if agent is not None else None,
        head[:-2],
    )


# How a response body ends.
NO_BODY, LENGTH, CHUNKED, UNTIL_CLOSE = 0, 1, 2, 3

# (status, framing, content length, backend connection reusable, head for the client)
FastResponse = tuple[int, int, int, bool, bytes]


def recognize_response(head: bytes, head_only: bool) -> FastResponse | None:
    """The framing of a backend's response head and the head to send on (hop-by-hop fields
    removed); None if it is malformed or framed ambiguously (the client then gets a 503)."""
    matched = _RESPONSE_HEAD.fullmatch(head)
    if matched is None:
        return None
    status = int(matched.group(2))
    lowered = head.lower()
    found = _RESPONSE_FIELD.findall(lowered)
    if len(found) == 1 and found[0][0] == b"content-length" and matched.group(1) == b"1":
        # The common answer: HTTP/1.1, one Content-Length, nothing hop-by-hop to remove.
        text = found[0][1].strip(b" \t")
        if not text.isdigit() or len(text) > 18:
            return None
        if head_only or status in (204, 304) or status < 200:
            return status, NO_BODY, int(text), True, head
        return status, LENGTH, int(text), True, head
    lengths = lowered.count(b"\r\ncontent-length:")
    encoding = _value(head, lowered, b"\r\ntransfer-encoding:")
    connection = (_value(head, lowered, b"\r\nconnection:") or b"").lower()
    tokens = {token.strip() for token in connection.split(b",")}
    reusable = b"close" not in tokens and (matched.group(1) == b"1" or b"keep-alive" in tokens)
    length = 0
    if lengths:
        text = _value(head, lowered, b"\r\ncontent-length:")
        if lengths > 1 or text is None or not text.isdigit() or len(text) > 18:
            return None
        length = int(text)
    if encoding is not None and (
        lengths or encoding.lower() != b"chunked" or lowered.count(b"\r\ntransfer-encoding:") > 1
    ):
        return None  # CL with TE, or a coding other than a lone chunked: refused, as http1 does
    if head_only or status in (204, 304) or status < 200:
        framing = NO_BODY
    elif encoding is not None:
        framing = CHUNKED
    elif lengths:
        framing = LENGTH
    else:
        framing = UNTIL_CLOSE
        reusable = False
    out = head
    if _RESPONSE_HOP_FIELD.search(lowered) is not None or connection:
        named = [b"\r\n" + t + b":" for t in tokens if t and t not in (b"close", b"keep-alive")]
        for key in (*named, b"\r\nconnection:", b"\r\nkeep-alive:", b"\r\nproxy-connection:",
                    b"\r\nte:", b"\r\ntrailer:", b"\r\nupgrade:", b"\r\nhttp2-settings:",
                    b"\r\nexpect:"):  # fmt: skip
            while lowered.find(key) >= 0:
                if key in (b"\r\ncontent-length:", b"\r\ntransfer-encoding:"):
                    break  # the framing the fast path relays as it is
                out, lowered = _without_line(out, lowered, key)
    if framing is UNTIL_CLOSE:  # re-framed for a keep-alive client, as the general path does
        out = out[:-2] + b"transfer-encoding: chunked\r\n\r\n"
    return status, framing, length, reusable, out
