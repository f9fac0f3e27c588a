"""The loader: compile and verifier failures are reported and attach nothing; reattaching is
idempotent (a restart reuses the pinned link instead of adding a second attachment)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from kernel_sandbox import CgroupTree

from agent.bpf import libbpf
from agent.bpf.loader import EBPF_DIR, Loader, ProgramLoadError
from agent.bpf.programs import CAPTURE, CONNECT4, NODE, ProgramSpec, Target

BROKEN_VERIFIER = """
#include <uapi/linux/bpf.h>
#include "weft_maps.h"

int weft_broken(struct bpf_sock_addr *ctx)
{
	__u64 id = 1;
	struct weft_enrollment *e = weft_enroll.lookup(&id);
	return e->mode; /* no NULL check: the verifier must refuse this */
}
"""

BROKEN_SYNTAX = """
#include "weft_maps.h"
int weft_broken(struct bpf_sock_addr *ctx) { return undeclared_identifier; }
"""


def attached(target: Path, attach_type: libbpf.AttachType) -> list[int]:
    """Programs attached to a cgroup directory or to a pinned map, at one hook."""
    fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY) if target.is_dir() else -1
    if fd < 0:
        fd = libbpf.obj_get(str(target))
    try:
        return libbpf.prog_query(fd, attach_type)
    finally:
        os.close(fd)


def target_path(spec: ProgramSpec, cgroups: CgroupTree, pin_root: Path) -> Path:
    if spec.target is Target.WORKLOADS_CGROUP:
        return cgroups.workloads
    return pin_root / "node" / "maps" / spec.target.value


def ebpf_dir_with(tmp_path: Path, name: str, text: str) -> Path:
    """A copy of ebpf/ plus one extra C file."""
    copy = tmp_path / "ebpf"
    shutil.copytree(EBPF_DIR, copy)
    (copy / name).write_text(text)
    return copy


BROKEN = ProgramSpec(
    "weft_broken",
    "weft_broken.c",
    CONNECT4.prog_type,
    libbpf.AttachType.CGROUP_INET4_GETPEERNAME,
)


@pytest.mark.parametrize(
    ("source", "quoted"),
    [
        pytest.param(
            BROKEN_VERIFIER,
            ("weft_broken", "failed to load", "invalid mem access"),  # the verifier's own words
            id="verifier refusal names the program and includes the log",
        ),
        pytest.param(
            BROKEN_SYNTAX,
            ("weft_broken.c", "failed to compile", "undeclared_identifier"),
            id="compile error names the file and quotes clang",
        ),
    ],
)
def test_a_program_that_does_not_build_is_refused_with_the_reason_and_attaches_nothing(
    source: str, quoted: tuple[str, ...], tmp_path: Path, cgroups: CgroupTree, pin_root: Path
) -> None:
    loader = Loader(
        "broken",
        pin_root=pin_root,
        ebpf_dir=ebpf_dir_with(tmp_path, "weft_broken.c", source),
    )
    with pytest.raises(ProgramLoadError) as exc:
        loader.attach([CONNECT4, BROKEN], cgroups.workloads)
    for words in quoted:
        assert words in str(exc.value)
    assert attached(cgroups.workloads, CONNECT4.attach_type) == []
    assert not loader.scope_dir.exists()


def test_a_missing_cflag_is_a_compile_error_not_a_silent_default(
    cgroups: CgroupTree, pin_root: Path
) -> None:
    class LoaderWithoutPort(Loader):
        def cflags(self) -> list[str]:
            return [f for f in super().cflags() if "WEFT_OUTBOUND_PORT" not in f]

    loader = LoaderWithoutPort("noport", pin_root=pin_root)
    with pytest.raises(ProgramLoadError, match="WEFT_OUTBOUND_PORT"):
        loader.attach(CAPTURE, cgroups.workloads)


def test_failed_reload_leaves_the_previous_attachment_running(
    tmp_path: Path, cgroups: CgroupTree, pin_root: Path
) -> None:
    good = Loader("node", pin_root=pin_root)
    first = good.attach([CONNECT4], cgroups.workloads)
    bad = Loader(
        "node",
        pin_root=pin_root,
        ebpf_dir=ebpf_dir_with(tmp_path, "weft_broken.c", BROKEN_VERIFIER),
    )
    with pytest.raises(ProgramLoadError):
        bad.attach([CONNECT4, BROKEN], cgroups.workloads)
    assert attached(cgroups.workloads, CONNECT4.attach_type) == [first[0].prog_id]
    assert first[0].link_pin.exists()


def test_five_restarts_leave_exactly_one_attachment_per_program(
    cgroups: CgroupTree, pin_root: Path
) -> None:
    first = Loader("node", pin_root=pin_root).attach(NODE, cgroups.workloads)
    last = first
    for _ in range(5):
        last = Loader("node", pin_root=pin_root).attach(NODE, cgroups.workloads)
        assert all(a.reused for a in last)
    for spec, before, after in zip(NODE, first, last, strict=True):
        assert after.link_id == before.link_id  # the same link, now running the new program
        assert attached(target_path(spec, cgroups, pin_root), spec.attach_type) == [after.prog_id]


def test_a_link_pinned_for_another_cgroup_is_a_conflict(
    cgroups: CgroupTree, pin_root: Path
) -> None:
    Loader("node", pin_root=pin_root).attach([CONNECT4], cgroups.workloads)
    other = cgroups.make("other")
    with pytest.raises(Exception, match="detach scope 'node' first"):
        Loader("node", pin_root=pin_root).attach([CONNECT4], other)
    assert attached(other, CONNECT4.attach_type) == []


def test_a_link_whose_cgroup_was_removed_is_replaced(cgroups: CgroupTree, pin_root: Path) -> None:
    gone = cgroups.make("gone")
    Loader("node", pin_root=pin_root).attach([CONNECT4], gone)
    gone.rmdir()
    cgroups.made.remove(gone)
    attachment = Loader("node", pin_root=pin_root).attach([CONNECT4], cgroups.workloads)[0]
    assert not attachment.reused
    assert attached(cgroups.workloads, CONNECT4.attach_type) == [attachment.prog_id]
