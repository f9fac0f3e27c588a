"""Throwaway kernel sandboxes for eBPF tests: a netns, a cgroup tree, a bpffs pin root, listeners.

Everything is named wkt-<pid>-<n>-<kind> and removed after the test, pass or fail. Not `weft-*`:
the lab's leak sweep removes every `weft-*` netns, and lab tests may run at the same time.
Traffic stays inside the test's own network namespace (addresses on its loopback device).
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.bpf.loader import Loader, cgroup_id
from agent.bpf.maps import Enrollment, NodeMaps
from agent.bpf.programs import NODE

CGROUP2_ROOT = Path("/sys/fs/cgroup/unified")
BPFFS_ROOT = Path("/sys/fs/bpf")
CLONE_NEWNET = 0x40000000
CLIENT_TIMEOUT_S = 10.0

# Addresses the sandbox netns puts on its loopback device (all /32, so nothing else is local).
AGENT_ADDR = "10.77.0.1"
SERVER_ADDR = "10.77.0.2"
STRANGER_ADDR = "10.77.0.3"  # a source that is neither the agent nor the workload
UNROUTED_ADDR = "10.77.0.9"  # nothing answers here: a connect that arrives was redirected

_counter = itertools.count()


def _unique(kind: str) -> str:
    return f"wkt-{os.getpid()}-{next(_counter)}-{kind}"


@dataclass
class Netns:
    name: str

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", "-n", self.name, *args], check=True, capture_output=True)

    def socket_in(self, make: Callable[[], socket.socket]) -> socket.socket:
        """Create a socket inside this netns (a socket keeps the netns it was created in)."""
        result: list[socket.socket | BaseException] = []

        def in_thread() -> None:
            # setns() changes only the calling thread, so a short-lived thread does it.
            libc = ctypes.CDLL(None, use_errno=True)
            try:
                with open(self.path) as ns:
                    if libc.setns(ns.fileno(), CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns")
                result.append(make())
            except BaseException as exc:
                result.append(exc)

        thread = threading.Thread(target=in_thread)
        thread.start()
        thread.join()
        outcome = result[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


@contextlib.contextmanager
def made_netns() -> Iterator[Netns]:
    ns = Netns(_unique("ns"))
    subprocess.run(["ip", "netns", "add", ns.name], check=True)
    try:
        ns.ip("link", "set", "lo", "up")
        for addr in (AGENT_ADDR, SERVER_ADDR, STRANGER_ADDR):
            ns.ip("addr", "add", f"{addr}/32", "dev", "lo")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns.name], check=False)


@pytest.fixture
def netns() -> Iterator[Netns]:
    with made_netns() as ns:
        yield ns


@dataclass
class CgroupTree:
    """A throwaway cgroup v2 subtree: <root>/workloads/<workload> like the lab's node subtree."""

    root: Path
    made: list[Path] = field(default_factory=list)

    @property
    def workloads(self) -> Path:
        return self.root / "workloads"

    def make(self, relative: str) -> Path:
        path = self.root / relative
        missing = [p for p in (path, *path.parents) if not p.exists()]
        for step in reversed(missing):
            step.mkdir()
            self.made.append(step)
        return path

    def remove(self) -> None:
        for path in sorted(self.made, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(FileNotFoundError):
                path.rmdir()


@contextlib.contextmanager
def made_cgroups() -> Iterator[CgroupTree]:
    tree = CgroupTree(CGROUP2_ROOT / _unique("cg"))
    tree.make(".")
    tree.make("workloads")
    try:
        yield tree
    finally:
        tree.remove()


@pytest.fixture
def cgroups() -> Iterator[CgroupTree]:
    with made_cgroups() as tree:
        yield tree


@contextlib.contextmanager
def made_pin_root() -> Iterator[Path]:
    root = BPFFS_ROOT / _unique("pins")
    root.mkdir()
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pin_root() -> Iterator[Path]:
    with made_pin_root() as root:
        yield root


@contextlib.contextmanager
def in_cgroup(cgroup: Path) -> Iterator[None]:
    """Run the block with this process in `cgroup`: sockets made meanwhile belong to it for good
    (a socket's cgroup is fixed when it is created), so the test can own a workload's socket."""
    own = Path("/proc/self/cgroup").read_text().strip().splitlines()
    unified = next(line.split(":", 2)[2] for line in own if line.startswith("0::"))
    home = CGROUP2_ROOT / unified.lstrip("/")
    (cgroup / "cgroup.procs").write_text(str(os.getpid()))
    try:
        yield
    finally:
        (home / "cgroup.procs").write_text(str(os.getpid()))


_CLIENT = r"""
import json, os, socket, sys
cgroup, dst, port, payload = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].encode()
timeout = float(sys.argv[5])
with open(os.path.join(cgroup, "cgroup.procs"), "w") as procs:
    procs.write(str(os.getpid()))
out = {}
try:
    s = socket.create_connection((dst, port), timeout=timeout)
    out["sock"] = s.getsockname()
    out["peer"] = s.getpeername()
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    chunks = []
    while True:
        data = s.recv(65536)
        if not data:
            break
        chunks.append(data)
    out["reply"] = b"".join(chunks).decode()
    s.close()
except OSError as exc:
    out["error"] = exc.errno
print(json.dumps(out))
"""


@dataclass(frozen=True)
class ClientResult:
    sock: tuple[str, int] | None
    peer: tuple[str, int] | None
    reply: str | None
    error: int | None


def run_client(ns: Netns, cgroup: Path, dst: str, port: int, payload: str = "ping") -> ClientResult:
    """A process in `cgroup` and `ns` connects to dst:port, sends `payload`, reads to EOF."""
    proc = subprocess.run(
        [
            "nsenter",
            f"--net={ns.path}",
            sys.executable,
            "-c",
            _CLIENT,
            str(cgroup),
            dst,
            str(port),
            payload,
            str(CLIENT_TIMEOUT_S),
        ],
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT_S + 10,
        check=True,
    )
    out: dict[str, Any] = json.loads(proc.stdout)
    return ClientResult(
        tuple(out["sock"]) if "sock" in out else None,  # type: ignore[arg-type]
        tuple(out["peer"]) if "peer" in out else None,  # type: ignore[arg-type]
        out.get("reply"),
        out.get("error"),
    )


@dataclass
class Accepted:
    peer: tuple[str, int]
    local: tuple[str, int]
    data: bytes


class EchoListener:
    """Accepts connections in a thread, records who came, and answers `<name>:<data>`."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.name = name
        self.accepted: list[Accepted] = []
        self.on_accept: Callable[[socket.socket], None] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.sock.settimeout(0.2)
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()
        return host, port

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(CLIENT_TIMEOUT_S)
                local = conn.getsockname()
                if self.on_accept is not None:
                    self.on_accept(conn)
                chunks = []
                with contextlib.suppress(OSError):
                    while data := conn.recv(65536):
                        chunks.append(data)
                # Recorded before answering: once the client has its reply, the record exists.
                self.accepted.append(Accepted(peer, local, b"".join(chunks)))
                with contextlib.suppress(OSError):
                    conn.sendall(self.name.encode() + b":" + b"".join(chunks))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


class Listeners:
    """Echo listeners inside one netns; close() stops them all."""

    def __init__(self, ns: Netns) -> None:
        self.ns = ns
        self.started: list[EchoListener] = []

    def __call__(self, addr: str, port: int, name: str) -> EchoListener:
        def make() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((addr, port))
            s.listen(64)
            return s

        listener = EchoListener(self.ns.socket_in(make), name)
        self.started.append(listener)
        return listener

    def close(self) -> None:
        for listener in self.started:
            listener.close()


@pytest.fixture
def listen(netns: Netns) -> Iterator[Listeners]:
    """Start echo listeners inside the sandbox netns; all are closed after the test."""
    listeners = Listeners(netns)
    yield listeners
    listeners.close()


@dataclass
class Node:
    """A node's worth of sandbox: netns, cgroup tree, every Weft program attached, its maps."""

    netns: Netns
    cgroups: CgroupTree
    loader: Loader
    maps: NodeMaps

    def workload(self, name: str, enrollment: Enrollment | None) -> Path:
        """A new workload cgroup under workloads/, enrolled as given (None: not enrolled)."""
        path = self.cgroups.make(f"workloads/{name}-{next(_counter)}")
        if enrollment is not None:
            self.maps.enroll(cgroup_id(path), enrollment)
        return path


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    """Shared by a test module: compiling and attaching every program takes seconds."""
    with made_netns() as ns, made_cgroups() as tree, made_pin_root() as root:
        loader = Loader("node", pin_root=root)
        loader.attach(NODE, tree.workloads)
        try:
            with NodeMaps(loader.maps_dir) as maps:
                yield Node(ns, tree, loader, maps)
        finally:
            loader.remove()


@pytest.fixture
def node_listen(node: Node) -> Iterator[Listeners]:
    listeners = Listeners(node.netns)
    yield listeners
    listeners.close()
