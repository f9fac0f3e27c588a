from __future__ import annotations

import asyncio
import json
import logging

import pytest

from agent.admin import HttpEndpoint, Response, parse_request_line, render, set_log_level


def test_request_line_is_parsed_with_its_query() -> None:
    assert parse_request_line(b"GET /logging?level=debug HTTP/1.1\r\nHost: x\r\n\r\n") == (
        "GET",
        "/logging",
        {"level": ["debug"]},
    )
    with pytest.raises(ValueError, match=r"HTTP/1\.x"):
        parse_request_line(b"\x16\x03\x01 garbage\r\n\r\n")


def test_unknown_path_is_404_listing_the_known_ones() -> None:
    endpoint = HttpEndpoint({"/certs": lambda q: Response.json([])})
    response = endpoint.respond(b"GET /nope HTTP/1.1\r\n\r\n")
    assert response.status == 404
    assert json.loads(response.body)["paths"] == ["/certs"]


def test_a_failing_handler_answers_503() -> None:
    def broken(query: object) -> Response:
        raise RuntimeError("boom")

    assert HttpEndpoint({"/x": broken}).respond(b"GET /x HTTP/1.1\r\n\r\n").status == 503


def test_log_level_is_changed_by_name() -> None:
    response = set_log_level({"level": ["warning"], "logger": ["weft.test"]})
    assert response.status == 200
    assert logging.getLogger("weft.test").level == logging.WARNING
    assert set_log_level({"level": ["loud"]}).status == 400


def test_endpoint_serves_real_http_and_survives_garbage() -> None:
    async def scenario() -> tuple[bytes, bytes]:
        endpoint = HttpEndpoint({"/healthz/ready": lambda q: Response.json({"ready": True})})
        await endpoint.start("127.0.0.1", 0)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.port)
            writer.write(b"\x00\xff" * 10 + b"\r\n\r\n")
            garbage = await reader.read()
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.port)
            writer.write(b"GET /healthz/ready HTTP/1.1\r\nHost: a\r\n\r\n")
            answer = await reader.read()
            writer.close()
            return garbage, answer
        finally:
            await endpoint.close()

    garbage, answer = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert garbage.startswith(b"HTTP/1.1 400 ")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.endswith(render(Response.json({"ready": True})).split(b"\r\n\r\n", 1)[1])
