"""The common main of the HTTP demo services: parse flags, listen, serve until SIGTERM."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from demo.httpserver import Handler, HttpServer
from demo.serving import (
    add_listen_arguments,
    announce_and_wait_for_termination,
    bind_error_message,
    log,
    run_service,
)


def serve_http(
    parser: argparse.ArgumentParser,
    service: str,
    default_port: int,
    make_handler: Callable[[argparse.Namespace], Handler],
    argv: list[str] | None = None,
) -> int:
    """Add the listen flags to `parser`, parse argv and serve the handler until SIGTERM/SIGINT."""
    add_listen_arguments(parser, default_port)
    args = parser.parse_args(argv)

    async def run() -> int:
        server = HttpServer(service, make_handler(args))
        try:
            port = await server.start(args.host, args.port)
        except OSError as error:
            print(bind_error_message(service, args.host, args.port, error), file=sys.stderr)
            return 1
        signal_name = await announce_and_wait_for_termination(args.host, port)
        log(service, f"received {signal_name}, draining connections")
        await server.shutdown()
        return 0

    return run_service(run)
