"""demo.ratings over real gRPC: unary values, exact stream counts, and clean error codes."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from demo_processes import Shop

from demo import ratings_pb2, ratings_pb2_grpc


@pytest.fixture
def stub(shop: Shop) -> Iterator[ratings_pb2_grpc.RatingsStub]:
    with grpc.insecure_channel(shop.ratings.address) as channel:
        yield ratings_pb2_grpc.RatingsStub(channel)


def test_get_rating_returns_the_products_rating(stub: ratings_pb2_grpc.RatingsStub) -> None:
    rating = stub.GetRating(ratings_pb2.GetRatingRequest(product_id=1), timeout=5)
    assert (rating.product_id, rating.stars, rating.votes, rating.sequence) == (1, 4.5, 120, 0)


def test_watch_ratings_streams_exactly_count_messages_in_order(
    stub: ratings_pb2_grpc.RatingsStub,
) -> None:
    stream = stub.WatchRatings(ratings_pb2.WatchRatingsRequest(product_id=2, count=250), timeout=5)
    sequences = [rating.sequence for rating in stream]
    assert sequences == list(range(1, 251))


def test_unknown_product_is_not_found(stub: ratings_pb2_grpc.RatingsStub) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        stub.GetRating(ratings_pb2.GetRatingRequest(product_id=404), timeout=5)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("count", [0, 100_001])
def test_stream_count_out_of_range_is_invalid_argument(
    stub: ratings_pb2_grpc.RatingsStub, count: int
) -> None:
    stream = stub.WatchRatings(
        ratings_pb2.WatchRatingsRequest(product_id=1, count=count), timeout=5
    )
    with pytest.raises(grpc.RpcError) as raised:
        list(stream)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
