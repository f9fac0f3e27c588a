"""The catalog service: HTTP/1.1 GET /products and GET /products/<id> from a fixed product list."""

from __future__ import annotations

import argparse
import sys

from demo.http1 import Request
from demo.httpserver import Reply, json_reply, method_not_allowed, not_found, parse_id
from demo.service_main import serve_http

PRODUCTS: tuple[dict[str, object], ...] = (
    {"id": 1, "name": "Loom shuttle", "price_cents": 2400, "currency": "EUR"},
    {"id": 2, "name": "Warp thread, 500 m", "price_cents": 850, "currency": "EUR"},
    {"id": 3, "name": "Heddle frame", "price_cents": 6900, "currency": "EUR"},
    {"id": 4, "name": "Weaving comb", "price_cents": 1200, "currency": "EUR"},
)
_BY_ID = {int(str(p["id"])): p for p in PRODUCTS}


async def handle(request: Request) -> Reply:
    parts = request.path.strip("/").split("/")
    if parts == ["healthz"]:
        return json_reply(200, {"status": "ok", "service": "catalog"})
    if parts[0] != "products" or len(parts) > 2:
        return not_found(request.path)
    if request.method != "GET":
        return method_not_allowed(request.method, ("GET",))
    if len(parts) == 1:
        return json_reply(200, list(PRODUCTS))
    product_id = parse_id(parts[1])
    product = _BY_ID.get(product_id) if product_id is not None else None
    if product is None:
        return json_reply(404, {"error": "no such product", "product_id": parts[1]})
    return json_reply(200, product)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m demo.catalog",
        description="Demo shop catalog: GET /products, GET /products/<id> (HTTP/1.1).",
        epilog="example: python -m demo.catalog --port 8080",
    )
    return serve_http(parser, "catalog", 8080, lambda _args: handle, argv)


if __name__ == "__main__":
    sys.exit(main())
