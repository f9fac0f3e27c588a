"""The echo service: raw TCP that sends every byte back and honours half-close."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import cast

from demo.serving import (
    add_listen_arguments,
    announce_and_wait_for_termination,
    bind_error_message,
    log,
    run_service,
)


class EchoProtocol(asyncio.Protocol):
    """Echoes bytes as they arrive; after the client's FIN, flushes and closes (half-close)."""

    def __init__(self, connections: set[EchoProtocol]) -> None:
        self._connections = connections
        self._transport: asyncio.Transport | None = None
        self._peer = "-"
        self._bytes = 0
        self._started = time.perf_counter()
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "-"
        self._connections.add(self)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._bytes += len(data)
        self._transport.write(data)

    # Back-pressure: a client that sends without reading must not grow our buffer without bound.
    def pause_writing(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()

    def eof_received(self) -> bool:
        # Returning False makes the transport close itself once the echoed bytes are flushed.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        elapsed_ms = (time.perf_counter() - self._started) * 1000
        outcome = "closed" if exc is None else f"aborted: {exc}"
        log("echo", f"{self._peer} echoed {self._bytes} bytes in {elapsed_ms:.2f}ms, {outcome}")

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m demo.echo",
        description="Demo raw TCP echo: every byte back; closes after the client half-closes.",
        epilog="example: python -m demo.echo --port 7000",
    )
    add_listen_arguments(parser, 7000)
    args = parser.parse_args(argv)

    async def run() -> int:
        loop = asyncio.get_running_loop()
        connections: set[EchoProtocol] = set()
        try:
            server = await loop.create_server(
                lambda: EchoProtocol(connections), args.host, args.port, reuse_address=True
            )
        except OSError as error:
            print(bind_error_message("echo", args.host, args.port, error), file=sys.stderr)
            return 1
        port = server.sockets[0].getsockname()[1]
        signal_name = await announce_and_wait_for_termination(args.host, port)
        log("echo", f"received {signal_name}, closing {len(connections)} connections")
        server.close()
        for connection in list(connections):
            connection.close()
        await asyncio.sleep(0)
        return 0

    return run_service(run)


if __name__ == "__main__":
    sys.exit(main())
