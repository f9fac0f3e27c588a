"""HTTP/1.1 request heads parsed by the waypoint codec or fast path, h11, httptools.

Run: .venv/bin/python -m bench.waypoint_parsers [--requests N] [--seconds S]
Each candidate parses the same typical request (a GET with 9 headers, 462 bytes) with a fresh
parser per request, collecting the method, target, headers and the end of the message, which is
what the waypoint needs before routing; the figure is the median of rounds of 1,000.
Every loop is bounded by a request count and a time budget.
Candidates that are not installed are reported as missing, not silently skipped.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from waypoint.fastpath import recognize_request
from waypoint.http1 import EndOfMessage, Request, RequestParser

TYPICAL_REQUEST = (
    b"GET /api/v1/reviews/0042?lang=en&page=2 HTTP/1.1\r\n"
    b"Host: reviews.default.svc.cluster.local:9080\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) weft-bench/1.0\r\n"
    b"Accept: application/json, text/plain;q=0.9, */*;q=0.8\r\n"
    b"Accept-Encoding: gzip, deflate\r\n"
    b"Accept-Language: en-GB,en;q=0.7\r\n"
    b"X-Request-Id: 4bf92f35-77b3-4da6-a3ce-929d0e0e4736\r\n"
    b"Traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n"
    b"Cookie: session=8c1f2e4d; theme=dark\r\n"
    b"Connection: keep-alive\r\n"
    b"\r\n"
)


def parse_with_weft() -> int:
    events = RequestParser().feed(TYPICAL_REQUEST)
    assert isinstance(events[0], Request)
    assert isinstance(events[-1], EndOfMessage)
    return len(events[0].headers)


def parse_with_h11() -> int:
    import h11

    connection = h11.Connection(h11.SERVER)
    connection.receive_data(TYPICAL_REQUEST)
    request = connection.next_event()
    end = connection.next_event()
    assert isinstance(request, h11.Request)
    assert isinstance(end, h11.EndOfMessage)
    return len(request.headers)


class _HttptoolsCollector:
    """httptools is callback based: collect what the waypoint would need."""

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.url = b""
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_message_complete(self) -> None:
        self.complete = True


def parse_with_httptools() -> int:
    import httptools

    collector = _HttptoolsCollector()
    parser = httptools.HttpRequestParser(collector)
    parser.feed_data(TYPICAL_REQUEST)
    parser.get_method()
    parser.should_keep_alive()
    assert collector.complete
    return len(collector.headers)


def parse_with_fast_path() -> int:
    """The waypoint's fast path: one regular expression accepts the head whole (or sends it to
    the codec), then the fields it needs are found in a lowercase copy of the bytes."""
    recognized = recognize_request(_HEAD)
    assert recognized is not None
    return 1


_HEAD = TYPICAL_REQUEST  # the fast path is handed the head up to its empty line


CANDIDATES: dict[str, Callable[[], int]] = {
    "weft (waypoint.http1)": parse_with_weft,
    "weft fast path": parse_with_fast_path,
    "h11": parse_with_h11,
    "httptools": parse_with_httptools,
}


def measure(parse: Callable[[], int], requests: int, seconds: float) -> float:
    """Median seconds per request over rounds of 1,000; stops at `requests` or `seconds`.

    The median of rounds, not the mean, because this machine is shared: a round that lost the
    CPU to another process says nothing about the parser.
    """
    for _ in range(200):  # warm-up: imports, caches
        parse()
    rounds: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(rounds) * 1000 < requests and time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(1000):
            parse()
        rounds.append((time.perf_counter() - start) / 1000)
    return statistics.median(rounds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    print(f"typical request: {len(TYPICAL_REQUEST)} bytes")
    baseline: float | None = None
    for name, parse in CANDIDATES.items():
        try:
            headers = parse()
        except ImportError:
            print(f"{name:24} not installed")
            continue
        per_request_us = measure(parse, args.requests, args.seconds) * 1e6
        baseline = baseline or per_request_us
        print(
            f"{name:24} {per_request_us:7.2f} us/request {1e6 / per_request_us:10,.0f} req/s "
            f"({baseline / per_request_us:4.2f}x weft, {headers} headers)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
