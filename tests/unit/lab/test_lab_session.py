"""vm.lab.session: the machine-wide lab lock refuses strangers and lets the holder's children in."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vm.lab.session import SessionLock, is_ancestor
from weft.errors import ConflictError

# Tries to take the lock at argv[1] without waiting; exit 0 if it may use the lab, 5 if refused.
TRY_LOCK = """
import sys
from pathlib import Path
from vm.lab.session import SessionLock
from weft.errors import ConflictError
try:
    SessionLock(Path(sys.argv[1])).acquire(wait=0.0)
except ConflictError as exc:
    print(exc)
    sys.exit(5)
"""

HOLD = "\nimport time; print('held', flush=True); time.sleep(10)"


def test_this_process_is_its_own_ancestor_and_a_stranger_is_not():
    assert is_ancestor(os.getpid())
    stranger = subprocess.Popen(["sleep", "5"])
    try:
        assert not is_ancestor(stranger.pid)
    finally:
        stranger.kill()
        stranger.wait()


def test_the_holders_own_children_may_use_the_lab(tmp_path: Path):
    lock = SessionLock(tmp_path / "session.lock")
    lock.acquire(wait=0)
    try:
        child = subprocess.run([sys.executable, "-c", TRY_LOCK, str(lock.path)], check=False)
        assert child.returncode == 0
    finally:
        lock.release()


def test_a_stranger_is_refused_with_the_holders_pid(tmp_path: Path):
    path = tmp_path / "session.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", TRY_LOCK + HOLD, str(path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConflictError, match=f"in use by pid {holder.pid}"):
            SessionLock(path).acquire(wait=0.2)
    finally:
        holder.kill()
        holder.wait()
    SessionLock(path).acquire(wait=0)  # free again once the holder is gone
