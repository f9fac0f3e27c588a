"""The loads the benchmark runs on each path, in the order each round runs them."""

from __future__ import annotations

from bench.loads.bulk import BULK
from bench.loads.catalog import Load
from bench.loads.connrate import CONNRATE
from bench.loads.grpc_unary import GRPC_UNARY
from bench.loads.http import HTTP_1CONN, HTTP_16CONN
from bench.loads.request_response import REQUEST_RESPONSE
from bench.loads.stream import STREAM_1MIB

LOADS: tuple[Load, ...] = (
    BULK,
    REQUEST_RESPONSE,
    CONNRATE,
    HTTP_1CONN,
    HTTP_16CONN,
    STREAM_1MIB,
    GRPC_UNARY,
)


def load_named(name: str) -> Load:
    for load in LOADS:
        if load.name == name:
            return load
    raise KeyError(name)


__all__ = ["LOADS", "Load", "load_named"]
