"""`weft check`: report structure, exit codes, and that bcc stays out of the CLI process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from weft.check import PRE_CHECKS, Check, ProbeOutcome, run_check, run_checks
from weft.errors import ExitCode


def fake_probe_present() -> ProbeOutcome:
    """Injected in place of a kernel probe: reports the feature present."""
    return ProbeOutcome(True, "fake: present")


def fake_probe_missing() -> ProbeOutcome:
    """Injected in place of a kernel probe: reports the feature missing."""
    return ProbeOutcome(False, "fake: /sys/fs/bpf is not a bpffs mount")


def fake_probe_crashing() -> ProbeOutcome:
    """Injected in place of a kernel probe: the probe itself breaks."""
    raise PermissionError("fake: operation not permitted")


def _json_report(checks: list[Check], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:  # type: ignore[type-arg]
    code = run_check("json", checks)
    return code, json.loads(capsys.readouterr().out)


def test_json_report_lists_every_check_with_status_detail_and_fix(
    capsys: pytest.CaptureFixture[str],
) -> None:
    checks = [
        Check("root", fake_probe_present, "run it again with sudo"),
        Check("bpffs", fake_probe_missing, "mount -t bpf bpf /sys/fs/bpf"),
    ]
    code, report = _json_report(checks, capsys)
    assert report["ok"] is False
    assert report["checks"] == [
        {"name": "root", "status": "ok", "detail": "fake: present", "fix": None},
        {
            "name": "bpffs",
            "status": "missing",
            "detail": "fake: /sys/fs/bpf is not a bpffs mount",
            "fix": "mount -t bpf bpf /sys/fs/bpf",
        },
    ]
    assert code == ExitCode.UNAVAILABLE == 4


def test_all_checks_passing_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    code, report = _json_report([Check("root", fake_probe_present, "sudo")], capsys)
    assert code == ExitCode.OK
    assert report["ok"] is True


def test_a_probe_that_raises_is_reported_missing_and_later_checks_still_run() -> None:
    results = run_checks(
        [
            Check("bpf() syscall", fake_probe_crashing, "run as root"),
            Check("root", fake_probe_present, "sudo"),
        ]
    )
    assert [r.ok for r in results] == [False, True]
    assert "PermissionError" in results[0].detail
    assert results[0].fix == "run as root"


def test_table_output_names_the_missing_check_and_its_fix(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = run_check("table", [Check("bpffs", fake_probe_missing, "mount -t bpf bpf /sys/fs/bpf")])
    out = capsys.readouterr().out
    assert code == ExitCode.UNAVAILABLE
    assert "bpffs" in out
    assert "mount -t bpf bpf /sys/fs/bpf" in out
    assert "1 missing" in out


def test_every_pre_check_has_a_unique_name_and_a_fix() -> None:
    names = [c.name for c in PRE_CHECKS]
    assert len(names) == len(set(names))
    assert all(c.fix.strip() for c in PRE_CHECKS)


def test_importing_and_registering_the_check_command_does_not_import_bcc() -> None:
    code = (
        "import sys, argparse, weft.check; "
        "weft.check.register(argparse.ArgumentParser(), 'check'); "
        "print('bcc' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
