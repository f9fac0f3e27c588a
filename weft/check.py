"""`weft check`: does this machine have what Weft needs, and the command that fixes what is not.

The probes touch the real kernel (a tiny map, a two-instruction program, a throwaway network
namespace) but never import bcc into this process: bcc is probed in a child interpreter so that
`weft check` works, and says what to install, on a machine where bcc is broken.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weft.errors import ExitCode

BPFFS = Path("/sys/fs/bpf")
CGROUP2_MOUNTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))
LIBBPF = "libbpf.so.1"
SUBPROCESS_TIMEOUT_S = 20.0
SETUP_HINT = "run 'sudo make setup' (scripts/setup.sh)"

# bpf(2) syscall numbers by machine; the commands and types below are from <linux/bpf.h>.
SYS_BPF = {"x86_64": 321, "aarch64": 280}
BPF_MAP_CREATE = 0
BPF_PROG_LOAD = 5
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_SOCKMAP = 15
BPF_MAP_TYPE_SOCKHASH = 18
BPF_PROG_TYPE_CGROUP_SOCK_ADDR = 18
BPF_CGROUP_INET4_CONNECT = 10


@dataclass(frozen=True)
class ProbeOutcome:
    """What one probe found: whether the feature is there, and what was seen either way."""

    ok: bool
    detail: str


@dataclass(frozen=True)
class Check:
    """A named feature, the function that probes it and the command that fixes it when missing."""

    name: str
    probe: Callable[[], ProbeOutcome]
    fix: str


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check as reported to the operator (`fix` only when it is missing)."""

    name: str
    ok: bool
    detail: str
    fix: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": "ok" if self.ok else "missing",
            "detail": self.detail,
            "fix": self.fix,
        }


def run_checks(checks: Sequence[Check]) -> list[CheckResult]:
    """Run every probe; a probe that raises counts as missing, so one broken probe hides nothing."""
    results = []
    for check in checks:
        try:
            outcome = check.probe()
        except Exception as exc:  # any failure of a probe is a finding, not a crash
            outcome = ProbeOutcome(False, f"probe failed: {type(exc).__name__}: {exc}")
        results.append(
            CheckResult(check.name, outcome.ok, outcome.detail, None if outcome.ok else check.fix)
        )
    return results


def exit_code_for(results: Sequence[CheckResult]) -> ExitCode:
    return ExitCode.OK if all(r.ok for r in results) else ExitCode.UNAVAILABLE


def report_as_json(results: Sequence[CheckResult], note: str | None = None) -> dict[str, Any]:
    report: dict[str, Any] = {
        "ok": all(r.ok for r in results),
        "checks": [r.as_json() for r in results],
    }
    if note:
        report["note"] = note
    return report


# --- probes -------------------------------------------------------------------------------------


def _mounts() -> list[tuple[str, str]]:
    """(mount point, filesystem type) for every mount this process sees."""
    entries = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 3:
            entries.append((fields[1], fields[2]))
    return entries


def probe_root() -> ProbeOutcome:
    uid = os.geteuid()
    return ProbeOutcome(uid == 0, "running as root" if uid == 0 else f"running as uid {uid}")


def probe_bpffs() -> ProbeOutcome:
    fstypes = [fs for mnt, fs in _mounts() if mnt == str(BPFFS)]
    if "bpf" in fstypes:
        return ProbeOutcome(True, f"bpffs mounted at {BPFFS}")
    return ProbeOutcome(False, f"{BPFFS} is not a bpffs mount (pinned maps and links live there)")


def probe_cgroup2() -> ProbeOutcome:
    mounts = dict(_mounts())
    for path in CGROUP2_MOUNTS:
        if mounts.get(str(path)) == "cgroup2":
            return ProbeOutcome(True, f"cgroup v2 mounted at {path}")
    return ProbeOutcome(False, "no cgroup2 mount at " + " or ".join(map(str, CGROUP2_MOUNTS)))


class _MapCreateAttr(ctypes.Structure):
    """The BPF_MAP_CREATE part of `union bpf_attr` (map_type, key_size, value_size, ...)."""

    _fields_ = (
        ("map_type", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
    )


class _ProgLoadAttr(ctypes.Structure):
    """The BPF_PROG_LOAD part of `union bpf_attr`, up to expected_attach_type."""

    _fields_ = (
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * 16),
        ("prog_ifindex", ctypes.c_uint32),
        ("expected_attach_type", ctypes.c_uint32),
    )


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    """Call bpf(2); returns a new fd (closed by the caller) or raises OSError with errno."""
    number = SYS_BPF.get(platform.machine())
    if number is None:
        raise OSError(errno.ENOSYS, f"bpf() syscall number unknown on {platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    fd = int(libc.syscall(number, cmd, ctypes.byref(attr), ctypes.sizeof(attr)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


def _probe_map_create(map_type: int, label: str) -> ProbeOutcome:
    attr = _MapCreateAttr(map_type=map_type, key_size=4, value_size=4, max_entries=1)
    try:
        fd = _bpf(BPF_MAP_CREATE, attr)
    except OSError as exc:
        return ProbeOutcome(False, f"cannot create a {label} map: {exc.strerror}")
    os.close(fd)
    return ProbeOutcome(True, f"created and freed a {label} map")


def probe_bpf_syscall() -> ProbeOutcome:
    return _probe_map_create(BPF_MAP_TYPE_ARRAY, "BPF array")


def probe_sockmap() -> ProbeOutcome:
    for map_type, label in ((BPF_MAP_TYPE_SOCKMAP, "sockmap"), (BPF_MAP_TYPE_SOCKHASH, "sockhash")):
        outcome = _probe_map_create(map_type, label)
        if not outcome.ok:
            return outcome
    return ProbeOutcome(True, "sockmap and sockhash maps can be created")


def probe_cgroup_sock_addr() -> ProbeOutcome:
    """Load `r0 = 1; exit` as a cgroup/connect4 program: the hook capture is built on."""
    insns = (ctypes.c_uint64 * 2)(
        0x0000_0001_0000_00B7,  # BPF_ALU64 | BPF_MOV | BPF_K, dst r0, imm 1
        0x0000_0000_0000_0095,  # BPF_JMP | BPF_EXIT
    )
    license_text = ctypes.create_string_buffer(b"GPL")
    attr = _ProgLoadAttr(
        prog_type=BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
        insn_cnt=2,
        insns=ctypes.addressof(insns),
        license=ctypes.addressof(license_text),
        prog_name=b"weft_probe",
        expected_attach_type=BPF_CGROUP_INET4_CONNECT,
    )
    try:
        fd = _bpf(BPF_PROG_LOAD, attr)
    except OSError as exc:
        return ProbeOutcome(False, f"cannot load a cgroup/connect4 program: {exc.strerror}")
    os.close(fd)
    return ProbeOutcome(True, "loaded a cgroup/connect4 program")


def probe_libbpf() -> ProbeOutcome:
    """bcc 0.26 has no bpf_link API; the loader calls libbpf's bpf_link_create through ctypes."""
    try:
        lib = ctypes.CDLL(LIBBPF)
    except OSError as exc:
        return ProbeOutcome(False, f"cannot load {LIBBPF}: {exc}")
    if not hasattr(lib, "bpf_link_create"):
        return ProbeOutcome(False, f"{LIBBPF} has no bpf_link_create")
    return ProbeOutcome(True, f"{LIBBPF} provides bpf_link_create")


def probe_kernel_headers() -> ProbeOutcome:
    include = Path("/lib/modules") / platform.release() / "build" / "include"
    if include.is_dir():
        return ProbeOutcome(True, f"{include} exists")
    return ProbeOutcome(False, f"{include} is missing (bcc compiles against it)")


def _run(argv: Sequence[str]) -> ProbeOutcome:
    """Run a short command; ok if it exits 0, else its stderr as the detail."""
    if shutil.which(argv[0]) is None and not Path(argv[0]).is_file():
        return ProbeOutcome(False, f"'{argv[0]}' is not installed")
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        return ProbeOutcome(False, f"'{' '.join(argv)}' did not finish in {SUBPROCESS_TIMEOUT_S} s")
    if proc.returncode == 0:
        return ProbeOutcome(True, f"'{' '.join(argv)}' works")
    last_line = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    return ProbeOutcome(False, f"'{' '.join(argv)}' exited {proc.returncode}: {last_line}")


def probe_bcc() -> ProbeOutcome:
    outcome = _run([sys.executable, "-c", "import bcc"])
    if outcome.ok:
        return ProbeOutcome(True, f"'import bcc' works in {sys.executable}")
    return outcome


def probe_netns() -> ProbeOutcome:
    return _run(["unshare", "--net", "true"])


def probe_tc_clsact() -> ProbeOutcome:
    # In a throwaway network namespace, so the probe leaves nothing behind on the host.
    return _run(["unshare", "--net", "tc", "qdisc", "add", "dev", "lo", "clsact"])


def probe_nft() -> ProbeOutcome:
    return _run(["unshare", "--net", "nft", "list", "ruleset"])


PRE_CHECKS: tuple[Check, ...] = (
    Check("root", probe_root, "run it again with sudo"),
    Check("bpffs", probe_bpffs, "mount -t bpf bpf /sys/fs/bpf"),
    Check(
        "cgroup v2",
        probe_cgroup2,
        "mkdir -p /sys/fs/cgroup/unified && mount -t cgroup2 none /sys/fs/cgroup/unified",
    ),
    Check(
        "bpf() syscall",
        probe_bpf_syscall,
        "run as root, on a kernel built with CONFIG_BPF_SYSCALL=y",
    ),
    Check(
        "sockmap/sockhash",
        probe_sockmap,
        "use a kernel built with CONFIG_BPF_STREAM_PARSER=y and CONFIG_NET_SOCK_MSG=y",
    ),
    Check(
        "cgroup/connect4 programs",
        probe_cgroup_sock_addr,
        "use a kernel built with CONFIG_CGROUP_BPF=y",
    ),
    Check(
        "libbpf (bpf_link_create)",
        probe_libbpf,
        "apt-get install libbpf1",
    ),
    Check(
        "kernel headers for bcc",
        probe_kernel_headers,
        f"apt-get install linux-headers-amd64 and {SETUP_HINT} to link them for this kernel",
    ),
    Check(
        "bcc (import bcc)",
        probe_bcc,
        "apt-get install python3-bpfcc, and build .venv with --system-site-packages "
        f"from /usr/bin/python3: {SETUP_HINT}",
    ),
    Check("network namespaces", probe_netns, "use a kernel with CONFIG_NET_NS=y"),
    Check(
        "tc clsact",
        probe_tc_clsact,
        "apt-get install iproute2, on a kernel with CONFIG_NET_SCH_INGRESS",
    ),
    Check("nftables", probe_nft, "apt-get install nftables, on a kernel with CONFIG_NF_TABLES"),
)

RUNTIME_NOTE = (
    "runtime health checks (agent, controller, capture) are not implemented yet; "
    "this ran the pre-flight checks only (same as --pre)"
)


# --- CLI ----------------------------------------------------------------------------------------


def render_table(results: Sequence[CheckResult], note: str | None) -> None:
    """A rich table: colour in a terminal, plain columns when piped."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="weft pre-flight checks")
    table.add_column("check")
    table.add_column("status")
    table.add_column("detail / fix")
    for r in results:
        status = "[green]ok[/green]" if r.ok else "[red]missing[/red]"
        text = r.detail if r.ok else f"{r.detail}\n[bold]fix:[/bold] {r.fix}"
        table.add_row(r.name, status, text)
    console = Console()
    console.print(table)
    missing = [r.name for r in results if not r.ok]
    if missing:
        console.print(f"[red]{len(missing)} missing:[/red] {', '.join(missing)}")
    else:
        console.print("[green]all checks passed[/green]")
    if note:
        console.print(f"note: {note}")


def run_check(output: str, checks: Sequence[Check], note: str | None = None) -> int:
    """Run `checks`, report them as a table or JSON, and return the exit code (0 ok, 4 missing)."""
    results = run_checks(checks)
    if output == "json":
        from weft.cli import print_json

        print_json(report_as_json(results, note))
    else:
        render_table(results, note)
    return int(exit_code_for(results))


def _handle(args: argparse.Namespace) -> int:
    note = None if args.pre else RUNTIME_NOTE
    return run_check(args.output, PRE_CHECKS, note)


def register(parser: argparse.ArgumentParser, name: str) -> None:
    parser.epilog = (
        "examples:\n"
        "  sudo weft check --pre            # kernel and system features, with the fix for each\n"
        "  sudo weft check --pre -o json    # the same, machine-readable\n"
        "exit status: 0 when every check passes, 4 when something is missing"
    )
    parser.add_argument(
        "--pre", action="store_true", help="pre-flight only: kernel and system features"
    )
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table")
    parser.set_defaults(func=_handle)
