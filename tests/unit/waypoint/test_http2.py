"""The HTTP/2 peer on loopback: bodies beyond the flow-control window, trailers, resets."""

from __future__ import annotations

import asyncio

import pytest

from waypoint.http2 import PREFACE, H2Peer, H2Stream, H2StreamError

TIMEOUT_S = 10


async def echo_with_trailers(stream: H2Stream) -> None:
    body = b""
    while data := await stream.read():
        body += data
    path = dict(stream.headers)[":path"]
    if path == "/reset":
        stream.reset()
        return
    await stream.send_headers([(":status", "200"), ("content-type", "application/grpc")])
    await stream.send_data(body)
    await stream.send_trailers([("grpc-status", "0"), ("x-path", path)])


async def serve(handler: object = echo_with_trailers) -> tuple[asyncio.Server, set[H2Peer]]:
    peers: set[H2Peer] = set()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        preface = await reader.readexactly(len(PREFACE))
        peer = H2Peer(reader, writer, client_side=False, handler=handler)  # type: ignore[arg-type]
        peers.add(peer)
        peer.start(preface)
        await peer.run()

    return await asyncio.start_server(accept, "127.0.0.1", 0), peers


async def client(port: int) -> tuple[H2Peer, asyncio.Task[None]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    peer = H2Peer(reader, writer, client_side=True)
    peer.start()
    return peer, asyncio.create_task(peer.run())


def request(path: str) -> list[tuple[str, str]]:
    return [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "svc")]


def test_request_body_response_and_trailers_cross_one_connection() -> None:
    payload = bytes(range(256)) * 10 * 1024  # 2.5 MiB: the writer waits for window twice

    async def main() -> None:
        server, _ = await serve()
        peer, running = await client(server.sockets[0].getsockname()[1])
        try:
            streams = [peer.open_stream(request(f"/echo/{index}")) for index in range(3)]
            sends = [asyncio.create_task(s.send_data(payload, end_stream=True)) for s in streams]
            for index, stream in enumerate(streams):
                headers = dict(await stream.response_headers())
                assert headers[":status"] == "200"
                received = b""
                while data := await stream.read():
                    received += data
                assert received == payload
                assert dict(stream.trailers) == {"grpc-status": "0", "x-path": f"/echo/{index}"}
            await asyncio.gather(*sends)
        finally:
            await peer.close()
            running.cancel()
            server.close()

    asyncio.run(asyncio.wait_for(main(), TIMEOUT_S))


def test_reset_by_the_server_fails_the_client_stream() -> None:
    async def main() -> None:
        server, _ = await serve()
        peer, running = await client(server.sockets[0].getsockname()[1])
        try:
            stream = peer.open_stream(request("/reset"), end_stream=True)
            with pytest.raises(H2StreamError, match="reset"):
                await stream.response_headers()
        finally:
            await peer.close()
            running.cancel()
            server.close()

    asyncio.run(asyncio.wait_for(main(), TIMEOUT_S))


def test_closed_connection_fails_open_streams() -> None:
    async def hang(stream: H2Stream) -> None:
        await asyncio.sleep(TIMEOUT_S)

    async def main() -> None:
        server, peers = await serve(hang)
        peer, running = await client(server.sockets[0].getsockname()[1])
        try:
            stream = peer.open_stream(request("/"), end_stream=True)
            await asyncio.sleep(0.05)
            for server_peer in peers:
                await server_peer.close()
            with pytest.raises(H2StreamError):
                await stream.response_headers()
        finally:
            await peer.close()
            running.cancel()
            server.close()

    asyncio.run(asyncio.wait_for(main(), TIMEOUT_S))
