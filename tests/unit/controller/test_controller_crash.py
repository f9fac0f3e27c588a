"""kill -9 of a real controller process in the middle of an apply: all or nothing, nothing lost."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest
from controller_testkit import ip_of, spawn_controller, workload_doc

from controller.admin_client import AdminClient
from weft.controller_client import Credentials
from weft.errors import WeftError
from weft.model import Kind
from weft.resources import Document

BIG = 8000


@pytest.mark.parametrize("delay", [0.2, 0.5, 0.65, 0.8, 1.1])
def test_kill_9_mid_apply_keeps_acknowledged_and_applies_all_or_none(
    tmp_path: Path, delay: float
) -> None:
    state = tmp_path / "state"
    proc, address = spawn_controller(state)
    creds = Credentials.from_file(state / "admin.pem")
    outcome: dict[str, object] = {}
    try:
        with AdminClient(address, creds) as admin:
            acked = admin.apply(
                [
                    Document("a.yaml", i, workload_doc(f"a{i}", "n1", ip=ip_of(i + 1)))
                    for i in range(100)
                ]
            )
        big = [
            Document("b.yaml", i, workload_doc(f"b{i}", "n2", ip=ip_of(100_000 + i)))
            for i in range(BIG)
        ]

        def apply_big() -> None:
            try:
                with AdminClient(address, creds, timeout=30) as admin:
                    outcome["revision"] = admin.apply(big).revision
            except WeftError as err:
                outcome["error"] = str(err)

        worker = threading.Thread(target=apply_big)
        worker.start()
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        worker.join(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    restarted, address = spawn_controller(state)
    try:
        with AdminClient(address, creds) as admin:
            names = {key.name for key, _, _ in admin.get(Kind.WORKLOAD, "shop")}
            revision = admin.status().revision
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(10)
    assert {f"a{i}" for i in range(100)} <= names  # acknowledged before the crash
    applied = len([n for n in names if n.startswith("b")])
    assert applied in (0, BIG)  # never half
    if "revision" in outcome:  # acknowledged to the client: must have survived
        assert applied == BIG
    assert revision == acked.revision + (1 if applied else 0)
