"""A slowloris client (a request head trickling in) gets 408 at request_headers_timeout and is
closed, while an idle keep-alive client between requests is not, and others are served."""

from __future__ import annotations

import asyncio
import time

from waypoint_testing import HOST, REVIEWS_V1, Client, hello_backend

from waypoint.config import Route, ServiceConfig, WaypointConfig
from waypoint.proxy import WaypointProxy


def test_a_trickled_head_gets_408_while_other_clients_are_served() -> None:
    async def main() -> tuple[float, int, bool, list[int], int]:
        backend = await asyncio.start_server(hello_backend, "127.0.0.1", 0)
        endpoint = f"127.0.0.1:{backend.sockets[0].getsockname()[1]}"
        proxy = WaypointProxy(
            WaypointConfig(
                services=(ServiceConfig(HOST, 9080, (Route("r", backends=(REVIEWS_V1,)),)),)
            ),
            {REVIEWS_V1.authority: [endpoint]},
            request_headers_timeout_s=0.5,
        )
        _, port = await proxy.start()
        slow = await Client.connect(port)
        started = time.monotonic()

        async def trickle() -> None:
            # one byte of header every 0.1 s: reads keep coming, only the deadline stops it
            slow.writer.write(b"GET / HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\nX-Slow: ")
            for _ in range(50):
                try:
                    slow.writer.write(b"a")
                    await slow.writer.drain()
                except ConnectionError:
                    return
                await asyncio.sleep(0.1)

        async def others() -> list[int]:
            statuses = []
            while time.monotonic() - started < 0.4:
                other = await Client.connect(port)
                statuses.append((await other.get("/")).response.status)
                other.close()
                await asyncio.sleep(0.05)
            return statuses

        trickling = asyncio.create_task(trickle())
        statuses = await others()
        answer = await asyncio.wait_for(slow.reader.read(), 5)
        elapsed = time.monotonic() - started
        closed = slow.reader.at_eof()
        trickling.cancel()
        slow.close()
        # an idle keep-alive client (nothing sent after its request) is not cut at 0.5 s
        idle = await Client.connect(port)
        first = (await idle.get("/")).response.status
        await asyncio.sleep(0.8)
        second = (await idle.get("/")).response.status
        idle.close()
        await proxy.close()
        backend.close()
        code = int(answer.split(b" ", 2)[1]) if answer else 0
        return elapsed, code, closed, statuses, first + second

    elapsed, code, closed, statuses, idle = asyncio.run(asyncio.wait_for(main(), 20))
    assert code == 408
    assert closed
    assert 0.4 <= elapsed <= 1.2
    assert statuses
    assert set(statuses) == {200}
    assert idle == 400
