"""The reviews service: GET and DELETE /reviews/<id> as version v1 or v2 (v2 adds stars)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from demo.http1 import Request
from demo.httpserver import Reply, json_reply, method_not_allowed, not_found, parse_id
from demo.service_main import serve_http

VERSIONS = ("v1", "v2")
VERSION_HEADER = "x-demo-version"

# (product_id) -> reviews; stars are what v2 shows and v1 hides.
REVIEWS: dict[int, tuple[dict[str, Any], ...]] = {
    1: (
        {"reviewer": "ada", "text": "Glides through the shed without snagging.", "stars": 5},
        {"reviewer": "grace", "text": "Good, but the bobbin rattles.", "stars": 4},
    ),
    2: ({"reviewer": "linus", "text": "Strong thread, even twist.", "stars": 4},),
    3: (
        {"reviewer": "barbara", "text": "Sturdy frame, easy to warp.", "stars": 5},
        {"reviewer": "ken", "text": "Heavier than expected.", "stars": 3},
    ),
    4: (),
}


def render_reviews(product_id: int, version: str) -> dict[str, Any]:
    """The response document; v2 differs visibly from v1 by including each review's stars."""
    reviews = [
        {k: v for k, v in review.items() if version == "v2" or k != "stars"}
        for review in REVIEWS.get(product_id, ())
    ]
    return {"product_id": product_id, "version": version, "reviews": reviews}


def make_handler(version: str) -> Callable[[Request], Coroutine[Any, Any, Reply]]:
    version_header = ((VERSION_HEADER, version),)

    async def handle(request: Request) -> Reply:
        parts = request.path.strip("/").split("/")
        if parts == ["healthz"]:
            return json_reply(200, {"status": "ok", "service": "reviews", "version": version})
        item = parse_id(parts[1]) if len(parts) == 2 and parts[0] == "reviews" else None
        if item is None:
            return not_found(request.path)
        if request.method == "GET":
            return json_reply(200, render_reviews(item, version), version_header)
        if request.method == "DELETE":
            # Deliberately destructive-looking and harmless: L7 authorization tests deny it.
            document = {"deleted": item, "version": version}
            return json_reply(200, document, version_header)
        return method_not_allowed(request.method, ("GET", "DELETE"))

    return handle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m demo.reviews",
        description="Demo shop reviews: GET and DELETE /reviews/<id> (HTTP/1.1), canary v1/v2.",
        epilog="example: python -m demo.reviews --port 8080 --version v2",
    )
    parser.add_argument(
        "--version",
        choices=VERSIONS,
        default="v1",
        help="which version to serve; v2 includes stars (default: v1)",
    )
    return serve_http(parser, "reviews", 8080, lambda args: make_handler(args.version), argv)


if __name__ == "__main__":
    sys.exit(main())
