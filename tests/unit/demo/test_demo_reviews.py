"""demo.reviews: the version header and body that canary tests count, and DELETE."""

from __future__ import annotations

from demo_processes import Shop
from http_probe import get


def test_v1_answers_with_version_header_and_no_stars(shop: Shop) -> None:
    status, headers, body = get(shop.reviews_v1, "/reviews/1")
    assert (status, headers["x-demo-version"], body["version"]) == (200, "v1", "v1")
    assert len(body["reviews"]) == 2
    assert all("stars" not in review for review in body["reviews"])


def test_v2_differs_visibly_by_including_stars(shop: Shop) -> None:
    status, headers, body = get(shop.reviews_v2, "/reviews/1")
    assert (status, headers["x-demo-version"], body["version"]) == (200, "v2", "v2")
    assert [review["stars"] for review in body["reviews"]] == [5, 4]


def test_delete_is_served_so_that_authorization_can_deny_it(shop: Shop) -> None:
    status, headers, body = get(shop.reviews_v1, "/reviews/7", method="DELETE")
    assert (status, headers["x-demo-version"], body) == (200, "v1", {"deleted": 7, "version": "v1"})


def test_bad_id_and_other_methods_are_rejected(shop: Shop) -> None:
    assert get(shop.reviews_v1, "/reviews/abc")[0] == 404
    assert get(shop.reviews_v1, "/reviews")[0] == 404
    assert get(shop.reviews_v1, "/reviews/1", method="PUT")[0] == 405
