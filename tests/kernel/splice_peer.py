"""Both ends of a spliced connection for the splice tests: a numbered byte stream and its checks.

Imported by the test process (the server end, in threads) and run as a script in a workload's
cgroup and the sandbox netns (the client end, `python splice_peer.py <mode> ...`, JSON on stdout):

    stream <dst> <port> <bytes>       send <bytes> of the numbered stream while reading to EOF
    early <dst> <port> <connections>  connections that send at once, as several small writes
    reset <dst> <port>                read the server's greeting, then close with a reset
    expect-reset <dst> <port>         send, then read until the server's reset arrives
    late-send <dst> <port> <bytes>    read to EOF first (the server half-closed), then send
    hold <dst> <port>                 pings, a JSON line, then wait for a line on stdin
    late-read <dst> <port> <bytes>    send, half-close, wait, then read the reply to EOF
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import sys
import threading
import time
from typing import Any

CHUNK = 64 * 1024
BLOCK_CHUNKS = 16  # one send() is a block of 16 chunks (1 MiB)
TIMEOUT_S = 30.0
GREETING = b"hello from the server\n"
LATE_READ_S = 0.5
HOLD_PINGS = 3
_BASE = bytes((i * 7 + 3) % 251 for i in range(CHUNK))
_LINGER_RESET = struct.pack("ii", 1, 0)


def stream_block(first_chunk: int, buffer: bytearray) -> None:
    """Fill `buffer` (a whole number of chunks) with chunks numbered from `first_chunk`: every
    chunk starts with its number, so a reordered or repeated chunk changes the checksum."""
    for i in range(len(buffer) // CHUNK):
        offset = i * CHUNK
        buffer[offset : offset + CHUNK] = _BASE
        struct.pack_into(">Q", buffer, offset, first_chunk + i)


def send_stream(sock: socket.socket | None, total: int) -> str:
    """Send `total` bytes of the numbered stream (None: only compute); returns its sha256."""
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK * BLOCK_CHUNKS)
    sent = 0
    chunk_no = 0
    while sent < total:
        stream_block(chunk_no, buffer)
        chunk_no += BLOCK_CHUNKS
        view = memoryview(buffer)[: min(len(buffer), total - sent)]
        if sock is not None:
            sock.sendall(view)
        digest.update(view)
        sent += len(view)
    return digest.hexdigest()


def read_to_eof(sock: socket.socket) -> tuple[int, str]:
    """Read until end of stream: (byte count, sha256)."""
    digest = hashlib.sha256()
    buffer = bytearray(1 << 20)
    total = 0
    while n := sock.recv_into(buffer):
        digest.update(memoryview(buffer)[:n])
        total += n
    return total, digest.hexdigest()


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while data := sock.recv(1 << 16):
        chunks.append(data)
    return b"".join(chunks)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        more = sock.recv(n - len(data))
        if not more:
            break
        data += more
    return data


EARLY_PAUSES_S = (0.0, 0.0001, 0.0003, 0.001)


def early_request(index: int) -> list[bytes]:
    """What the early-bytes client sends on connection `index`, write by write."""
    return [f"{index}:{part}|".encode() * (1 + part % 5) for part in range(40)]


def reset(sock: socket.socket) -> None:
    """Close with a reset (RST) instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    sock.close()


def _connect(dst: str, port: int) -> socket.socket:
    return socket.create_connection((dst, port), timeout=TIMEOUT_S)


def _stream(dst: str, port: int, total: int) -> dict[str, Any]:
    started = time.monotonic()
    with _connect(dst, port) as sock:
        out: dict[str, Any] = {}

        def sender() -> None:
            out["sent_sha"] = send_stream(sock, total)
            sock.shutdown(socket.SHUT_WR)

        thread = threading.Thread(target=sender)
        thread.start()
        out["received"], out["received_sha"] = read_to_eof(sock)
        thread.join()
    out["seconds"] = time.monotonic() - started
    return out


def _early(dst: str, port: int, count: int) -> dict[str, Any]:
    wrong = []
    for index in range(count):
        with _connect(dst, port) as sock:
            parts = early_request(index)
            # One write each, from right after connect() on: some connections send everything
            # before the agent registered the pair, others are still sending when it does.
            pause = EARLY_PAUSES_S[index % len(EARLY_PAUSES_S)]
            for part in parts:
                sock.sendall(part)
                if pause:
                    time.sleep(pause)
            sock.shutdown(socket.SHUT_WR)
            reply = recv_all(sock)
        if reply != GREETING + b"".join(parts):
            wrong.append({"connection": index, "reply_head": reply[:200].decode(errors="replace")})
    return {"connections": count, "wrong": wrong}


def _reset(dst: str, port: int) -> dict[str, Any]:
    sock = _connect(dst, port)
    sock.sendall(b"about to reset\n")
    greeting = recv_exactly(sock, len(GREETING))
    reset(sock)
    return {"greeting": greeting.decode(errors="replace")}


def _expect_reset(dst: str, port: int) -> dict[str, Any]:
    with _connect(dst, port) as sock:
        sock.sendall(b"waiting for a reset\n")
        try:
            data = recv_all(sock)
        except ConnectionResetError:
            return {"outcome": "reset"}
        return {"outcome": "eof", "data": data.decode(errors="replace")}


def _late_send(dst: str, port: int, total: int) -> dict[str, Any]:
    with _connect(dst, port) as sock:
        greeting = recv_all(sock)  # the server half-closed after its greeting
        sent_sha = send_stream(sock, total)  # this direction is still open
        sock.shutdown(socket.SHUT_WR)
        rest = recv_all(sock)
    return {"greeting": greeting.decode(errors="replace"), "sent_sha": sent_sha, "rest": len(rest)}


def _hold(dst: str, port: int) -> dict[str, Any]:
    """Pings against an echo server, then hold the connection open until stdin says go."""
    with _connect(dst, port) as sock:
        echoes = []
        for _ in range(HOLD_PINGS):
            sock.sendall(b"ping\n")
            echoes.append(recv_exactly(sock, 5).decode())
        print(json.dumps({"echoes": echoes}), flush=True)
        sys.stdin.readline()
        sock.shutdown(socket.SHUT_WR)
        rest = recv_all(sock)
    return {"rest": len(rest)}


def _late_read(dst: str, port: int, total: int) -> dict[str, Any]:
    """Send, half-close, and read the reply only after a while: by then the server's reply and
    its FIN have both arrived (the FIN closes this half-closed socket's connection)."""
    with _connect(dst, port) as sock:
        sent_sha = send_stream(sock, total)
        sock.shutdown(socket.SHUT_WR)
        time.sleep(LATE_READ_S)
        received, received_sha = read_to_eof(sock)
    return {"sent_sha": sent_sha, "received": received, "received_sha": received_sha}


def main(argv: list[str]) -> None:
    cgroup, mode, dst, port = argv[0], argv[1], argv[2], int(argv[3])
    with open(os.path.join(cgroup, "cgroup.procs"), "w") as procs:
        procs.write(str(os.getpid()))  # before any socket: capture keys on the connect's cgroup
    args = [int(a) for a in argv[4:]]
    runs = {
        "stream": lambda: _stream(dst, port, args[0]),
        "early": lambda: _early(dst, port, args[0]),
        "reset": lambda: _reset(dst, port),
        "expect-reset": lambda: _expect_reset(dst, port),
        "late-send": lambda: _late_send(dst, port, args[0]),
        "hold": lambda: _hold(dst, port),
        "late-read": lambda: _late_read(dst, port, args[0]),
    }
    try:
        out = runs[mode]()
    except OSError as exc:
        out = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
