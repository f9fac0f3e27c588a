"""The machine-wide lab session lock: who is using the one lab this machine can hold.

Netns names are fixed, so there is one lab per machine. A pytest session (vm.lab's plugin) or a
benchmark (bench.lab_lock) holds an flock on SESSION_LOCK, with its pid written inside, for as
long as it uses the lab. `weft lab up/down` take the same lock for the length of the command, so
an operator cannot pull the lab from under a running test session by accident, while the
session's own `weft lab ...` subprocesses (its descendants) pass.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path

from weft.errors import ConflictError

SESSION_LOCK = Path("/run/weft/lab-session.lock")


class SessionLock:
    """An flock on SESSION_LOCK; `acquire` waits up to `wait` seconds, `release` lets go."""

    def __init__(self, path: Path = SESSION_LOCK) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self, wait: float, on_wait: Callable[[str], None] | None = None) -> None:
        """Take the lock, waiting up to `wait` s; `on_wait` hears once who we are waiting for."""
        if self.fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = read_holder(fd)
                if holder is not None and is_ancestor(holder):
                    # Our own test session or benchmark runs this command: it may.
                    os.close(fd)
                    return
                if on_wait is not None:
                    on_wait(f"waiting for the lab: pid {holder or '?'} holds {self.path}")
                    on_wait = None
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise ConflictError(
                        f"the lab is in use by pid {holder or '?'} (a test session or a "
                        f"benchmark holds {self.path}) and was not released within {wait:.0f} s",
                        hint="wait for it to finish, then run the command again",
                    ) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None


def read_holder(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


def is_ancestor(pid: int) -> bool:
    """True if `pid` is this process or one of its ancestors."""
    current = os.getpid()
    while current > 1:
        if current == pid:
            return True
        try:
            stat = Path(f"/proc/{current}/stat").read_text(encoding="ascii")
        except OSError:
            return False
        current = int(stat.rsplit(")", 1)[1].split()[1])
    return False
