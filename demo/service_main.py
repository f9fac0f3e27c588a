"""The common main of the HTTP demo services: parse flags, listen, serve until SIGTERM."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from demo.httpserver import Handler, HttpServer
from demo.serving import (
    add_listen_arguments,
    announce_listening,
    bind_error_message,
    log,
    run_service,
    wait_for_termination,
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
        announce_listening(args.host, port)
        signal_name = await wait_for_termination()
        log(service, f"received {signal_name}, draining connections")
        await server.shutdown()
        return 0

    return run_service(run)
