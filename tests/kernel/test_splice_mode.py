"""The loader's splice mode (issue 5): sk_msg where the kernel attaches it, else the sk_skb
fallback, detected at attach time and reported, without failing the rest of the node."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from kernel_sandbox import CgroupTree

from agent.bpf.libbpf import AttachType
from agent.bpf.links import pinned_links, splice_mode
from agent.bpf.loader import Loader, ProgramLoadError
from agent.bpf.programs import NODE, SPLICE_MSG

# The sk_msg program asked for at a hook it cannot be loaded for: the kernel refuses it, as a
# kernel without sk_msg support would.
REFUSED_MSG = dataclasses.replace(SPLICE_MSG, attach_type=AttachType.SK_SKB_VERDICT)
WITH_REFUSED_MSG = tuple(REFUSED_MSG if s is SPLICE_MSG else s for s in NODE)


def test_this_kernel_splices_by_sk_msg(pin_root: Path, cgroups: CgroupTree) -> None:
    loader = Loader("mode", pin_root=pin_root)
    try:
        loader.attach(NODE, cgroups.workloads)
        assert loader.skipped == {}
        assert splice_mode(loader.links_dir) == "sk_msg"
    finally:
        loader.remove()


def test_a_refused_sk_msg_program_leaves_the_sk_skb_splice_and_says_why(
    pin_root: Path, cgroups: CgroupTree
) -> None:
    loader = Loader("mode", pin_root=pin_root)
    try:
        loader.attach(NODE, cgroups.workloads)  # sk_msg attached first, as on this kernel
        attachments = loader.attach(WITH_REFUSED_MSG, cgroups.workloads)  # a restart, refused

        assert "weft_splice_msg" in loader.skipped
        assert "weft_splice_msg" in loader.skipped["weft_splice_msg"]  # names the program
        # The link pinned by the first load is gone too: what runs matches what is reported.
        assert splice_mode(loader.links_dir) == "sk_skb"
        assert {a.function for a in attachments} == {s.function for s in NODE} - {"weft_splice_msg"}
        assert {link.function for link in pinned_links(loader.links_dir)} == {
            a.function for a in attachments
        }
    finally:
        loader.remove()


def test_a_required_program_that_fails_still_fails_the_attach(
    pin_root: Path, cgroups: CgroupTree
) -> None:
    broken = dataclasses.replace(REFUSED_MSG, optional=False)
    loader = Loader("mode", pin_root=pin_root)
    try:
        with pytest.raises(ProgramLoadError, match="weft_splice_msg"):
            loader.attach((*NODE[:-1], broken), cgroups.workloads)
        assert not loader.scope_dir.exists()  # nothing half attached
    finally:
        loader.remove()
