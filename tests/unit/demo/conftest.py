"""Fixtures that run the real demo services as processes on 127.0.0.1 with ephemeral ports."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from demo_processes import (
    RunningService,
    ServiceStarter,
    Shop,
    SilentBackend,
    frontend_command,
    start_service,
    start_services,
    stop_services,
)


@pytest.fixture
def start() -> Iterator[ServiceStarter]:
    """Start services for one test; every one still running is stopped afterwards."""
    started: list[RunningService] = []

    def starter(module: str, *args: str) -> RunningService:
        service = start_service(module, *args)
        started.append(service)
        return service

    yield starter
    stop_services(started)


@pytest.fixture(scope="session")
def shop() -> Iterator[Shop]:
    """The whole demo shop, shared by the tests that only send it traffic."""
    services = start_services(
        ("catalog",),
        ("reviews", "--version", "v1"),
        ("reviews", "--version", "v2"),
        ("ratings",),
        ("echo",),
    )
    try:
        catalog, reviews_v1, reviews_v2, ratings, echo = services
        frontend = start_service(
            *frontend_command(catalog.address, reviews_v2.address, ratings.address)
        )
        services.append(frontend)
        yield Shop(catalog, reviews_v1, reviews_v2, ratings, echo, frontend)
    finally:
        stop_services(services)


@pytest.fixture
def refused_address() -> Iterator[str]:
    """A loopback address whose port is bound but not listening: connecting is refused."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    yield f"127.0.0.1:{holder.getsockname()[1]}"
    holder.close()


@pytest.fixture
def silent_backend() -> Iterator[SilentBackend]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.1)
    accepted = threading.Event()
    stop = threading.Event()
    held: list[socket.socket] = []

    def accept_and_hold() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            held.append(connection)
            accepted.set()

    thread = threading.Thread(target=accept_and_hold, daemon=True)
    thread.start()
    yield SilentBackend(f"127.0.0.1:{listener.getsockname()[1]}", accepted)
    stop.set()
    thread.join(timeout=2)
    for connection in held:
        connection.close()
    listener.close()
