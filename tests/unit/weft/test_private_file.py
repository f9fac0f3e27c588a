"""weft.private_file: the atomic 0600 writer of keys, SVIDs and saved state."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from weft.private_file import write_private


def test_a_new_file_is_0600_in_a_new_0700_directory(tmp_path: Path) -> None:
    path = tmp_path / "state" / "key.pem"
    write_private(path, b"secret")
    assert path.read_bytes() == b"secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_a_rewrite_replaces_the_file_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(b"old")
    path.chmod(0o644)
    write_private(path, b"new")
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["key.pem"]


def test_a_failed_write_removes_its_temporary_file(tmp_path: Path) -> None:
    # The rename onto a directory fails after the data was written to the temporary file.
    target = tmp_path / "key.pem"
    target.mkdir()
    (target / "kept").write_bytes(b"old")
    with pytest.raises(IsADirectoryError):
        write_private(target, b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.pem"]
    assert (target / "kept").read_bytes() == b"old"
