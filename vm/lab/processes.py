"""Lab processes: start in a netns + cgroup, stop by pid, wait until they listen."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vm.lab.iproute import netns_path
from vm.lab.state import ProcessInfo, pid_alive, pid_start_time
from weft.errors import WeftError


class WorkloadCommandError(subprocess.CalledProcessError):
    """A command run in a workload exited non-zero; str() includes what it printed."""

    def __str__(self) -> str:
        tail = (self.stderr or self.stdout or "").strip().splitlines()[-10:]
        detail = "\n    ".join(tail) or "(no output)"
        return f"{super().__str__()}\n  its output ended with:\n    {detail}"


class ProcessFailedError(WeftError):
    """A lab process exited or did not open its ports in time."""


def wrap(netns: str, cgroup: Path, argv: Sequence[str]) -> list[str]:
    """argv that runs `argv` in `netns` after joining `cgroup`.

    nsenter only switches the network namespace, so /sys (with bpffs and cgroupfs) stays the
    host's, unlike `ip netns exec`. The shell joins the cgroup before exec, so the command's
    very first connect() is already subject to eBPF attached there.
    """
    join = f'echo $$ > {shlex.quote(str(cgroup / "cgroup.procs"))} && exec "$@"'
    return ["nsenter", f"--net={netns_path(netns)}", "--", "sh", "-c", join, "sh", *argv]


def run(
    netns: str,
    cgroup: Path,
    argv: Sequence[str],
    *,
    timeout: float = 30,
    check: bool = True,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        wrap(netns, cgroup, argv),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise WorkloadCommandError(proc.returncode, list(argv), proc.stdout, proc.stderr)
    return subprocess.CompletedProcess(list(argv), proc.returncode, proc.stdout, proc.stderr)


def spawn(
    netns: str,
    cgroup: Path,
    argv: Sequence[str],
    name: str,
    log: Path,
    *,
    workload: str | None = None,
    node: str | None = None,
) -> ProcessInfo:
    """Start a detached process (own session, so it outlives `weft lab up`), logging to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"# {time.strftime('%H:%M:%S')} starting: {shlex.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            wrap(netns, cgroup, argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    # The shell joins the cgroup before exec (so nothing runs outside it); joining from here
    # too means the process is in its cgroup when spawn() returns, with no window to race.
    with contextlib.suppress(OSError):  # already exited: the caller sees it as not running
        (cgroup / "cgroup.procs").write_text(str(proc.pid), encoding="ascii")
    # Drop the Popen object without waiting: the child is reaped in stop() or by init.
    return ProcessInfo(
        name=name,
        pid=proc.pid,
        start_time=pid_start_time(proc.pid),
        log=str(log),
        cgroup=str(cgroup),
        workload=workload,
        node=node,
        argv=tuple(argv),
    )


def is_running(process: ProcessInfo) -> bool:
    """Alive and still the process we started (pids are reused)."""
    return pid_alive(process.pid) and pid_start_time(process.pid) == process.start_time


def stop(processes: Sequence[ProcessInfo], grace: float = 2.0) -> list[ProcessInfo]:
    """SIGTERM each process's session, SIGKILL what is left after `grace`; return those stopped."""
    running = [p for p in processes if is_running(p)]
    for p in running:
        _signal_group(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(is_running(p) for p in running):
        _reap(running)
        time.sleep(0.02)
    for p in running:
        if is_running(p):
            _signal_group(p.pid, signal.SIGKILL)
    _reap(running)
    return running


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _reap(processes: Sequence[ProcessInfo]) -> None:
    for p in processes:
        # Not our child when another `weft` process started it: init reaps it then.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(p.pid, os.WNOHANG)


def exit_status(process: ProcessInfo) -> str:
    """How a dead process ended, if we are its parent; otherwise just 'exited'."""
    try:
        pid, status = os.waitpid(process.pid, os.WNOHANG)
    except ChildProcessError:
        return "exited"
    if pid == 0:
        return "running"
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with code {os.WEXITSTATUS(status)}"


def listening_ports(pid: int) -> set[int]:
    """TCP ports in LISTEN state in the network namespace of `pid` (/proc/PID/net is per netns)."""
    ports: set[int] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text(encoding="ascii").splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "0A":  # TCP_LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def log_tail(path: str | Path, lines: int = 15) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.strip().splitlines()[-lines:]) or "(empty log)"


@dataclass(frozen=True)
class PortWait:
    """A process and the ports it must listen on before the lab is ready."""

    process: ProcessInfo
    ports: tuple[int, ...]


def wait_until_listening(waits: Sequence[PortWait], timeout: float) -> None:
    """Return once every process listens on its ports; raise ProcessFailedError naming the laggards.

    A process that exits is reported at once with the end of its log: waiting would only hide
    the reason.
    """
    pending = list(waits)
    deadline = time.monotonic() + timeout
    while pending:
        dead = [w for w in pending if not is_running(w.process)]
        if dead:
            raise ProcessFailedError(
                "; ".join(_died(w.process) for w in dead),
                hint="the rest of the lab is up: fix the program, then "
                "'weft lab up --demo --replace' (or 'weft lab down')",
            )
        pending = [w for w in pending if not set(w.ports) <= listening_ports(w.process.pid)]
        if not pending:
            return
        if time.monotonic() > deadline:
            names = ", ".join(
                f"{w.process.name} (ports {', '.join(map(str, w.ports))})" for w in pending
            )
            tails = "\n".join(
                f"--- {w.process.log}:\n{log_tail(w.process.log, 5)}" for w in pending
            )
            raise ProcessFailedError(
                f"not listening after {timeout:.0f} s: {names}\n{tails}",
                hint="check the logs above; 'weft lab status' shows every process",
            )
        time.sleep(0.05)


def _died(process: ProcessInfo) -> str:
    return (
        f"{process.name} (pid {process.pid}) {exit_status(process)}; "
        f"last lines of {process.log}:\n{log_tail(process.log)}"
    )
