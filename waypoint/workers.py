"""`weft waypoint run --workers N`: the worker processes, and the parent that runs them.

Each worker is a whole waypoint (`weft waypoint run` with its own uvloop) listening on the same
port with SO_REUSEPORT, so the kernel spreads connections over them as haproxy's threads share
its listeners. The parent holds no connection: it reserves the port (bound, never listening, so
no connection waits on it), serves the admin endpoint, and asks every worker for its request
series when /metrics is scraped, so one scrape shows the whole waypoint. A worker that exits
while the parent runs is logged and started again (with a growing delay if it keeps crashing);
its last reported series stay counted so counters never go back. On SIGTERM or SIGINT the parent
sends SIGTERM to each worker, which closes its listener and flushes its access log, and waits.

The parent and a worker talk over a socketpair passed as `--worker-control-fd`: the worker sends
`R` once it listens; the parent sends `M`, the worker answers `M` with its series as JSON. Each
message is a type byte, a 4-byte big-endian length and the payload. A worker whose parent is
gone (the socket closes) stops by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Sequence

from waypoint.admin import AdminServer
from waypoint.telemetry import Series, WaypointMetrics

GRACE_S = 10.0  # how long a worker may take to stop before it is killed
SNAPSHOT_TIMEOUT_S = 2.0
_HEADER = struct.Struct(">cI")


def default_workers() -> int:
    """One worker per CPU this process may run on, as haproxy starts one thread per CPU."""
    return max(1, len(os.sched_getaffinity(0)))


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (without listening) with SO_REUSEPORT: fixes the port when 0 was asked for and
    fails early, with the port named, if something else holds it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def encode_message(kind: bytes, payload: bytes = b"") -> bytes:
    return _HEADER.pack(kind, len(payload)) + payload


async def read_message(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """(type, payload); IncompleteReadError when the other side closed."""
    kind, length = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    return kind, await reader.readexactly(length) if length else b""


def encode_series(metrics: WaypointMetrics) -> bytes:
    return json.dumps([[list(k), *v] for k, v in metrics.snapshot().items()]).encode()


def decode_series(payload: bytes) -> dict[tuple[str, ...], Series]:
    return {tuple(item[0]): [item[1], item[2], item[3]] for item in json.loads(payload)}


# --- the worker's side ------------------------------------------------------------------------


async def serve_control(fd: int, metrics: WaypointMetrics, stop: asyncio.Event) -> None:
    """In a worker: say it is ready, answer the parent's requests for series, and stop the
    worker when the parent goes away."""
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    writer.write(encode_message(b"R"))
    try:
        while True:
            kind, _ = await read_message(reader)
            if kind == b"M":
                writer.write(encode_message(b"M", encode_series(metrics)))
                await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        stop.set()  # the parent is gone: a worker never outlives it
    finally:
        writer.close()


# --- the parent's side --------------------------------------------------------------------------


class Worker:
    """One worker process and the parent's end of its control socket."""

    def __init__(self, index: int, argv: Sequence[str]) -> None:
        self.index = index
        self.argv = list(argv)
        self.process: asyncio.subprocess.Process | None = None
        self.ready = False
        self.last: dict[tuple[str, ...], Series] = {}  # the series it reported last
        self.started_at = 0.0
        self._writer: asyncio.StreamWriter | None = None
        self._answers: asyncio.Queue[bytes] = asyncio.Queue()
        self._lock = asyncio.Lock()
        self._reading: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    async def start(self) -> None:
        parent_end, child_end = socket.socketpair()
        try:
            fd = child_end.fileno()
            argv = [*self.argv, "--worker-control-fd", str(fd)]
            self.process = await asyncio.create_subprocess_exec(*argv, pass_fds=(fd,))
        finally:
            child_end.close()
        self.started_at = time.monotonic()
        self.ready = False
        self._answers = asyncio.Queue()
        reader, self._writer = await asyncio.open_unix_connection(sock=parent_end)
        self._reading = asyncio.get_running_loop().create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                kind, payload = await read_message(reader)
                if kind == b"R":
                    self.ready = True
                elif kind == b"M":
                    self._answers.put_nowait(payload)

    async def series(self) -> dict[tuple[str, ...], Series]:
        """Its series now; the last ones it reported if it does not answer in time."""
        writer = self._writer
        if writer is None or not self.ready:
            return self.last
        async with self._lock:
            try:
                writer.write(encode_message(b"M"))
                await writer.drain()
                payload = await asyncio.wait_for(self._answers.get(), SNAPSHOT_TIMEOUT_S)
            except (ConnectionError, TimeoutError):
                return self.last
        self.last = decode_series(payload)
        return self.last

    def detach(self) -> None:
        """The process exited: drop the control socket."""
        self.ready = False
        if self._reading is not None:
            self._reading.cancel()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


class Supervisor:
    """Starts `count` workers from `argv`, restarts those that die, serves the admin endpoint."""

    def __init__(
        self,
        argv: Sequence[str],
        count: int,
        *,
        log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
        restart_delay_s: float = 0.5,
    ) -> None:
        self.workers = [Worker(index, argv) for index in range(count)]
        self.log = log
        self.restart_delay_s = restart_delay_s
        self.restarts = 0
        self._stopping = False
        self._retired = WaypointMetrics()  # series of worker processes that exited
        self._watchers: list[asyncio.Task[None]] = []

    def ready(self) -> bool:
        """Serving: some worker listens (while one restarts, the others still take the port)."""
        return any(worker.ready for worker in self.workers)

    async def gather(self) -> WaypointMetrics:
        """The whole waypoint's series: every worker's now, plus those of exited processes."""
        merged = WaypointMetrics()
        merged.merge(self._retired.snapshot())
        for series in await asyncio.gather(*(worker.series() for worker in self.workers)):
            merged.merge(series)
        return merged

    def admin(self) -> AdminServer:
        return AdminServer(WaypointMetrics(), ready=self.ready, gather=self.gather)

    async def start(self, ready_timeout_s: float = 120.0) -> None:
        """Start every worker and wait until each listens (or one exits, or time is up)."""
        for worker in self.workers:
            await worker.start()
        deadline = time.monotonic() + ready_timeout_s
        while not all(worker.ready for worker in self.workers):
            for worker in self.workers:
                process = worker.process
                if process is not None and process.returncode is not None:
                    raise RuntimeError(
                        f"waypoint worker {worker.index} exited with "
                        f"{describe_exit(process.returncode)} before it listened (see above)"
                    )
            if time.monotonic() > deadline:
                raise RuntimeError(f"waypoint workers not listening after {ready_timeout_s:.0f} s")
            await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        self._watchers = [loop.create_task(self._watch(worker)) for worker in self.workers]

    async def _watch(self, worker: Worker) -> None:
        delay = self.restart_delay_s
        while True:
            assert worker.process is not None
            code = await worker.process.wait()
            worker.detach()
            if self._stopping:
                return
            await asyncio.sleep(0.2)  # a Ctrl-C reaches the workers and us at once
            if self._stopping:
                return
            self._retired.merge(worker.last)
            worker.last = {}
            ran = time.monotonic() - worker.started_at
            delay = self.restart_delay_s if ran > 10.0 else min(delay * 2, 30.0)
            self.log(
                f"waypoint: worker {worker.index} (pid {worker.pid}) exited with "
                f"{describe_exit(code)}; starting it again in {delay:.1f} s"
            )
            await asyncio.sleep(delay)
            if self._stopping:
                return
            await worker.start()
            self.restarts += 1
            self.log(f"waypoint: worker {worker.index} started again as pid {worker.pid}")

    async def stop(self, grace_s: float = GRACE_S) -> list[int | None]:
        """SIGTERM every worker, wait up to `grace_s` for them, kill the rest; exit codes."""
        self._stopping = True
        for watcher in self._watchers:
            watcher.cancel()
        for worker in self.workers:
            worker.signal(signal.SIGTERM)
        codes: list[int | None] = []
        for worker in self.workers:
            process = worker.process
            if process is None:
                codes.append(None)
                continue
            try:
                codes.append(await asyncio.wait_for(process.wait(), grace_s))
            except TimeoutError:
                worker.signal(signal.SIGKILL)
                codes.append(await process.wait())
            worker.detach()
        return codes
