"""Garbage sent to the demo listeners gets a clean answer or a clean close, never a dead process."""

from __future__ import annotations

import socket

import grpc
from demo_processes import RunningService, Shop
from http_probe import exchange_raw, get
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from demo import ratings_pb2, ratings_pb2_grpc

GARBAGE = st.one_of(
    st.binary(max_size=2048),
    # Almost-HTTP: a plausible start followed by junk reaches deeper into the parser.
    st.builds(lambda tail: b"GET /products/1 HTTP/1.1\r\n" + tail, st.binary(max_size=256)),
    st.builds(lambda tail: b"POST / HTTP/1.1\r\ncontent-length: " + tail, st.binary(max_size=64)),
)
FUZZ = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def assert_http_service_survives(service: RunningService, data: bytes) -> None:
    reply = exchange_raw(service, data)
    assert reply == b"" or reply.startswith(b"HTTP/1.1 ")
    assert service.process.poll() is None


@FUZZ
@given(GARBAGE)
def test_catalog_survives_garbage(shop: Shop, data: bytes) -> None:
    assert_http_service_survives(shop.catalog, data)


@FUZZ
@given(GARBAGE)
def test_frontend_survives_garbage(shop: Shop, data: bytes) -> None:
    assert_http_service_survives(shop.frontend, data)


@FUZZ
@given(st.binary(max_size=2048))
def test_ratings_survives_garbage(shop: Shop, data: bytes) -> None:
    with socket.create_connection((shop.ratings.host, shop.ratings.port), timeout=5) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass
    assert shop.ratings.process.poll() is None


def test_every_service_still_serves_after_the_garbage(shop: Shop) -> None:
    assert get(shop.catalog, "/products/1")[0] == 200
    assert get(shop.reviews_v1, "/reviews/1")[0] == 200
    assert get(shop.frontend, "/product/1")[0] == 200
    with grpc.insecure_channel(shop.ratings.address) as channel:
        stub = ratings_pb2_grpc.RatingsStub(channel)
        assert stub.GetRating(ratings_pb2.GetRatingRequest(product_id=3), timeout=5).votes == 58
