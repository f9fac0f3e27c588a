"""The machine-wide lab lock: a bench run and an e2e test session queue instead of colliding.

The lab's namespace names are fixed, so one lab exists per machine. vm.lab's pytest plugin holds
an flock on /run/weft/lab-session.lock while a test session uses the lab; the bench takes the
same lock while it owns the lab.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from vm.lab.session import SESSION_LOCK
from weft.errors import ConflictError

LAB_SESSION_LOCK = SESSION_LOCK  # vm.lab owns the path; its pytest plugin locks the same file


@contextlib.contextmanager
def lab_session_lock(
    progress: Callable[[str], None], wait: float = 300.0, path: Path = LAB_SESSION_LOCK
) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + wait
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                if time.monotonic() > deadline:
                    raise ConflictError(
                        f"the lab is in use by pid {holder} ({path}) for over {wait:.0f} s",
                        hint="wait for that test session or benchmark to finish, then run again",
                    ) from None
                if not told:
                    progress(f"waiting for the lab: pid {holder} holds {path}")
                    told = True
                time.sleep(0.5)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock
