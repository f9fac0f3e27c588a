"""A same-node splice bed for kernel tests: client workload, the agent's splice, server workload.

The client is a real process in an enrolled workload cgroup (tests/kernel/splice_peer.py), so
its connect() is captured by the real programs. The agent is the same-node path of
agent/outbound.py reduced to the splice: accept the captured connection, recover its original
destination from the maps, connect to it from the agent's address and hand both connections to
agent.tunnel.kernel_splice.splice_connections, unchanged. The server is a listener created in
another enrolled workload's cgroup, serving each connection in a thread with a chosen behaviour.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernel_sandbox import AGENT_ADDR, SERVER_ADDR, Node, in_cgroup
from splice_peer import TIMEOUT_S

from agent.bpf.loader import cgroup_id
from agent.tunnel.kernel_splice import splice_connections
from agent.tunnel.pipe import PipeResult

PEER_SCRIPT = Path(__file__).with_name("splice_peer.py")
AGENT_PORT = 15001  # the Loader's default outbound capture port

ServerBehaviour = Callable[[socket.socket], None]


@dataclass
class MiniAgent:
    """Accepts captured connections and splices each to its original destination."""

    node: Node
    results: list[PipeResult] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _thread: threading.Thread | None = None
    _serving: asyncio.Task[None] | None = None

    def start(self) -> None:
        def make_listener() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((AGENT_ADDR, AGENT_PORT))
            s.listen(256)
            s.setblocking(False)
            return s

        listener = self.node.netns.socket_in(make_listener)
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

        async def spawn() -> asyncio.Task[None]:
            return asyncio.create_task(self._serve(listener))

        self._serving = asyncio.run_coroutine_threadsafe(spawn(), self._loop).result(5)

    async def _serve(self, listener: socket.socket) -> None:
        tasks = set()
        try:
            with listener:
                while True:
                    sock, peer = await self._loop.sock_accept(listener)
                    task = asyncio.create_task(self._handle(sock, peer))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _upstream_socket(self) -> socket.socket:
        def make() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((AGENT_ADDR, 0))  # the agent delivers from its own address, as inbound.py
            s.setblocking(False)
            return s

        return self.node.netns.socket_in(make)

    async def _handle(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        try:
            orig = self.node.maps.original_destination(peer, sock.getsockname())
            assert orig is not None, f"no original destination for {peer}"
            up = self._upstream_socket()
            await self._loop.sock_connect(up, (str(orig.addr), orig.port))
            downstream = await asyncio.open_connection(sock=sock)
            upstream = await asyncio.open_connection(sock=up)
            result = await splice_connections(self.node.maps, downstream, upstream, orig.cgroup_id)
            self.results.append(result)
        except BaseException as exc:  # recorded for the test to assert on
            self.errors.append(exc)
            sock.close()

    def stop(self) -> None:
        """Stop accepting, end every splice still running (their sockets close), stop the loop."""

        async def shutdown() -> None:
            if self._serving is not None:
                self._serving.cancel()
                await asyncio.gather(self._serving, return_exceptions=True)

        if self._thread is not None:
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        self._loop.close()


@dataclass
class Server:
    """A listener in a workload's cgroup; each connection is served by `behaviour` in a thread."""

    sock: socket.socket
    behaviour: ServerBehaviour
    outcomes: list[Any] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self.sock.settimeout(0.2)
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(TIMEOUT_S)
        try:
            with conn:
                self.behaviour(conn)
        except BaseException as exc:
            self.outcomes.append(exc)

    def join(self, timeout: float) -> None:
        for thread in list(self._threads[1:]):
            thread.join(timeout)

    def stop(self) -> None:
        self._stop.set()
        self._threads[0].join(timeout=5)
        self.sock.close()


@dataclass
class SpliceBed:
    node: Node
    client_cgroup: Path
    server_cgroup: Path
    agent: MiniAgent
    port: int

    @property
    def client_workload(self) -> int:
        return cgroup_id(self.client_cgroup)

    @contextlib.contextmanager
    def server(self, behaviour: ServerBehaviour) -> Iterator[Server]:
        def make() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((SERVER_ADDR, self.port))
            s.listen(256)
            return s

        # Accepted sockets inherit the listener's cgroup: the server side is a workload too.
        with in_cgroup(self.server_cgroup):
            listener = self.node.netns.socket_in(make)
        server = Server(listener, behaviour)
        server.start()
        try:
            yield server
        finally:
            server.stop()

    def _client_argv(self, mode: str, *args: int) -> list[str]:
        argv = [str(self.client_cgroup), mode, SERVER_ADDR, str(self.port), *map(str, args)]
        return ["nsenter", f"--net={self.node.netns.path}", sys.executable, str(PEER_SCRIPT), *argv]

    def start_client(self, mode: str, *args: int) -> subprocess.Popen[str]:
        """splice_peer.py in the client workload, left running (stdin and stdout are pipes)."""
        return subprocess.Popen(
            self._client_argv(mode, *args),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def client(self, mode: str, *args: int, timeout: float = 120.0) -> dict[str, Any]:
        """Run splice_peer.py in the client workload against the server's address."""
        proc = subprocess.run(
            self._client_argv(mode, *args),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert proc.returncode == 0, f"client failed: {proc.stderr[-2000:]}"
        out: dict[str, Any] = json.loads(proc.stdout)
        return out

    def wait_for_results(self, count: int, timeout: float) -> list[PipeResult]:
        """The agent's results once `count` splices have ended (both directions closed)."""
        deadline = time.monotonic() + timeout
        while len(self.agent.results) + len(self.agent.errors) < count:
            assert time.monotonic() < deadline, (
                f"{len(self.agent.results)} of {count} splices ended within {timeout} s"
            )
            threading.Event().wait(0.01)
        assert not self.agent.errors, self.agent.errors
        return self.agent.results


@contextlib.contextmanager
def splice_bed(node: Node, enrollment: Any, port: int) -> Iterator[SpliceBed]:
    client = node.workload("splice-client", enrollment)
    server = node.workload("splice-server", enrollment)
    agent = MiniAgent(node)
    agent.start()
    try:
        yield SpliceBed(node, client, server, agent, port)
    finally:
        agent.stop()
