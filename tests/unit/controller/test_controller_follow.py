"""weft.controller_client.follow_discovery: static stability and resync across a restart."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from controller_testkit import (
    admin_credentials,
    grpc_address,
    join,
    namespace_doc,
    start_controller,
    workload_doc,
)

from controller.admin_client import AdminClient
from controller.server import Controller, ControllerConfig
from weft.api.convert import ConfigUpdate
from weft.controller_client import Backoff, follow_discovery
from weft.resources import Document


def apply(controller: Controller, *bodies: dict[str, object]) -> int:
    with AdminClient(grpc_address(controller), admin_credentials(controller)) as admin:
        return admin.apply([Document("t.yaml", i, b) for i, b in enumerate(bodies)]).revision


class Follower:
    """follow_discovery on its own loop; records updates and disconnects."""

    def __init__(self, address: str, controller: Controller, node: str) -> None:
        identity = join(controller, node)
        self.updates: list[ConfigUpdate] = []
        self.disconnects: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.stop_event: asyncio.Event | None = None

        async def record(update: ConfigUpdate) -> str | None:
            self.updates.append(update)
            return None

        async def main() -> None:
            self.stop_event = asyncio.Event()
            await follow_discovery(
                address,
                identity.credentials,
                node,
                record,
                self.stop_event,
                backoff=Backoff(initial=0.05, maximum=0.2),
                on_disconnect=self.disconnects.append,
            )

        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(main(),))
        self.thread.start()

    def wait(self, predicate: object, timeout: float = 10) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():  # type: ignore[operator]
                return True
            time.sleep(0.02)
        return False

    def stop(self) -> None:
        if self.stop_event is not None:
            self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(10)
        assert not self.thread.is_alive()


def test_follower_survives_a_controller_restart_and_resyncs_from_a_snapshot(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = start_controller(state)
    apply(first, namespace_doc("shop"), workload_doc("w1", "n1", ip="10.1.0.1"))
    port = first.grpc_port
    follower = Follower(f"127.0.0.1:{port}", first, "n1")
    second: Controller | None = None
    try:
        assert follower.wait(lambda: len(follower.updates) == 1)
        assert follower.updates[0].snapshot
        first.stop(grace=0.1)
        assert follower.wait(lambda: follower.disconnects)
        held = len(follower.updates)  # nothing is dropped while the controller is away
        second = Controller(
            ControllerConfig(
                state_dir=state, listen="127.0.0.1", grpc_port=port, join_port=0, http_port=0
            )
        )
        second.start()
        revision = apply(second, workload_doc("w2", "n1", ip="10.1.0.2"))
        assert follower.wait(
            lambda: any(u.snapshot and u.version >= revision - 1 for u in follower.updates[held:])
        )
        assert follower.wait(lambda: follower.updates[-1].version == revision)
        names = {r.parsed.key.name for u in follower.updates for r in u.upserts}
        assert {"w1", "w2"} <= names
    finally:
        follower.stop()
        first.stop(grace=0.1)
        if second is not None:
            second.stop(grace=0.1)
