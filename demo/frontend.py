"""The frontend: GET /product/<id> composes catalog (HTTP), reviews (HTTP) and ratings (gRPC)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from demo import ratings_pb2, ratings_pb2_grpc
from demo.addresses import Address, address_argument
from demo.http1 import Request
from demo.httpclient import HttpClient, HttpRequestError
from demo.httpserver import Reply, json_reply, method_not_allowed, not_found, parse_id
from demo.reviews import VERSION_HEADER
from demo.service_main import serve_http

REVIEWS_VERSION_HEADER = "x-demo-reviews-version"
# Forwarded to every backend so traces and request ids survive the hop through the mesh.
PROPAGATED_HEADERS = ("traceparent", "tracestate", "baggage", "x-request-id")


@dataclass(frozen=True)
class BackendError(Exception):
    """A backend did not give a usable answer; becomes the 502 body naming that backend."""

    backend: str
    address: Address
    detail: str

    def document(self) -> dict[str, str]:
        return {"backend": self.backend, "address": str(self.address), "detail": self.detail}


@dataclass(frozen=True)
class ProductNotFoundError(Exception):
    product_id: int


@dataclass
class Backends:
    """The three backends of a product page, each with its own client."""

    catalog: HttpClient
    reviews: HttpClient
    ratings_address: Address
    ratings: ratings_pb2_grpc.RatingsAsyncStub
    timeout: float

    async def fetch_product(self, product_id: int, headers: tuple[tuple[str, str], ...]) -> Any:
        response = await self._get("catalog", self.catalog, f"/products/{product_id}", headers)
        if response[0] == 404:
            raise ProductNotFoundError(product_id)
        return self._json_ok("catalog", self.catalog.address, response)

    async def fetch_reviews(
        self, product_id: int, headers: tuple[tuple[str, str], ...]
    ) -> tuple[str, Any]:
        status, version, body = await self._get(
            "reviews", self.reviews, f"/reviews/{product_id}", headers
        )
        document = self._json_ok("reviews", self.reviews.address, (status, version, body))
        return version or str(document.get("version", "unknown")), document

    async def fetch_rating(
        self, product_id: int, headers: tuple[tuple[str, str], ...]
    ) -> ratings_pb2.Rating:
        try:
            rating: ratings_pb2.Rating = await self.ratings.GetRating(
                ratings_pb2.GetRatingRequest(product_id=product_id),
                timeout=self.timeout,
                metadata=headers,
            )
        except grpc.aio.AioRpcError as error:
            detail = f"gRPC {error.code().name}: {error.details()}"
            raise BackendError("ratings", self.ratings_address, detail) from None
        return rating

    async def _get(
        self, backend: str, client: HttpClient, target: str, headers: tuple[tuple[str, str], ...]
    ) -> tuple[int, str | None, bytes]:
        try:
            response = await client.request("GET", target, headers, timeout=self.timeout)
        except HttpRequestError as error:
            raise BackendError(backend, client.address, str(error)) from None
        return response.status, response.header(VERSION_HEADER), response.body

    @staticmethod
    def _json_ok(backend: str, address: Address, response: tuple[int, str | None, bytes]) -> Any:
        status, _, body = response
        if status != 200:
            snippet = body[:200].decode("utf-8", "replace")
            raise BackendError(backend, address, f"HTTP {status}: {snippet}")
        try:
            return json.loads(body)
        except ValueError:
            raise BackendError(backend, address, "HTTP 200 with a body that is not JSON") from None


def make_handler(backends: Backends) -> Callable[[Request], Awaitable[Reply]]:
    async def handle(request: Request) -> Reply:
        parts = request.path.strip("/").split("/")
        if parts == ["healthz"]:
            return json_reply(200, {"status": "ok", "service": "frontend"})
        product_id = parse_id(parts[1]) if len(parts) == 2 and parts[0] == "product" else None
        if product_id is None:
            return not_found(request.path)
        if request.method != "GET":
            return method_not_allowed(request.method, ("GET",))
        return await compose_product_page(backends, product_id, request)

    return handle


async def compose_product_page(backends: Backends, product_id: int, request: Request) -> Reply:
    headers = tuple((k, v) for k, v in request.headers if k in PROPAGATED_HEADERS)
    results = await asyncio.gather(
        backends.fetch_product(product_id, headers),
        backends.fetch_reviews(product_id, headers),
        backends.fetch_rating(product_id, headers),
        return_exceptions=True,
    )
    product, reviews, rating = results
    if isinstance(product, ProductNotFoundError):
        return json_reply(404, {"error": "no such product", "product_id": product_id})
    failures = [r for r in results if isinstance(r, BackendError)]
    if failures:
        first = failures[0]
        document = {
            "error": f"backend {first.backend} failed",
            **first.document(),
            "failures": [f.document() for f in failures],
        }
        return json_reply(502, document)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    assert isinstance(reviews, tuple)
    assert isinstance(rating, ratings_pb2.Rating)
    version, reviews_document = reviews
    page = {
        "product": product,
        "reviews": {"version": version, "items": reviews_document.get("reviews", [])},
        "rating": {"stars": rating.stars, "votes": rating.votes},
        "reviews_version": version,
    }
    return json_reply(200, page, ((REVIEWS_VERSION_HEADER, version),))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m demo.frontend",
        description="Demo shop frontend: GET /product/<id> from catalog, reviews and ratings.",
        epilog=(
            "example: python -m demo.frontend --port 8080 --catalog 10.0.1.5:8080 "
            "--reviews 10.0.2.7:8080 --ratings 10.0.2.9:9090"
        ),
    )
    parser.add_argument("--catalog", type=address_argument, required=True, help="HOST:PORT")
    parser.add_argument("--reviews", type=address_argument, required=True, help="HOST:PORT")
    parser.add_argument("--ratings", type=address_argument, required=True, help="HOST:PORT (gRPC)")
    parser.add_argument(
        "--backend-timeout",
        type=float,
        default=2.0,
        help="seconds to wait for each backend before answering 502 (default: 2)",
    )

    parser.add_argument(
        "--no-backend-keepalive",
        dest="backend_keepalive",
        action="store_false",
        help=(
            "one connection per backend request, so L4 (per-connection) load balancing splits "
            "reviews v1/v2 per request (default: reuse connections)"
        ),
    )

    def build(args: argparse.Namespace) -> Callable[[Request], Awaitable[Reply]]:
        # The gRPC channel connects lazily, so building it before the loop serves is fine.
        channel = grpc.aio.insecure_channel(str(args.ratings))
        backends = Backends(
            catalog=HttpClient(args.catalog, keep_alive=args.backend_keepalive),
            reviews=HttpClient(args.reviews, keep_alive=args.backend_keepalive),
            ratings_address=args.ratings,
            ratings=ratings_pb2_grpc.RatingsStub(channel),
            timeout=args.backend_timeout,
        )
        return make_handler(backends)

    return serve_http(parser, "frontend", 8080, build, argv)


if __name__ == "__main__":
    sys.exit(main())
