"""demo.catalog over real HTTP/1.1: products, 404s, 400s, keep-alive and a clean SIGTERM."""

from __future__ import annotations

import json
import socket

from demo_processes import ServiceStarter, Shop
from http_probe import exchange_raw, get


def test_lists_products_and_serves_one_by_id(shop: Shop) -> None:
    status, headers, products = get(shop.catalog, "/products")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert [p["id"] for p in products] == [1, 2, 3, 4]
    status, _, product = get(shop.catalog, "/products/3")
    assert (status, product["name"]) == (200, "Heddle frame")


def test_unknown_product_and_unknown_path_are_404_json(shop: Shop) -> None:
    assert get(shop.catalog, "/products/99") == (
        404,
        get(shop.catalog, "/products/99")[1],
        {"error": "no such product", "product_id": "99"},
    )
    status, _, body = get(shop.catalog, "/nope/at/all")
    assert (status, body["error"], body["path"]) == (404, "not found", "/nope/at/all")


def test_wrong_method_is_405_with_allow_header(shop: Shop) -> None:
    status, headers, _ = get(shop.catalog, "/products", method="DELETE")
    assert (status, headers["allow"]) == (405, "GET")


def test_malformed_request_gets_400_json_and_the_server_keeps_serving(shop: Shop) -> None:
    reply = exchange_raw(shop.catalog, b"THIS IS NOT HTTP\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"connection: close" in head
    assert json.loads(body)["error"] == "bad request"
    assert get(shop.catalog, "/products/1")[0] == 200


def test_keep_alive_serves_pipelined_requests_on_one_connection(shop: Shop) -> None:
    requests = b"GET /products/1 HTTP/1.1\r\nHost: c\r\n\r\n" * 3
    last = b"GET /products/2 HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n"
    reply = exchange_raw(shop.catalog, requests + last)
    assert reply.count(b"HTTP/1.1 200 OK") == 4
    assert reply.endswith(b'"Warp thread, 500 m","price_cents":850,"currency":"EUR"}')


def test_sigterm_exits_zero_and_each_request_was_logged(start: ServiceStarter) -> None:
    catalog = start("catalog")
    with socket.create_connection((catalog.host, catalog.port), timeout=5) as idle:
        # An idle keep-alive connection must not hold up a graceful shutdown.
        idle.sendall(b"GET /products/1 HTTP/1.1\r\nHost: c\r\n\r\n")
        assert idle.recv(4096).startswith(b"HTTP/1.1 200")
        assert catalog.stop(timeout=3) == 0
    log = catalog.output()
    assert '"GET /products/1" 200' in log
    assert "received SIGTERM" in log
