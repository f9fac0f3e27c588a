"""HboneServer.serve_stream(): a subclass serves each CONNECT stream itself, over real mTLS."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator

import pytest
from hbone_testing import CLIENT_ID, SERVER_ID, TestCa, run

from weft.hbone import (
    HboneError,
    HbonePool,
    HboneServer,
    HboneStream,
    StreamResetError,
    TunnelRefusedError,
    native_available,
)
from weft.hbone.events import TunnelRequested
from weft.hbone.session import TunnelSession
from weft.identity import Identity
from weft.tls import Svid, client_context, server_context

LOOPBACK = "127.0.0.1"
Headers = tuple[tuple[str, str], ...]
REFUSE_IP = "10.96.0.99"  # GreetingServer answers a CONNECT to REFUSE_IP:<status> with <status>
HANG = "10.96.0.98:80"  # ... and accepts one to HANG, then waits until it is cancelled


async def refuse_authorize(peer: Identity, authority: str, headers: Headers) -> bool:
    raise AssertionError("an overriding serve_stream() replaces authorize()")


async def refuse_connect(authority: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    raise AssertionError("an overriding serve_stream() replaces connect()")


class GreetingServer(HboneServer):
    """Answers every CONNECT itself: 200, then '<peer> <authority> <headers>|' and an echo of
    what the client sends; a CONNECT to REFUSE_IP:<status> is rejected with that status, and
    one to HANG is accepted and never answered (to see close() cancel the task)."""

    def __init__(self, ssl_context: ssl.SSLContext, data_path: str = "python") -> None:
        super().__init__(ssl_context, refuse_authorize, refuse_connect, data_path=data_path)
        self.served: list[tuple[Identity, str, Headers]] = []
        self.cancelled = 0

    async def serve_stream(
        self,
        session: TunnelSession,
        peer: Identity,
        stream: HboneStream,
        request: TunnelRequested,
    ) -> None:
        self.served.append((peer, request.authority, request.headers))
        host, _, port = request.authority.rpartition(":")
        if host == REFUSE_IP:
            session.reject(stream, int(port))
            return
        session.accept(stream)
        if request.authority == HANG:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                stream.abort()
                raise
        headers = ",".join(f"{name}={value}" for name, value in request.headers)
        await stream.write(f"{peer.uri} {request.authority} {headers}|".encode())
        while data := await stream.read():
            await stream.write(data)
        stream.close_write()


@contextlib.asynccontextmanager
async def greeting_mesh(
    ca: TestCa, client_svid: Svid, server_svid: Svid
) -> AsyncIterator[tuple[GreetingServer, HbonePool]]:
    server = GreetingServer(server_context(server_svid, ca.bundle_pem))
    await server.start(LOOPBACK, 0)
    pool = HbonePool(lambda source: client_context(client_svid, ca.bundle_pem))
    try:
        yield server, pool
    finally:
        await pool.close()
        await server.close()


async def open_stream(
    server: HboneServer, pool: HbonePool, authority: str, headers: Headers = ()
) -> HboneStream:
    return await pool.open_stream(CLIENT_ID, SERVER_ID, (LOOPBACK, server.port), authority, headers)


async def read_all(stream: HboneStream) -> bytes:
    chunks = []
    while data := await stream.read():
        chunks.append(data)
    return b"".join(chunks)


def test_an_overriding_serve_stream_gets_the_stream_the_peer_and_the_request_and_answers(
    ca: TestCa, client_svid: Svid, server_svid: Svid
) -> None:
    async def main() -> None:
        async with greeting_mesh(ca, client_svid, server_svid) as (server, pool):
            headers = (("forwarded", "for=10.0.0.5"), ("baggage", "a=b"))
            stream = await open_stream(server, pool, "10.96.0.7:80", headers)
            await stream.write(b"ping")
            stream.close_write()
            answer = await read_all(stream)
            assert answer == (
                f"{CLIENT_ID.uri} 10.96.0.7:80 forwarded=for=10.0.0.5,baggage=a=b|ping".encode()
            )
            assert server.served == [(CLIENT_ID, "10.96.0.7:80", headers)]
            # The override keeps the stats: the default's counters stay untouched.
            assert server.stats.tunnels_opened == 0
            assert server.stats.connections_accepted == 1

    run(main)


@pytest.mark.parametrize("status", [401, 503])
def test_an_overriding_serve_stream_can_refuse_the_tunnel_with_a_status(
    ca: TestCa, client_svid: Svid, server_svid: Svid, status: int
) -> None:
    async def main() -> None:
        async with greeting_mesh(ca, client_svid, server_svid) as (server, pool):
            with pytest.raises(TunnelRefusedError) as refused:
                await open_stream(server, pool, f"{REFUSE_IP}:{status}")
            assert refused.value.status == status
            # The refusal cost that stream only: the same connection serves the next one.
            stream = await open_stream(server, pool, "10.96.0.7:80")
            stream.close_write()
            assert (await read_all(stream)).endswith(b"|")
            assert pool.stats.handshakes == 1

    run(main)


def test_closing_the_server_cancels_an_overriding_serve_stream(
    ca: TestCa, client_svid: Svid, server_svid: Svid
) -> None:
    async def main() -> None:
        async with greeting_mesh(ca, client_svid, server_svid) as (server, pool):
            stream = await open_stream(server, pool, HANG)
            await server.close()
            assert server.cancelled == 1
            with pytest.raises((StreamResetError, ConnectionError)):
                await asyncio.wait_for(read_all(stream), 5.0)

    run(main)


def test_an_overriding_serve_stream_refuses_the_native_data_path(
    ca: TestCa, server_svid: Svid
) -> None:
    # Raised whether or not weft._native is built here: the hook cannot run on it at all.
    with pytest.raises(HboneError, match=r"GreetingServer overrides serve_stream\(\)") as error:
        GreetingServer(server_context(server_svid, ca.bundle_pem), data_path="native")
    assert 'data_path="python"' in str(error.value)


@pytest.mark.skipif(not native_available(), reason="weft._native is not built")
def test_a_subclass_that_keeps_the_default_serve_stream_may_run_natively(
    ca: TestCa, server_svid: Svid
) -> None:
    class Counting(HboneServer):
        """A subclass for another reason: it keeps the default serve_stream()."""

    server = Counting(
        server_context(server_svid, ca.bundle_pem),
        refuse_authorize,
        refuse_connect,
        data_path="native",
    )
    assert server.data_path == "native"
