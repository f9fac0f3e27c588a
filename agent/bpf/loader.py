"""Compile Weft's eBPF C with bcc, load it, and attach it with pinned bpf_links, idempotently.

Layout under bpffs, one directory per scope (a node agent uses its node name):

    /sys/fs/bpf/weft/<scope>/maps/<map>        every map of ebpf/include/weft_maps.h
    /sys/fs/bpf/weft/<scope>/links/<function>  one pinned bpf_link per attached program

A pinned link keeps its program attached after the agent exits, and unlinking the pin detaches
it. A restarted agent finds the pin and swaps the freshly loaded program into the existing link
(`bpf_link_update`) instead of attaching a second copy. Everything is loaded, and so verified,
before anything is attached, so a verifier failure leaves the previous attachment as it was.
An optional program (the sk_msg splice) that the kernel refuses is left out instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.bpf import libbpf
from agent.bpf.links import cgroup_id
from agent.bpf.programs import ProgramSpec, Target
from weft.errors import ConflictError, UsageError, WeftError

__all__ = ["Attachment", "Loader", "ProgramLoadError", "cgroup_id"]

EBPF_DIR = Path(__file__).resolve().parents[2] / "ebpf"
DEFAULT_PIN_ROOT = Path("/sys/fs/bpf/weft")
DEFAULT_OUTBOUND_PORT = 15001
VERIFIER_LOG_BYTES = 4 << 20
_SCOPE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
log = logging.getLogger(__name__)


class ProgramLoadError(WeftError):
    """An eBPF program did not compile or was refused by the verifier; nothing was attached."""

    def __init__(self, program: str, source: Path, stage: str, log: str) -> None:
        super().__init__(
            f"eBPF program {program} ({source}) failed to {stage}; nothing was attached\n"
            f"{log.rstrip()}",
            hint=f"fix {source.name} (the log above names the line or instruction); "
            "'weft check --pre' verifies the kernel features it needs",
        )
        self.program = program
        self.stage = stage
        self.log = log


@dataclass(frozen=True)
class Attachment:
    """One program attached through a pinned bpf_link."""

    function: str
    link_pin: Path
    link_id: int
    prog_id: int
    reused: bool  # True: an existing pinned link now runs the new program; no new attachment


@contextlib.contextmanager
def _stderr_captured() -> Iterator[list[str]]:
    """Collect what C code (clang inside bcc) writes to fd 2; Python's sys.stderr is not enough."""
    collected: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield collected
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            collected.append(sink.read().decode(errors="replace"))


class Loader:
    """Loads and attaches programs for one scope (a node), sharing that scope's pinned maps."""

    def __init__(
        self,
        scope: str,
        *,
        pin_root: Path = DEFAULT_PIN_ROOT,
        ebpf_dir: Path = EBPF_DIR,
        outbound_port: int = DEFAULT_OUTBOUND_PORT,
    ) -> None:
        if not _SCOPE_PATTERN.match(scope):
            raise UsageError(
                f"invalid eBPF scope name {scope!r}",
                hint="use lower-case letters, digits, '-', '_' or '.' (it names a bpffs directory)",
            )
        self.scope = scope
        self.scope_dir = pin_root / scope
        self.maps_dir = self.scope_dir / "maps"
        self.links_dir = self.scope_dir / "links"
        self.ebpf_dir = ebpf_dir
        self.outbound_port = outbound_port
        self.skipped: dict[str, str] = {}  # optional programs the last attach() left out: why

    def cflags(self) -> list[str]:
        """Every value the C needs; the C turns a missing one into an #error."""
        return [
            f"-I{self.ebpf_dir / 'include'}",
            f'-DWEFT_PIN_DIR="{self.maps_dir}"',
            f"-DWEFT_OUTBOUND_PORT={self.outbound_port}",
        ]

    def compile(self, source: str) -> Any:
        """Compile ebpf/<source> into a bcc BPF object; its maps are created or reopened pinned."""
        from bcc import BPF

        path = self.ebpf_dir / source
        self.maps_dir.mkdir(parents=True, exist_ok=True)
        with _stderr_captured() as diagnostics:
            try:
                bpf = BPF(src_file=str(path).encode(), cflags=self.cflags())
            except Exception:
                failed = True
            else:
                failed = False
        if failed:
            raise ProgramLoadError(source, path, "compile", diagnostics[0])
        return bpf

    def load_program(self, bpf: Any, spec: ProgramSpec) -> int:
        """Load one function; on refusal, load again with a log buffer to report the verifier."""
        from bcc import lib

        name = spec.function.encode()
        if not lib.bpf_function_start(bpf.module, name):
            raise ProgramLoadError(
                spec.function, self.ebpf_dir / spec.source, "load", "no such function"
            )

        def load(log_level: int, log: ctypes.Array[ctypes.c_char] | None) -> int:
            fd: int = lib.bcc_func_load(
                bpf.module,
                int(spec.prog_type),
                name,
                lib.bpf_function_start(bpf.module, name),
                lib.bpf_function_size(bpf.module, name),
                lib.bpf_module_license(bpf.module),
                lib.bpf_module_kern_version(bpf.module),
                log_level,
                log,
                0 if log is None else len(log),
                None,
                int(spec.attach_type),
            )
            return fd

        with _stderr_captured() as printed:
            fd = load(0, None)
            if fd >= 0:
                return self._keep(bpf, name, fd)
            err = ctypes.get_errno()
            log = ctypes.create_string_buffer(VERIFIER_LOG_BYTES)
            fd = load(1, log)
        if fd >= 0:  # refused once, accepted on the retry: keep it, there is nothing to report
            return self._keep(bpf, name, fd)
        raise ProgramLoadError(
            spec.function,
            self.ebpf_dir / spec.source,
            "load",
            f"{os.strerror(err)}\n{log.value.decode(errors='replace') or printed[0]}",
        )

    @staticmethod
    def _keep(bpf: Any, name: bytes, fd: int) -> int:
        from bcc import BPF

        bpf.funcs[name] = BPF.Function(bpf, name, fd)  # bcc closes it with the object
        return fd

    def attach(self, specs: Sequence[ProgramSpec], cgroup: Path) -> list[Attachment]:
        """Load every program in `specs`, then attach each through a pinned link: cgroup programs
        to `cgroup` (the enrolled workloads' parent), map programs to their pinned map.

        Idempotent: a program whose link is already pinned is swapped into that link.
        On any failure, links created by this call are removed again; and if this call created
        the scope's pin directory, that goes too.
        """
        fresh_scope = not self.scope_dir.exists()
        compiled: dict[str, Any] = {}
        created: list[Path] = []
        targets: dict[Target, _AttachTarget] = {}
        self.skipped = {}
        try:
            loaded = []
            for spec in specs:
                if spec.source not in compiled:
                    compiled[spec.source] = self.compile(spec.source)
                try:
                    loaded.append((spec, self.load_program(compiled[spec.source], spec)))
                except ProgramLoadError as err:
                    if not spec.optional:
                        raise
                    self._skip(spec, str(err).splitlines()[0])  # names the program
            self.links_dir.mkdir(parents=True, exist_ok=True)
            attachments = []
            for spec, prog_fd in loaded:
                if spec.target not in targets:
                    targets[spec.target] = self._open_target(spec.target, cgroup)
                try:
                    attachment = self._attach_one(spec, prog_fd, targets[spec.target])
                except (OSError, ConflictError) as err:
                    if not spec.optional:
                        if isinstance(err, OSError):
                            path = self.ebpf_dir / spec.source
                            raise ProgramLoadError(spec.function, path, "attach", str(err)) from err
                        raise
                    self._skip(spec, f"{spec.function} was not attached: {err}")
                    continue
                if not attachment.reused:
                    created.append(attachment.link_pin)
                attachments.append(attachment)
            return attachments
        except BaseException:
            for pin in created:
                _detach_pin(pin)
            if fresh_scope:
                shutil.rmtree(self.scope_dir, ignore_errors=True)
            raise
        finally:
            for target in targets.values():
                os.close(target.fd)
            for bpf in compiled.values():
                bpf.cleanup()

    def _skip(self, spec: ProgramSpec, reason: str) -> None:
        """Leave an optional program out; a link a previous load pinned for it goes too, so that
        what runs always matches what this loader reports."""
        self.skipped[spec.function] = reason
        log.warning("optional eBPF program %s not attached: %s", spec.function, reason)
        pin = self.links_dir / spec.function
        if pin.exists():
            _detach_pin(pin)

    def _open_target(self, target: Target, cgroup: Path) -> _AttachTarget:
        if target is Target.WORKLOADS_CGROUP:
            fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
            return _AttachTarget(fd, cgroup_id(cgroup), f"cgroup {cgroup}")
        pin = self.maps_dir / target.value
        fd = libbpf.obj_get(str(pin))
        return _AttachTarget(fd, int(libbpf.map_info(fd).id), f"map {pin}")

    def _attach_one(self, spec: ProgramSpec, prog_fd: int, target: _AttachTarget) -> Attachment:
        pin = self.links_dir / spec.function
        prog_id = libbpf.prog_id(prog_fd)
        if pin.exists():
            link_fd = libbpf.obj_get(str(pin))
            try:
                info = libbpf.link_info(link_fd)
                linked_to, linked_at = _link_target(info, spec.target)
                if (linked_to, linked_at) == (target.id, spec.attach_type):
                    libbpf.link_update(link_fd, prog_fd)
                    return Attachment(spec.function, pin, info.id, prog_id, reused=True)
                if linked_to != 0:
                    raise ConflictError(
                        f"{pin} attaches {spec.function} to {spec.target.name.lower()} id "
                        f"{linked_to}, not to {target.description} (id {target.id})",
                        hint=f"detach scope '{self.scope}' first (remove {self.links_dir}) "
                        "or use another scope name",
                    )
            finally:
                os.close(link_fd)
            pin.unlink()  # its target is gone, so the link is defunct: replace it
        link_fd = libbpf.link_create(prog_fd, target.fd, spec.attach_type)
        try:
            libbpf.obj_pin(link_fd, str(pin))
            link_id = libbpf.link_info(link_fd).id
        except BaseException:
            libbpf.link_detach(link_fd)
            raise
        finally:
            os.close(link_fd)
        return Attachment(spec.function, pin, link_id, prog_id, reused=False)

    def detach(self) -> list[str]:
        """Detach every program of the scope and unpin its link; returns the programs' names.

        Detached explicitly before the unpin, so that no program runs after this returns.
        """
        if not self.links_dir.is_dir():
            return []
        names = []
        for pin in sorted(self.links_dir.iterdir()):
            _detach_pin(pin)
            names.append(pin.name)
        return names

    def remove(self) -> None:
        """Detach everything and drop the scope's pinned maps (their state is lost)."""
        self.detach()
        if self.scope_dir.exists():
            shutil.rmtree(self.scope_dir)


@dataclass(frozen=True)
class _AttachTarget:
    fd: int
    id: int  # cgroup id or map id, as bpf_link_info reports it
    description: str


def _link_target(info: libbpf.LinkInfo, target: Target) -> tuple[int, int]:
    """(target id, attach type) of an existing link; id 0 when its target has gone away."""
    if target is Target.WORKLOADS_CGROUP:
        return int(info.target.cgroup.cgroup_id), int(info.target.cgroup.attach_type)
    return int(info.target.sockmap.map_id), int(info.target.sockmap.attach_type)


def _detach_pin(pin: Path) -> None:
    """Detach a pinned link now, then remove its pin."""
    link_fd = libbpf.obj_get(str(pin))
    try:
        libbpf.link_detach(link_fd)
    finally:
        os.close(link_fd)
    pin.unlink()
