"""`weft lab up|down --vagrant`: the box, libvirt in the lab netns, `vagrant up|destroy`, and
the waypoints' readiness (vm/vagrant/waypoint.py).

Each step is named and logs under RUN_DIR; a failing `up` tears down everything it started (VMs,
libvirt networks and volumes, daemons, the netns) before it raises the step's error.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vm.vagrant import box, libvirt
from vm.vagrant.steps import StepError, run

VM_DIR = Path(__file__).resolve().parents[1]
STATE_DIR = Path("/var/lib/weft/vagrant")
VAGRANT_HOME = box.CACHE_DIR / "home"
SHIP_DIR = box.CACHE_DIR / "ship"  # the wheelhouse in it is rebuilt only when pyproject changes
BOX_MARKER = VAGRANT_HOME / "weft-box-recipe"
UP_TIMEOUT = 1500.0
DESTROY_TIMEOUT = 300.0
TOOLS = {
    "vagrant": "vagrant",
    "virsh": "libvirt-clients",
    "libvirtd": "libvirt-daemon-system",
    "virtlogd": "libvirt-daemon-system",
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "debootstrap": "debootstrap",
    "extlinux": "extlinux",
    "dnsmasq": "dnsmasq-base",
    "nsenter": "util-linux",
}

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def log_file() -> Path:
    return libvirt.RUN_DIR / "lab.log"


def vagrant_env() -> dict[str, str]:
    """What `vagrant` runs with: the CI settings of vm/Vagrantfile and the lab's own dirs."""
    return {
        "VAGRANT_HOME": str(VAGRANT_HOME),
        "VAGRANT_DOTFILE_PATH": str(STATE_DIR / "dotfile"),
        "VAGRANT_DEFAULT_PROVIDER": "libvirt",
        "VAGRANT_CHECKPOINT_DISABLE": "1",
        "VAGRANT_NO_COLOR": "1",
        "WEFT_VAGRANT_BOX": os.environ.get("WEFT_VAGRANT_BOX") or box.BOX_NAME,
        "WEFT_VAGRANT_DRIVER": os.environ.get("WEFT_VAGRANT_DRIVER") or "qemu",
        "WEFT_VAGRANT_CPU_MODE": os.environ.get("WEFT_VAGRANT_CPU_MODE") or "maximum",
        "WEFT_VAGRANT_SHIP_DIR": str(SHIP_DIR),
        # The VMs live in the lab's netns only: keeping the box's key saves emulated minutes.
        "WEFT_VAGRANT_INSECURE_KEY": "1",
    }


@dataclass
class Timings:
    """Seconds per phase, in order; `report` prints them."""

    phases: dict[str, float] = field(default_factory=dict)

    def measure(self, name: str, progress: Progress) -> _Phase:
        return _Phase(self, name, progress)

    def report(self) -> str:
        total = sum(self.phases.values())
        rows = [f"  {name:<28} {seconds:7.1f} s" for name, seconds in self.phases.items()]
        return "\n".join([*rows, f"  {'total':<28} {total:7.1f} s"])


class _Phase:
    def __init__(self, timings: Timings, name: str, progress: Progress) -> None:
        self.timings, self.name, self.progress = timings, name, progress

    def __enter__(self) -> None:
        self.started = time.monotonic()
        self.progress(f"{self.name} ...")

    def __exit__(self, *exc: object) -> None:
        seconds = time.monotonic() - self.started
        self.timings.phases[self.name] = seconds
        self.progress(f"{self.name}: {seconds:.1f} s{' (failed)' if exc[0] else ''}")


def check_tools(log: Path) -> None:
    missing = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})
    if missing:
        raise StepError(
            "check the host tools",
            log,
            f"missing Debian packages {', '.join(missing)}: "
            "run scripts/setup.sh (it installs them)",
        )


def vagrant(
    step: str, args: list[str], log: Path, timeout: float, extra_env: dict[str, str] | None = None
) -> None:
    """`vagrant ARGS` in vm/, inside the lab netns (its SSH reaches guests only from there)."""
    run(step, ["vagrant", *args], log, timeout=timeout, cwd=VM_DIR,
        env={**vagrant_env(), **(extra_env or {})}, netns=libvirt.NETNS)  # fmt: skip


def add_box(built: box.Box, log: Path) -> None:
    """Register the cached box with Vagrant, unless this recipe's box already is."""
    if BOX_MARKER.is_file() and BOX_MARKER.read_text().strip() == built.recipe:
        return
    VAGRANT_HOME.mkdir(parents=True, exist_ok=True)
    run("add the box to Vagrant",
        ["vagrant", "box", "add", "--force", "--name", built.name, str(built.path)],
        log, timeout=600, env=vagrant_env())  # fmt: skip
    BOX_MARKER.write_text(built.recipe + "\n")


def require_box(name: str, log: Path) -> None:
    """Vagrant would try to download a box it lacks; there is nowhere to download it from."""
    result = subprocess.run(
        ["vagrant", "box", "list", "--machine-readable"], env={**os.environ, **vagrant_env()},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    names = {row.split(",")[3] for row in result.stdout.splitlines() if ",box-name," in row}
    if name not in names:
        raise StepError(
            "check the box",
            log,
            f"box {name!r} is not in {VAGRANT_HOME} (it has: {', '.join(sorted(names)) or 'none'})"
            f"; unset WEFT_VAGRANT_BOX to use the lab's own {box.BOX_NAME} (built and added "
            "by 'weft lab up --vagrant'), or 'vagrant box add' that box first",
        )


def up(progress: Progress = _quiet, up_timeout: float = UP_TIMEOUT) -> Timings:
    """Bring up the Vagrant lab; on failure everything started is removed before raising."""
    log = log_file()
    libvirt.RUN_DIR.mkdir(parents=True, exist_ok=True)
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    log.write_text(f"weft lab up --vagrant, {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    timings = Timings()
    check_tools(log)
    try:
        with timings.measure("stage project + wheelhouse", progress):
            run("stage the project and its wheelhouse",
                ["bash", str(VM_DIR / "provision" / "stage-host.sh"), str(SHIP_DIR)],
                log, timeout=900)  # fmt: skip
        with timings.measure("box (build or cache)", progress):
            wanted = vagrant_env()["WEFT_VAGRANT_BOX"]
            if wanted == box.BOX_NAME:
                add_box(box.ensure_box(wheelhouse=SHIP_DIR / "wheelhouse"), log)
            require_box(wanted, log)
        with timings.measure("libvirtd in netns", progress):
            pids = libvirt.start(log)
            (libvirt.RUN_DIR / "daemons.json").write_text(json.dumps(pids))
        with timings.measure("vagrant up (boot + provision)", progress):
            try:
                vagrant("vagrant up", ["up"], log, timeout=up_timeout)
            except StepError as e:
                if "did not finish" in e.message:
                    raise StepError(
                        "vagrant up",
                        log,
                        f"the VMs were not up and provisioned within {up_timeout:.0f} s "
                        "(each guest's console: virsh console, serial log in the libvirt log)",
                    ) from None
                raise
        # Imported here: vm.vagrant.waypoint runs its checks through guest() below.
        from vm.vagrant import waypoint

        with timings.measure("waypoints ready", progress):
            waypoint.wait_ready(progress)
    except BaseException:
        progress("failed: removing what was started")
        down(progress=_quiet)
        raise
    return timings


def ssh_config(log: Path) -> Path:
    """`vagrant ssh-config` for every VM, written once: plain ssh is much faster than vagrant."""
    path = libvirt.RUN_DIR / "ssh_config"
    result = subprocess.run(
        ["nsenter", f"--net={libvirt.NETNS_PATH}", "--", "vagrant", "ssh-config"],
        cwd=VM_DIR, env={**os.environ, **vagrant_env()}, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        with log.open("a") as out:
            out.write(result.stdout + result.stderr)
        raise StepError("vagrant ssh-config", log, "no SSH configuration: are the VMs up?")
    path.write_text(result.stdout)
    return path


def guest(
    node: str, command: str, *, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run `command` as root on VM `node` (through ssh, inside the lab netns)."""
    config = libvirt.RUN_DIR / "ssh_config"
    if not config.is_file():
        ssh_config(log_file())
    result = subprocess.run(
        ["nsenter", f"--net={libvirt.NETNS_PATH}", "--", "ssh", "-F", str(config),
         "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", node, f"sudo sh -c {shlex.quote(command)}"],
        capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if check and result.returncode != 0:
        raise StepError(
            f"on {node}: {command}",
            log_file(),
            f"exit {result.returncode}: {(result.stderr or result.stdout).strip()[-2000:]}",
        )
    return result


def down(progress: Progress = _quiet) -> list[str]:
    """Destroy every VM, network, volume and daemon of the Vagrant lab; idempotent."""
    log = log_file()
    libvirt.RUN_DIR.mkdir(parents=True, exist_ok=True)
    removed: list[str] = []
    if libvirt.daemon_pid("libvirtd") is not None and libvirt.NETNS_PATH.exists():
        progress("vagrant destroy")
        try:
            vagrant("vagrant destroy", ["destroy", "-f"], log, timeout=DESTROY_TIMEOUT)
            removed.append("vagrant VMs")
        except StepError as e:
            # The libvirt sweep below removes what vagrant could not.
            progress(f"vagrant destroy failed ({e.message.splitlines()[0]}); removing by name")
    progress("removing libvirt domains, networks, volumes; stopping libvirtd")
    removed += libvirt.teardown(log)
    shutil.rmtree(STATE_DIR / "dotfile", ignore_errors=True)
    (libvirt.RUN_DIR / "ssh_config").unlink(missing_ok=True)
    (libvirt.RUN_DIR / "daemons.json").unlink(missing_ok=True)
    return removed
