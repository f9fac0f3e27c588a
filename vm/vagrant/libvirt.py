"""Runs libvirt (virtlogd, libvirtd) without systemd inside the lab's own network namespace.

Every VM, libvirt network, bridge and dnsmasq then exists only inside netns NETNS: nothing the
lab starts has an address in the host's namespace. The daemons' pids are recorded and they are
stopped by pid; `teardown` also removes the lab's domains, networks and volumes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from vm.vagrant.steps import StepError, run, tail

# Not `weft-*`: the netns lab's cleanup owns (and deletes) every namespace with that prefix.
NETNS = "weftvm"
NETNS_PATH = Path("/run/netns") / NETNS
RUN_DIR = Path("/run/weft/vagrant")
QEMU_CONF = Path("/etc/libvirt/qemu.conf")
SOCKET = Path("/run/libvirt/libvirt-sock")
URI = "qemu:///system"
DAEMONS = {"virtlogd": Path("/run/virtlogd.pid"), "libvirtd": Path("/run/libvirtd.pid")}
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
# What the lab's Vagrantfile creates in libvirt (default_prefix "weft-"; its two networks).
DOMAIN_PREFIX = "weft-"
NETWORKS = ("weft-fabric", "vagrant-libvirt")
VOLUME_PREFIX = "weft"


def log_path(name: str) -> Path:
    return RUN_DIR / f"{name}.log"


def netns_inode() -> int | None:
    try:
        return NETNS_PATH.stat().st_ino
    except OSError:
        return None


def pids_in_netns(inode: int) -> list[int]:
    """Every process whose network namespace is the lab's (libvirtd, qemu, dnsmasq, ...)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "ns" / "net").stat().st_ino == inode:
                pids.append(int(entry.name))
        except OSError:
            continue
    return sorted(pids)


def ensure_netns(log: Path) -> None:
    if not NETNS_PATH.exists():
        run("create the lab's network namespace", ["ip", "netns", "add", NETNS], log, timeout=30)
    run("bring up loopback in the lab netns", ["ip", "-n", NETNS, "link", "set", "lo", "up"],
        log, timeout=30)  # fmt: skip


def qemu_conf_text(text: str) -> str:
    """qemu.conf with qemu run as root: otherwise every libvirt call re-probes qemu (~30 s)."""
    lines = [
        line
        for line in text.splitlines()
        if not line.strip().startswith(("user =", "group =", "user=", "group="))
    ]
    return "\n".join([*lines, 'user = "root"', 'group = "root"', ""])


def configure_qemu() -> None:
    text = QEMU_CONF.read_text() if QEMU_CONF.exists() else ""
    wanted = qemu_conf_text(text)
    if wanted != text:
        QEMU_CONF.parent.mkdir(parents=True, exist_ok=True)
        QEMU_CONF.write_text(wanted)


def daemon_pid(name: str) -> int | None:
    """The pid in `name`'s pid file, when that process is alive and is `name`."""
    try:
        pid = int(DAEMONS[name].read_text().strip())
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return None
    return pid if comm == name else None


def in_lab_netns(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/ns/net").stat().st_ino == netns_inode()
    except OSError:
        return False


def start(log: Path) -> dict[str, int]:
    """Start virtlogd and libvirtd in the lab netns (or adopt ours); their pids by name."""
    step = "start libvirtd in the lab netns"
    ensure_netns(log)
    configure_qemu()
    Path("/run/libvirt").mkdir(parents=True, exist_ok=True)
    pids: dict[str, int] = {}
    for name in DAEMONS:
        pid = daemon_pid(name)
        if pid is not None and not in_lab_netns(pid):
            raise StepError(
                step,
                log,
                f"{name} (pid {pid}) already runs outside the lab's netns {NETNS}; "
                "stop it first (the lab's VMs must not get addresses in the host namespace)",
            )
        if pid is None:
            daemon_log = log_path(name)
            env = {"LIBVIRT_LOG_OUTPUTS": f"3:file:{daemon_log}"}
            run(f"start {name}", [name, "-d"], log, timeout=30, env=env, netns=NETNS)
            pid = _wait_pid(name)
            if pid is None:
                raise StepError(step, daemon_log, f"{name} did not stay up:\n{tail(daemon_log)}")
        pids[name] = pid
    if not _wait_for(virsh_ok, START_TIMEOUT):
        raise StepError(
            step,
            log_path("libvirtd"),
            f"libvirtd does not answer on {SOCKET} after {START_TIMEOUT:.0f} s:\n"
            f"{tail(log_path('libvirtd'))}",
        )
    return pids


def virsh(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["virsh", "-q", "-c", URI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def virsh_ok() -> bool:
    try:
        return SOCKET.exists() and virsh("version", timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def remove_lab_objects() -> list[str]:
    """Destroy and undefine the lab's domains and networks and delete its volumes."""
    removed: list[str] = []
    for name in _names(virsh("list", "--all", "--name")):
        if name.startswith(DOMAIN_PREFIX):
            virsh("destroy", name)
            virsh("undefine", name, "--remove-all-storage", "--nvram")
            virsh("undefine", name, "--remove-all-storage")
            removed.append(f"domain {name}")
    for name in _names(virsh("net-list", "--all", "--name")):
        if name in NETWORKS:
            virsh("net-destroy", name)
            virsh("net-undefine", name)
            removed.append(f"network {name}")
    for pool in _names(virsh("pool-list", "--all", "--name")):
        listing = virsh("vol-list", pool)
        for line in listing.stdout.splitlines():
            volume = line.split()[0] if line.split() else ""
            if volume.startswith(VOLUME_PREFIX):
                virsh("vol-delete", volume, "--pool", pool)
                removed.append(f"volume {pool}/{volume}")
    return removed


def teardown(log: Path) -> list[str]:
    """Remove everything the lab started in libvirt, stop the daemons, delete the netns."""
    removed: list[str] = []
    inode = netns_inode()
    started_here = False
    if inode is not None and daemon_pid("libvirtd") is None and _has_lab_objects():
        # libvirtd died (or the machine rebooted): start it once to remove what it defined.
        try:
            start(log)
            started_here = True
        except StepError:
            pass
    if daemon_pid("libvirtd") is not None and (started_here or in_lab_netns(_pid("libvirtd"))):
        removed += remove_lab_objects()
    for name in ("libvirtd", "virtlogd"):
        pid = daemon_pid(name)
        if pid is not None and in_lab_netns(pid):
            _stop(pid)
            removed.append(f"{name} (pid {pid})")
    if inode is not None:
        # dnsmasq and any qemu left over: every process in the lab's netns was started by it.
        for pid in pids_in_netns(inode):
            _stop(pid)
            removed.append(f"process {pid}")
        subprocess.run(["ip", "netns", "del", NETNS], check=False, capture_output=True)
        removed.append(f"netns {NETNS}")
    return removed


def _has_lab_objects() -> bool:
    etc = Path("/etc/libvirt/qemu")
    return any(etc.glob(f"{DOMAIN_PREFIX}*.xml")) or any(
        (etc / "networks" / f"{name}.xml").exists() for name in NETWORKS
    )


def _pid(name: str) -> int:
    return daemon_pid(name) or -1


def _names(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def _wait_pid(name: str) -> int | None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pid = daemon_pid(name)
        if pid is not None:
            return pid
        time.sleep(0.1)
    return None


def _wait_for(done: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return True
        time.sleep(0.5)
    return False


def _stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if not _wait_for(lambda: not Path(f"/proc/{pid}").exists(), STOP_TIMEOUT):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
