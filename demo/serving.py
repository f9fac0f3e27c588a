"""Process runtime shared by the demo services: CLI listen flags, uvloop, signals, log lines."""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any


def add_listen_arguments(parser: argparse.ArgumentParser, default_port: int) -> None:
    parser.add_argument(
        "--host", default="0.0.0.0", help="address to bind (default: 0.0.0.0, every interface)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=default_port,
        help=f"port to listen on; 0 picks a free one (default: {default_port})",
    )


def run_service(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run a service's async main on uvloop when it is installed, else on the stdlib loop."""
    # The lab reads our stdout through a pipe: without line buffering the log would arrive late.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    return uvloop.run(main())


async def announce_and_wait_for_termination(host: str, port: int) -> str:
    """Announce the listening address, then return the name of the first SIGTERM or SIGINT.

    The signal handlers go in before the announcement: whoever waits for `listening on` may
    signal at once, and a SIGTERM before the handlers would kill the process uncleanly.
    """
    loop = asyncio.get_running_loop()
    received: asyncio.Future[str] = loop.create_future()

    def on_signal(signum: signal.Signals) -> None:
        if not received.done():
            received.set_result(signum.name)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    announce_listening(host, port)
    try:
        return await received
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def announce_listening(host: str, port: int) -> None:
    """Print the line the lab and the tests wait for before they send traffic."""
    print(f"listening on {host}:{port}", flush=True)


def log(service: str, message: str) -> None:
    stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    sys.stdout.write(f"{stamp} {service} {message}\n")


def bind_error_message(service: str, host: str, port: int, reason: OSError | str) -> str:
    if isinstance(reason, OSError):
        reason = os.strerror(reason.errno).lower() if reason.errno else str(reason)
    return (
        f"{service}: cannot listen on {host}:{port}: {reason}; "
        "stop whatever holds the port, or pass another --port or --host"
    )
