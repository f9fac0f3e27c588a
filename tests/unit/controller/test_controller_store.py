"""controller.store: versioned, transactional, durable across restarts and kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from controller_testkit import namespace_doc, parsed, workload_doc

from controller.store import NodeCertificate, Store, TokenRefusedError
from weft.model import Kind, ResourceKey


def test_apply_bumps_one_revision_per_batch_and_logs_every_change(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    r1 = store.apply(parsed(namespace_doc("shop"), workload_doc("a", "n1")))
    assert r1.revision == 1
    assert len(r1.created) == 2
    r2 = store.apply(parsed(workload_doc("a", "n2"), namespace_doc("shop")))
    assert r2.revision == 2
    assert r2.configured == (ResourceKey(Kind.WORKLOAD, "shop", "a"),)
    assert r2.unchanged == (ResourceKey(Kind.NAMESPACE, "", "shop"),)
    assert [c.revision for c in store.changes(0)] == [1, 1, 2]
    [w] = store.resources(Kind.WORKLOAD)
    assert w.revision == 2
    assert w.document["spec"]["node"] == "n2"


def test_reapplying_identical_resources_changes_no_revision(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.apply(parsed(namespace_doc("shop")))
    again = store.apply(parsed(namespace_doc("shop")))
    assert again.revision == 1
    assert store.revision() == 1


def test_delete_removes_and_versions_only_what_existed(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.apply(parsed(workload_doc("a", "n1")))
    key = ResourceKey(Kind.WORKLOAD, "shop", "a")
    missing = ResourceKey(Kind.WORKLOAD, "shop", "zzz")
    revision, deleted = store.delete([key, missing])
    assert (revision, deleted) == (2, (key,))
    assert store.resources() == []
    assert store.changes(1)[0].document is None


def test_restart_keeps_every_acknowledged_change(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.apply(parsed(*(workload_doc(f"w{i}", "n1") for i in range(50))))
    store.close()
    reopened = Store(tmp_path / "s.db")
    assert len(reopened.resources(Kind.WORKLOAD)) == 50
    assert reopened.revision() == 1


def test_failed_batch_leaves_nothing_behind(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    good = parsed(workload_doc("ok", "n1"))[0]
    bad = parsed(workload_doc("bad", "n1"))[0]
    # A document that is not JSON-serializable fails mid-transaction, after `good` was written.
    broken = type(bad)(bad.key, bad.resource, {"spec": object()})
    with pytest.raises(TypeError):
        store.apply([good, broken])
    assert store.resources() == []
    assert store.revision() == 0


KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from controller_testkit import parsed, workload_doc, ip_of
    from controller.store import Store
    store = Store(Path({db!r}))
    store.apply(parsed(*(workload_doc(f"base{{i}}", "n1", ip=ip_of(i)) for i in range(100))))
    print("acked", flush=True)
    batch = parsed(*(workload_doc(f"big{{i}}", "n2", ip=ip_of(i)) for i in range(20000)))
    print("applying", flush=True)
    store.apply(batch)
    print("done", flush=True)
    """
)


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.15, 0.3])
def test_kill_9_during_apply_leaves_all_or_none_and_keeps_acknowledged(
    tmp_path: Path, delay: float
) -> None:
    db = tmp_path / "s.db"
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), db=str(db))
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=os.getcwd()
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "acked"
        assert proc.stdout.readline().strip() == "applying"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    store = Store(db)
    names = {r.key.name for r in store.resources(Kind.WORKLOAD)}
    assert {f"base{i}" for i in range(100)} <= names
    big = len([n for n in names if n.startswith("big")])
    assert big in (0, 20000)
    assert store.revision() == (2 if big else 1)


def test_join_token_is_one_time(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    token = store.create_join_token("n1", ttl_seconds=60, now=1000.0)
    assert store.redeem_join_token(token, now=1001.0) == "n1"
    with pytest.raises(TokenRefusedError, match="already used"):
        store.redeem_join_token(token, now=1002.0)


def test_expired_or_forged_join_tokens_are_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    token = store.create_join_token("n1", ttl_seconds=60, now=1000.0)
    with pytest.raises(TokenRefusedError, match="expired"):
        store.redeem_join_token(token, now=1060.0)
    forged = token.rsplit(".", 1)[0] + ".guess"
    with pytest.raises(TokenRefusedError, match="wrong secret"):
        store.redeem_join_token(forged, now=1001.0)
    with pytest.raises(TokenRefusedError, match="malformed"):
        store.redeem_join_token("hello", now=1001.0)


def test_node_certificate_record_is_replaced_on_renewal(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.record_node_certificate(NodeCertificate("n1", "01", 100.0, 1.0))
    store.record_node_certificate(NodeCertificate("n1", "02", 200.0, 2.0))
    assert store.node_certificates() == [NodeCertificate("n1", "02", 200.0, 2.0)]
