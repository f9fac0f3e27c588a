"""Start the real demo services as processes on 127.0.0.1 with ephemeral ports, for tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
LISTENING = re.compile(r"^listening on (\S+):(\d+)$")
START_TIMEOUT_S = 10.0


@dataclass
class RunningService:
    """A demo service process and the address it announced."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM the process and return its exit code (it must exit by itself in time)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def output(self) -> str:
        return self.log_path.read_text()


@dataclass
class _Spawned:
    module: str
    process: subprocess.Popen[bytes]
    log_path: Path


def _spawn(module: str, *args: str) -> _Spawned:
    # Output goes to a file, not a pipe: a service logging a line per request would block once
    # an unread pipe filled up.
    handle, name = tempfile.mkstemp(prefix=f"demo-{module}-", suffix=".log")
    with os.fdopen(handle, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", f"demo.{module}", "--host", "127.0.0.1", "--port", "0", *args],
            cwd=REPO_ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    return _Spawned(module, process, Path(name))


def _wait_listening(spawned: _Spawned) -> RunningService:
    process, log_path = spawned.process, spawned.log_path
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        for line in log_path.read_text().splitlines():
            if match := LISTENING.match(line.strip()):
                host, port = match.group(1), int(match.group(2))
                return RunningService(spawned.module, process, log_path, host, port)
        time.sleep(0.01)
    process.kill()
    process.wait()
    raise RuntimeError(f"demo.{spawned.module} did not announce a port: {log_path.read_text()}")


def start_services(*commands: tuple[str, ...]) -> list[RunningService]:
    """Start several `python -m demo.<module> --host 127.0.0.1 --port 0 ...` at once.

    Each command is (module, *args); returns once every one announced its port.
    """
    spawned = [_spawn(*command) for command in commands]
    started: list[RunningService] = []
    try:
        for each in spawned:
            started.append(_wait_listening(each))
    except BaseException:
        for each in spawned[len(started) :]:
            each.process.kill()
            each.process.wait()
        for service in started:
            service.stop()
        raise
    return started


def stop_services(services: list[RunningService]) -> None:
    """SIGTERM every service first and then wait, so their shutdowns overlap."""
    for service in services:
        if service.process.poll() is None:
            service.process.send_signal(signal.SIGTERM)
    for service in services:
        service.stop()
        service.log_path.unlink(missing_ok=True)


def start_service(module: str, *args: str) -> RunningService:
    """Start one service and wait for the port it announces."""
    (service,) = start_services((module, *args))
    return service


ServiceStarter = Callable[..., RunningService]


def frontend_command(catalog: str, reviews: str, ratings: str, *flags: str) -> tuple[str, ...]:
    """(module, *args) of a frontend calling these backend addresses."""
    return ("frontend", "--catalog", catalog, "--reviews", reviews, "--ratings", ratings, *flags)


@dataclass
class Shop:
    catalog: RunningService
    reviews_v1: RunningService
    reviews_v2: RunningService
    ratings: RunningService
    echo: RunningService
    frontend: RunningService


@dataclass
class SilentBackend:
    """A loopback server that accepts connections and never answers; `accepted` is set once."""

    address: str
    accepted: threading.Event
