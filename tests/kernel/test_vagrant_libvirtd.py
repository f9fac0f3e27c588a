"""vm/vagrant/libvirt.py starts its daemons inside a netns of its own and stops them by pid.

Stand-in daemons (named virtlogd and libvirtd, so /proc/PID/comm matches) take the place of the
real ones: these tests check the lab's handling of them, not libvirt. The namespace is a
throwaway one, never the lab's.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from vm.vagrant import libvirt
from vm.vagrant.steps import StepError

# A daemon that forks itself into the background, writes its pid file and stays up.
GOOD_DAEMON = """#!/bin/bash
if [ "${1:-}" = --foreground ]; then while :; do sleep 1; done; fi
"$0" --foreground >/dev/null 2>&1 </dev/null &
echo $! > "$FAKE_PIDDIR/$(basename "$0").pid"
"""
FAILING_DAEMON = """#!/bin/bash
echo "error: fake libvirtd: cannot open /run/libvirt/libvirt-sock: Permission denied" >&2
exit 1
"""


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    name = f"weftvmtest{os.getpid()}"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setattr(libvirt, "NETNS", name)
    monkeypatch.setattr(libvirt, "NETNS_PATH", Path("/run/netns") / name)
    monkeypatch.setattr(libvirt, "RUN_DIR", tmp_path / "run")
    monkeypatch.setattr(libvirt, "QEMU_CONF", tmp_path / "qemu.conf")
    monkeypatch.setattr(libvirt, "SOCKET", tmp_path / "libvirt-sock")
    monkeypatch.setattr(
        libvirt,
        "DAEMONS",
        {"virtlogd": tmp_path / "virtlogd.pid", "libvirtd": tmp_path / "libvirtd.pid"},
    )
    monkeypatch.setattr(libvirt, "_has_lab_objects", lambda: False)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_PIDDIR", str(tmp_path))
    yield bin_dir
    libvirt.teardown(tmp_path / "teardown.log")
    subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def _daemon(bin_dir: Path, name: str, text: str) -> None:
    path = bin_dir / name
    path.write_text(text)
    path.chmod(0o755)


def test_libvirtd_that_fails_to_start_is_reported_with_step_and_log_and_nothing_is_left(
    sandbox: Path, tmp_path: Path
) -> None:
    _daemon(sandbox, "virtlogd", GOOD_DAEMON)
    _daemon(sandbox, "libvirtd", FAILING_DAEMON)
    log = tmp_path / "lab.log"
    with pytest.raises(StepError) as failure:
        libvirt.start(log)
    error = failure.value
    assert error.step == "start libvirtd"
    assert error.log == log
    assert str(log) in str(error)
    assert "cannot open /run/libvirt/libvirt-sock" in error.message, "the log's tail is shown"
    virtlogd = libvirt.daemon_pid("virtlogd")
    assert virtlogd is not None
    assert libvirt.in_lab_netns(virtlogd), "the daemon runs in the lab's netns, not the host's"

    removed = libvirt.teardown(log)
    assert f"virtlogd (pid {virtlogd})" in removed
    assert not Path(f"/proc/{virtlogd}").exists()
    assert not libvirt.NETNS_PATH.exists()
    assert libvirt.qemu_conf_text("") in libvirt.QEMU_CONF.read_text()


def test_daemons_in_the_netns_are_adopted_and_stopped_by_pid(
    sandbox: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _daemon(sandbox, "virtlogd", GOOD_DAEMON)
    _daemon(sandbox, "libvirtd", GOOD_DAEMON)
    monkeypatch.setattr(libvirt, "virsh_ok", lambda: True)
    log = tmp_path / "lab.log"
    first = libvirt.start(log)
    assert set(first) == {"virtlogd", "libvirtd"}
    assert libvirt.start(log) == first, "a second start adopts the running daemons"
    monkeypatch.setattr(libvirt, "remove_lab_objects", list)
    libvirt.teardown(log)
    for pid in first.values():
        assert not Path(f"/proc/{pid}").exists()


def test_qemu_runs_as_root_whatever_the_config_said() -> None:
    text = '# user = "libvirt-qemu"\nuser = "libvirt-qemu"\ngroup = "kvm"\nsecurity_driver = "none"'
    conf = libvirt.qemu_conf_text(text)
    assert 'user = "root"' in conf
    assert 'group = "root"' in conf
    assert 'user = "libvirt-qemu"\n' not in conf.replace('# user = "libvirt-qemu"', "")
    assert 'security_driver = "none"' in conf
    assert libvirt.qemu_conf_text(conf) == conf
