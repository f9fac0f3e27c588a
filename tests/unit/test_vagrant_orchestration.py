"""vm/vagrant/lab.py without VMs: settings, phase timings, and the errors that end a bad start."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from vm.vagrant import box, lab
from vm.vagrant.steps import StepError, run


def test_vagrant_runs_with_the_ci_settings_unless_overridden(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("WEFT_VAGRANT_BOX", "WEFT_VAGRANT_DRIVER", "WEFT_VAGRANT_CPU_MODE"):
        monkeypatch.delenv(name, raising=False)
    env = lab.vagrant_env()
    assert env["WEFT_VAGRANT_BOX"] == box.BOX_NAME
    assert (env["WEFT_VAGRANT_DRIVER"], env["WEFT_VAGRANT_CPU_MODE"]) == ("qemu", "maximum")
    assert env["VAGRANT_HOME"] == str(lab.VAGRANT_HOME)
    assert env["VAGRANT_DEFAULT_PROVIDER"] == "libvirt"
    monkeypatch.setenv("WEFT_VAGRANT_DRIVER", "kvm")
    assert lab.vagrant_env()["WEFT_VAGRANT_DRIVER"] == "kvm"


def test_phase_timings_are_reported_in_order_with_a_total() -> None:
    timings = lab.Timings()
    seen: list[str] = []
    with timings.measure("first", seen.append):
        pass
    with pytest.raises(RuntimeError), timings.measure("second", seen.append):
        raise RuntimeError
    assert list(timings.phases) == ["first", "second"]
    assert seen[0] == "first ..."
    assert seen[-1].startswith("second: ")
    assert seen[-1].endswith("(failed)")
    report = timings.report().splitlines()
    assert [line.split()[0] for line in report] == ["first", "second", "total"]


def test_missing_tools_name_the_packages_and_setup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    log = tmp_path / "lab.log"
    with pytest.raises(StepError) as failure:
        lab.check_tools(log)
    assert failure.value.step == "check the host tools"
    assert "qemu-system-x86" in failure.value.message
    assert "scripts/setup.sh" in failure.value.message
    assert str(log) in str(failure.value)


def test_a_missing_box_is_refused_before_vagrant_would_try_to_download_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("vagrant") is None:
        pytest.skip("vagrant is not installed (scripts/setup.sh installs it)")
    monkeypatch.setattr(lab, "VAGRANT_HOME", tmp_path / "home")
    log = tmp_path / "lab.log"
    with pytest.raises(StepError) as failure:
        lab.require_box("someone/not-here", log)
    error = failure.value
    assert error.step == "check the box"
    assert "box 'someone/not-here' is not in" in error.message
    assert "it has: none" in error.message
    assert box.BOX_NAME in error.message, "it names the lab's own box"
    assert str(log) in str(error)


def test_a_failing_step_names_itself_its_exit_and_its_log(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    with pytest.raises(StepError) as failure:
        run("say no", ["sh", "-c", "echo nope; exit 3"], log, timeout=10)
    assert failure.value.step == "say no"
    assert "exited with 3" in failure.value.message
    assert "nope" in failure.value.message
    with pytest.raises(StepError, match="did not finish within 1 s"):
        run("hang", ["sleep", "5"], log, timeout=1)
    with pytest.raises(StepError, match="is not installed"):
        run("nothing", ["/nonexistent/tool"], log, timeout=1)
