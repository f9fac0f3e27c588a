"""`weft controller ...` and `weft apply|get|delete|namespace|status` via the dispatcher."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from controller_testkit import grpc_address, spawn_controller

from controller.server import Controller
from weft.cli import main
from weft.errors import ExitCode

MESH = """\
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: weft.io/v1
kind: Workload
metadata: {name: cart-1, namespace: shop, labels: {app: cart}}
spec: {address: 10.1.2.1, node: n2, serviceAccount: cart}
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec:
  clusterIP: 10.96.0.2
  selector: {app: cart}
  ports: [{port: 80, targetPort: 8080}]
"""


def weft(controller: Controller, *args: str) -> int:
    flags = [
        "--controller",
        grpc_address(controller),
        "--state-dir",
        str(controller.config.state_dir),
    ]
    return main([args[0], *flags, *args[1:]])


def test_init_token_and_rotate_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = str(tmp_path / "state")
    assert main(["controller", "init", "--state-dir", state]) == 0
    assert "admin credential" in capsys.readouterr().out
    assert main(["controller", "init", "--state-dir", state]) == ExitCode.CONFLICT
    capsys.readouterr()
    assert (
        main(["controller", "token", "create", "--state-dir", state, "--node", "n1", "-o", "json"])
        == 0
    )
    token = json.loads(capsys.readouterr().out)
    assert token["node"] == "n1"
    assert token["token"].startswith("weft-join.")
    assert main(["controller", "rotate-root", "--state-dir", state, "--overlap", "2h"]) == 0
    assert "old roots stay trusted until" in capsys.readouterr().out
    assert (tmp_path / "state" / "trust-bundle.pem").read_text().count("BEGIN CERTIFICATE") == 2


def test_token_create_without_init_says_what_to_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["controller", "token", "create", "--state-dir", str(tmp_path), "--node", "n1"])
    assert code == ExitCode.UNAVAILABLE
    assert "weft controller init" in capsys.readouterr().err


def test_bad_file_is_reported_with_file_document_and_field(
    controller: Controller, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(MESH.replace("targetPort: 8080", "targetPort: http"))
    assert weft(controller, "apply", "-f", str(path)) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert f"{path} document 2 (Service shop/cart)" in err
    assert "spec.ports[0].targetPort" in err
    assert controller.store.revision() == 0


def test_apply_get_namespace_delete_and_status(
    controller: Controller, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(MESH)
    assert weft(controller, "apply", "-f", str(path)) == 0
    out = capsys.readouterr().out
    assert "service/cart created" in out
    assert "revision 1" in out
    assert weft(controller, "get", "svc", "cart", "-n", "shop", "-o", "json") == 0
    assert json.loads(capsys.readouterr().out)["spec"]["clusterIP"] == "10.96.0.2"
    assert weft(controller, "get", "workloads", "-n", "shop") == 0
    table = capsys.readouterr().out
    assert "cart-1" in table
    assert "10.1.2.1" in table
    assert weft(controller, "namespace", "enable", "shop") == 0
    capsys.readouterr()
    assert weft(controller, "get", "ns", "shop", "-o", "yaml") == 0
    assert "weft.io/dataplane-mode: ambient" in capsys.readouterr().out
    assert weft(controller, "delete", "svc", "cart", "-n", "shop") == 0
    capsys.readouterr()
    assert weft(controller, "get", "svc", "cart", "-n", "shop") == ExitCode.USAGE
    capsys.readouterr()
    assert weft(controller, "status", "-o", "json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["controller"]["revision"] == 3
    assert report["controller"]["resources"] == 2


def test_cli_without_credential_says_where_to_get_one(
    controller: Controller, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "status",
            "--controller",
            grpc_address(controller),
            "--admin-credential",
            str(tmp_path / "nope.pem"),
        ]
    )
    assert code == ExitCode.USAGE
    assert "weft controller init" in capsys.readouterr().err


def test_controller_run_serves_until_sigterm(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert main(["controller", "init", "--state-dir", str(state)]) == 0
    proc, address = spawn_controller(state)
    try:
        code = main(["status", "--controller", address, "--state-dir", str(state), "-o", "json"])
        assert code == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0


def test_status_against_a_stopped_controller_says_what_to_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    assert main(["controller", "init", "--state-dir", str(state)]) == 0
    capsys.readouterr()
    # Port 9 (discard) on loopback: nothing listens there.
    code = main(["status", "--controller", "127.0.0.1:9", "--state-dir", str(state)])
    assert code == ExitCode.UNAVAILABLE
    assert "is the controller running" in capsys.readouterr().err


def test_delete_by_file_removes_what_the_file_names(
    controller: Controller, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(MESH)
    assert weft(controller, "apply", "-f", str(path)) == 0
    assert weft(controller, "delete", "-f", str(path)) == 0
    assert "service/cart deleted" in capsys.readouterr().out
    assert controller.store.resources() == []
    assert weft(controller, "delete", "svc", "cart", "-n", "shop") == 1
    assert "not found" in capsys.readouterr().err
