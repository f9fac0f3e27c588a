"""A gRPC echo service and a bounded unary load client (grpcio), run as `python -m bench.grpc_echo`.

Raw bytes in and out through a generic handler: no generated code, so the measured cost is gRPC
and the path, not protobuf. The same client and server run on every path, which keeps the
ratios fair even though Python caps the absolute rate.

examples:
  python -m bench.grpc_echo serve 10.88.1.10 9090
  python -m bench.grpc_echo client 10.88.1.10:9090 --seconds 3 --max-requests 100000
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from concurrent import futures
from typing import Any

import grpc

METHOD = "/weft.bench.Echo/Echo"
PAYLOAD = b"x" * 1024


def _echo(request: bytes, context: Any) -> bytes:
    return request


def serve(host: str, port: int) -> int:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        "weft.bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}
    )
    server.add_generic_rpc_handlers((handler,))
    if server.add_insecure_port(f"{host}:{port}") == 0:
        print(f"grpc_echo: cannot listen on {host}:{port}", file=sys.stderr)
        return 1
    server.start()
    server.wait_for_termination()
    return 0


def run_client(target: str, seconds: float, max_requests: int, in_flight: int) -> dict[str, Any]:
    """Keep `in_flight` calls outstanding until the time or the count bound is reached."""
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=5)
        call = channel.unary_unary(METHOD, None, None)  # bytes in, bytes out
        call(PAYLOAD, timeout=5)  # warm-up: the HTTP/2 connection and the server's threads
        pending: collections.deque[Any] = collections.deque()
        done = 0
        start = time.monotonic()
        deadline = start + seconds
        while done + len(pending) < max_requests and time.monotonic() < deadline:
            while len(pending) < in_flight and done + len(pending) < max_requests:
                pending.append(call.future(PAYLOAD, timeout=5))
            pending.popleft().result()
            done += 1
        while pending:
            pending.popleft().result()
            done += 1
        elapsed = time.monotonic() - start
    return {"requests": done, "elapsed_s": elapsed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.grpc_echo",
        description=__doc__.splitlines()[0] if __doc__ else None,
        epilog=__doc__.split("examples:")[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve_p = sub.add_parser("serve", help="run the echo server until killed")
    serve_p.add_argument("host")
    serve_p.add_argument("port", type=int)
    client_p = sub.add_parser("client", help="a bounded unary load; prints one JSON line")
    client_p.add_argument("target", help="host:port")
    client_p.add_argument("--seconds", type=float, default=3.0)
    client_p.add_argument("--max-requests", type=int, default=100_000)
    client_p.add_argument("--in-flight", type=int, default=8)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args.host, args.port)
    report = run_client(args.target, args.seconds, args.max_requests, args.in_flight)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
