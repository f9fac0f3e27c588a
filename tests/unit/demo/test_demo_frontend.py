"""demo.frontend: the product page composed from the real catalog, reviews and ratings."""

from __future__ import annotations

import pytest
from demo_processes import ServiceStarter, Shop, frontend_command
from http_probe import get


def test_product_page_composes_all_three_backends(shop: Shop) -> None:
    status, headers, page = get(shop.frontend, "/product/1")
    assert status == 200
    assert headers["x-demo-reviews-version"] == "v2"
    assert page["product"]["name"] == "Loom shuttle"
    assert page["reviews"]["version"] == page["reviews_version"] == "v2"
    assert [r["stars"] for r in page["reviews"]["items"]] == [5, 4]
    assert page["rating"] == {"stars": 4.5, "votes": 120}


def test_unknown_product_is_404_and_healthz_answers(shop: Shop) -> None:
    assert get(shop.frontend, "/product/77")[0] == 404
    assert get(shop.frontend, "/product/x")[0] == 404
    assert get(shop.frontend, "/healthz")[:1] == (200,)


def test_a_down_backend_is_a_502_naming_that_backend(
    shop: Shop, start: ServiceStarter, refused_address: str
) -> None:
    frontend = start(*frontend_command(shop.catalog.address, refused_address, shop.ratings.address))
    status, _, body = get(frontend, "/product/1")
    assert status == 502
    assert (body["backend"], body["address"]) == ("reviews", refused_address)
    assert "refused" in body["detail"]
    assert [f["backend"] for f in body["failures"]] == ["reviews"]


def test_a_down_grpc_backend_is_a_502_naming_ratings(
    shop: Shop, start: ServiceStarter, refused_address: str
) -> None:
    frontend = start(
        *frontend_command(shop.catalog.address, shop.reviews_v1.address, refused_address)
    )
    status, _, body = get(frontend, "/product/2")
    assert (status, body["backend"]) == (502, "ratings")
    assert "UNAVAILABLE" in body["detail"]


@pytest.mark.parametrize(("flags", "connections"), [((), 1), (("--no-backend-keepalive",), 5)])
def test_backend_keepalive_decides_connections_per_request(
    shop: Shop, start: ServiceStarter, flags: tuple[str, ...], connections: int
) -> None:
    catalog = start("catalog")
    frontend = start(
        *frontend_command(catalog.address, shop.reviews_v1.address, shop.ratings.address, *flags)
    )
    for _ in range(5):
        status, headers, _ = get(frontend, "/product/2")
        assert (status, headers["x-demo-reviews-version"]) == (200, "v1")
    assert catalog.stop() == 0
    peers = {
        line.split()[2] for line in catalog.output().splitlines() if '"GET /products/2"' in line
    }
    assert len(peers) == connections
