"""DiscoveryService.Watch over real gRPC: snapshot, scoped deltas, ACK/NACK, resync, latency."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator

import grpc
import pytest
from controller_testkit import (
    admin_credentials,
    grpc_address,
    join,
    namespace_doc,
    service_doc,
    workload_doc,
)

from controller.admin_client import AdminClient
from controller.server import Controller
from weft.api.convert import ConfigUpdate
from weft.controller_client import ControllerClient, Credentials
from weft.model import AgentReport, Kind, ResourceKey
from weft.resources import Document


class WatchThread:
    """An agent-side watcher on its own event loop; ACKs every update unless told to NACK."""

    def __init__(self, address: str, credentials: Credentials, node: str) -> None:
        self.updates: list[tuple[float, ConfigUpdate]] = []
        self.nack_versions: set[int] = set()
        self.error: grpc.StatusCode | None = None
        self.arrived = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(
            target=self._loop.run_until_complete, args=(self._run(address, credentials, node),)
        )
        self._thread.start()

    async def _run(self, address: str, credentials: Credentials, node: str) -> None:
        self._stop = asyncio.Event()
        async with ControllerClient(address, credentials) as client:
            stream = client.watch(node)
            reader = asyncio.ensure_future(self._read(stream))
            await self._stop.wait()
            stream.cancel()
            reader.cancel()

    async def _read(self, stream: object) -> None:
        try:
            await self._read_updates(stream)
        except grpc.aio.AioRpcError as err:
            self.error = err.code()

    async def _read_updates(self, stream: object) -> None:
        async for update in stream:  # type: ignore[attr-defined]
            with self.arrived:
                self.updates.append((time.perf_counter(), update))
                self.arrived.notify_all()
            if update.version in self.nack_versions:
                await stream.nack(update.version, "route refers to an unknown backend")  # type: ignore[attr-defined]
            else:
                await stream.ack(update.version)  # type: ignore[attr-defined]

    def wait_for(self, count: int, timeout: float = 5.0) -> list[ConfigUpdate]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.updates) >= count, timeout)
            return [u for _, u in self.updates]

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)


def apply(controller: Controller, *bodies: dict[str, object]) -> int:
    with AdminClient(grpc_address(controller), admin_credentials(controller)) as admin:
        return admin.apply([Document("t.yaml", i, b) for i, b in enumerate(bodies)]).revision


@pytest.fixture
def mesh(controller: Controller) -> Controller:
    apply(
        controller,
        namespace_doc("shop"),
        workload_doc("front-1", "n1", app="front", ip="10.1.1.1"),
        workload_doc("cart-1", "n2", app="cart", ip="10.1.2.1"),
        workload_doc("batch-1", "n2", app="batch", ip="10.1.2.2"),  # no service selects it
        service_doc("cart", "cart", vip="10.96.0.2"),
    )
    return controller


@pytest.fixture
def n1_watch(mesh: Controller) -> Iterator[WatchThread]:
    node = join(mesh, "n1")
    watch = WatchThread(grpc_address(mesh), node.credentials(), "n1")
    yield watch
    watch.stop()


def keys(update: ConfigUpdate) -> set[str]:
    return {str(r.parsed.key) for r in update.upserts}


def test_first_update_is_a_snapshot_scoped_to_the_node(n1_watch: WatchThread) -> None:
    [snapshot] = n1_watch.wait_for(1)
    assert snapshot.snapshot
    assert keys(snapshot) == {
        "Namespace/shop",
        "Workload/shop/front-1",  # runs on n1
        "Workload/shop/cart-1",  # endpoint of Service cart, reachable from n1
        "Service/shop/cart",
    }


def test_change_arrives_as_a_delta_with_a_new_version(
    mesh: Controller, n1_watch: WatchThread
) -> None:
    [snapshot] = n1_watch.wait_for(1)
    revision = apply(mesh, workload_doc("front-2", "n1", app="front", ip="10.1.1.2"))
    updates = n1_watch.wait_for(2)
    delta = updates[1]
    assert not delta.snapshot
    assert delta.version == revision > snapshot.version
    assert keys(delta) == {"Workload/shop/front-2"}


def test_change_on_another_node_is_not_sent(mesh: Controller, n1_watch: WatchThread) -> None:
    n1_watch.wait_for(1)
    apply(mesh, workload_doc("batch-2", "n2", app="batch", ip="10.1.2.3"))
    revision = apply(mesh, workload_doc("front-2", "n1", app="front", ip="10.1.1.2"))
    updates = n1_watch.wait_for(2)
    assert len(updates) == 2
    assert updates[1].version == revision
    assert "Workload/shop/batch-2" not in keys(updates[1])


def test_workload_that_stops_being_an_endpoint_is_removed(
    mesh: Controller, n1_watch: WatchThread
) -> None:
    n1_watch.wait_for(1)
    with AdminClient(grpc_address(mesh), admin_credentials(mesh)) as admin:
        admin.delete([ResourceKey(Kind.SERVICE, "shop", "cart")])
    delta = n1_watch.wait_for(2)[1]
    assert set(delta.removals) == {
        ResourceKey(Kind.SERVICE, "shop", "cart"),
        ResourceKey(Kind.WORKLOAD, "shop", "cart-1"),
    }


def only_agent_status(mesh: Controller, until: Callable[[AgentReport], bool]) -> AgentReport:
    """`weft status`'s row of the one agent, asked again (for up to 5 s) until `until(row)`."""
    with AdminClient(grpc_address(mesh), admin_credentials(mesh)) as admin:
        deadline = time.monotonic() + 5
        while True:
            [agent] = admin.status().agents
            if until(agent) or time.monotonic() > deadline:
                return agent
            time.sleep(0.02)


def test_nack_is_visible_in_status_and_cleared_by_a_later_ack(
    mesh: Controller, n1_watch: WatchThread
) -> None:
    n1_watch.wait_for(1)
    bad_revision = mesh.hub.catalog.revision + 1
    n1_watch.nack_versions.add(bad_revision)
    apply(mesh, workload_doc("front-2", "n1", app="front", ip="10.1.1.2"))
    n1_watch.wait_for(2)
    agent = only_agent_status(mesh, lambda a: a.nacked_version != 0)
    assert agent.node == "n1"
    assert agent.nacked_version == bad_revision
    assert "unknown backend" in agent.nack_error
    assert agent.acked_version < bad_revision
    assert agent.lag >= 1
    apply(mesh, workload_doc("front-3", "n1", app="front", ip="10.1.1.3"))
    n1_watch.wait_for(3)
    agent = only_agent_status(mesh, lambda a: a.nacked_version == 0)
    assert agent.nacked_version == 0
    assert agent.lag == 0


def test_reconnect_resyncs_from_a_snapshot(mesh: Controller, n1_watch: WatchThread) -> None:
    n1_watch.wait_for(1)
    n1_watch.stop()
    apply(mesh, workload_doc("front-2", "n1", app="front", ip="10.1.1.2"))
    node = join(mesh, "n1")
    again = WatchThread(grpc_address(mesh), node.credentials(), "n1")
    try:
        [snapshot] = again.wait_for(1)
        assert snapshot.snapshot
        assert "Workload/shop/front-2" in keys(snapshot)
    finally:
        again.stop()


def test_node_may_not_watch_another_node(mesh: Controller) -> None:
    node = join(mesh, "n1")
    watch = WatchThread(grpc_address(mesh), node.credentials(), "n2")
    try:
        deadline = time.monotonic() + 5
        while watch.error is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert watch.error == grpc.StatusCode.PERMISSION_DENIED
        assert watch.updates == []
    finally:
        watch.stop()


def test_delta_reaches_the_watcher_within_100ms_p99_over_100_applies(
    mesh: Controller, n1_watch: WatchThread
) -> None:
    n1_watch.wait_for(1)
    latencies = []
    with AdminClient(grpc_address(mesh), admin_credentials(mesh)) as admin:
        for i in range(100):
            doc = workload_doc(f"front-x{i}", "n1", app="front", ip=f"10.1.3.{i + 1}")
            sent = time.perf_counter()
            revision = admin.apply([Document("t.yaml", 0, doc)]).revision
            updates = n1_watch.wait_for(i + 2, timeout=2.0)
            assert updates[-1].version == revision
            latencies.append(n1_watch.updates[-1][0] - sent)
    latencies.sort()
    p99 = latencies[98]
    print(f"apply->delta latency: p50 {latencies[49] * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
    assert p99 < 0.100


def test_metrics_show_each_agents_version_lag_and_certificate_expiry(
    mesh: Controller, n1_watch: WatchThread
) -> None:
    [snapshot] = n1_watch.wait_for(1)
    url = f"http://127.0.0.1:{mesh.http_port}/metrics"
    deadline = time.monotonic() + 5
    text = ""
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url, timeout=5) as reply:
            text = reply.read().decode()
        if f'weft_controller_agent_acked_version{{node="n1"}} {snapshot.version}.0' in text:
            break
        time.sleep(0.02)
    assert f'weft_controller_agent_acked_version{{node="n1"}} {snapshot.version}.0' in text
    assert 'weft_controller_agent_lag_versions{node="n1"} 0.0' in text
    assert 'weft_controller_agent_connected{node="n1"} 1.0' in text
    assert 'weft_controller_node_certificate_expiry_timestamp_seconds{node="n1"}' in text
