"""`weft waypoint run --workers N`: worker processes on one port, one /metrics, restarts, stop."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest
from waypoint_testing import TEST_TIMEOUT_S, Backend, Client

from bench.paths import WAYPOINT_RESOURCES, WAYPOINT_SERVICE
from waypoint.cli import _workers
from waypoint.workers import default_workers
from weft.errors import UsageError

HOST = WAYPOINT_SERVICE  # the bench's standalone waypoint resources serve it (one route, /)


class Waypoint:
    """`weft waypoint run --workers 2` as a child process, its stderr read line by line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []

    async def wait_line(self, pattern: str, timeout_s: float = 60.0) -> re.Match[str]:
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        while True:
            for line in self.lines:
                found = compiled.search(line)
                if found is not None:
                    return found
            assert self.process.stderr is not None
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no line matching {pattern!r} in {self.lines}"
            line = await asyncio.wait_for(self.process.stderr.readline(), remaining)
            assert line, f"the waypoint exited; no {pattern!r} in {self.lines}"
            self.lines.append(line.decode())


async def requests_on_new_connections(port: int, count: int) -> list[str]:
    """`count` requests, each on its own connection (so the kernel spreads them)."""
    backends = []
    for _ in range(count):
        client = await Client.connect(port)
        answer = await client.get("/hello", host=HOST)
        client.close()
        assert answer.response.status == 200
        backends.append(str(answer.json()["backend"]))
    return backends


async def scrape(port: int) -> float:
    """The sum of istio_requests_total over its series, from the parent's /metrics."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: admin\r\n\r\n")
    text = (await asyncio.wait_for(reader.read(), TEST_TIMEOUT_S)).decode()
    writer.close()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("istio_requests_total{")
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"


def test_workers_share_a_port_report_one_metrics_restart_and_stop(tmp_path: Path) -> None:
    resources = tmp_path / "wp.yaml"
    resources.write_text(WAYPOINT_RESOURCES)

    async def main() -> None:
        backend = await Backend("b0").start()
        argv = [sys.executable, "-m", "weft.cli", "waypoint", "run", "-f", str(resources)]
        argv += ["--name", "bench-waypoint", "--namespace", "bench", "--workers", "2"]
        argv += ["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]
        argv += ["--endpoint", f"{WAYPOINT_SERVICE}={backend.endpoint}", "--max-seconds", "60"]
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        waypoint = Waypoint(process)
        try:
            admin = int((await waypoint.wait_line(r"metrics on http://[\d.]+:(\d+)/")).group(1))
            pattern = r"2 workers \(pids (\d+), (\d+)\) serving on .*:(\d+)"
            serving = await waypoint.wait_line(pattern)
            first, second, port = (int(group) for group in serving.groups())
            assert alive(first)
            assert alive(second)

            await requests_on_new_connections(port, 20)
            assert await scrape(admin) == 20  # both workers' series, summed by the parent

            os.kill(first, signal.SIGKILL)  # a crash
            await waypoint.wait_line(rf"worker 0 \(pid {first}\) exited with signal SIGKILL")
            again = int((await waypoint.wait_line(r"worker 0 started again as pid (\d+)")).group(1))
            deadline = time.monotonic() + 30
            while await scrape(admin) != 20 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)  # the new worker reports once it listens
            await requests_on_new_connections(port, 10)
            # The crashed worker's last series stay counted: the counter never goes back.
            assert await scrape(admin) == 30

            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), TEST_TIMEOUT_S) == 0
            for pid in (second, again):
                assert not alive(pid), f"worker {pid} outlived the parent"
            assert process.stdout is not None
            log = (await process.stdout.read()).decode().splitlines()
            # Access-log lines of both workers, none cut or interleaved (the killed worker's
            # buffered lines are lost with it).
            entries = [json.loads(line) for line in log]
            assert {e["path"] for e in entries} == {"/hello"}
            assert 10 <= len(entries) <= 30
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            await backend.stop()

    asyncio.run(main())


def namespace(**values: object) -> argparse.Namespace:
    defaults: dict[str, object] = {
        "worker_control_fd": None, "workers": None, "hbone": "off", "filename": ["a.yaml"],
        "listen": "127.0.0.1:15080",
    }  # fmt: skip
    defaults.update(values)
    return argparse.Namespace(**defaults)


def test_default_is_one_worker_per_cpu_only_where_workers_can_share_the_work() -> None:
    assert _workers(namespace(), controller=False) == default_workers()
    assert _workers(namespace(workers=1), controller=False) == 1
    assert _workers(namespace(), controller=True) == 1
    assert _workers(namespace(hbone="0.0.0.0:15008"), controller=False) == 1
    assert _workers(namespace(filename=["-"]), controller=False) == 1
    assert _workers(namespace(worker_control_fd=5, workers=None), controller=False) == 1


def test_workers_with_what_one_process_must_serve_is_a_usage_error_naming_it() -> None:
    with pytest.raises(UsageError, match="--workers 2 cannot be used with --hbone"):
        _workers(namespace(workers=2, hbone="0.0.0.0:15008"), controller=False)
    with pytest.raises(UsageError, match="--controller"):
        _workers(namespace(workers=2, filename=None), controller=True)
