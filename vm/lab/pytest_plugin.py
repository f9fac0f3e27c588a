"""pytest plugin: a `lab` fixture that builds a network-namespace lab for end-to-end tests.

- `lab` (session): the default topology with the demo shop, built once per session and torn
  down at its end. With WEFT_LAB_REUSE=1 an already running lab is used as is and left running.
- `lab_factory` (function): `build(topology=None, nodes=None, demo=True) -> Lab` for tests that
  need their own lab; whatever it built is removed when the test ends.
- `lab_lock` (function): only holds the machine-wide lab lock, for tests that drive
  `weft lab up/down` themselves.
- `mesh` (module): the `lab` in the mesh (controller and agents, no waypoints) for one test
  module, then out of it again; a module that needs more (waypoints) defines its own `mesh`.
- marker `lab_lifecycle`: the test tears labs down and builds them again; such tests run after
  every other test of the session, so they never pull the shared lab from under anyone.

The lab is one per machine (its netns names are fixed), so a session takes a machine-wide lock
before building one: two pytest sessions of different developers queue instead of colliding.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from vm.lab.lab import Lab
from vm.lab.mesh import MeshInfo, down_mesh, up_mesh
from vm.lab.session import SessionLock
from vm.lab.state import DEFAULT_STATE_DIR
from vm.lab.topology import Topology, load_topology, with_workers
from weft.errors import ConflictError

# Below pytest's per-test timeout (300 s), so a long wait fails with our message, not a timeout.
SESSION_LOCK_WAIT = 240.0
REUSE_ENV = "WEFT_LAB_REUSE"

LabBuilder = Callable[..., Lab]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "lab_lifecycle: tears the lab down and rebuilds it; runs after every other test",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Stable partition: lifecycle tests last, every other test keeps its order.
    items.sort(key=lambda item: item.get_closest_marker("lab_lifecycle") is not None)


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces, cgroups): run the e2e tests with sudo")


def _acquire(lock: SessionLock) -> None:
    try:
        lock.acquire(SESSION_LOCK_WAIT)
    except ConflictError as exc:
        pytest.fail(f"{exc}; run the e2e tests again when it has finished")


@pytest.fixture(scope="session")
def _lab_session_lock() -> Iterator[SessionLock]:
    lock = SessionLock()
    yield lock
    lock.release()


@pytest.fixture(scope="session")
def lab(_lab_session_lock: SessionLock) -> Iterator[Lab]:
    """The default lab with the demo shop, up for the whole session."""
    _require_root()
    if os.environ.get(REUSE_ENV) == "1":
        yield Lab.attach()
        return
    _acquire(_lab_session_lock)
    built = Lab(load_topology(), DEFAULT_STATE_DIR)
    try:
        built.up(demo=True, replace=True)
        yield built
    finally:
        built.down()


@pytest.fixture
def lab_lock(_lab_session_lock: SessionLock) -> None:
    """Hold the machine-wide lab lock (kept until the session ends) without building a lab."""
    _require_root()
    _acquire(_lab_session_lock)


@pytest.fixture
def lab_factory(_lab_session_lock: SessionLock) -> Iterator[LabBuilder]:
    """Build labs of your own (`build(topology=None, nodes=None, demo=True)`); removed after."""
    _require_root()
    _acquire(_lab_session_lock)
    built: list[Lab] = []

    def build(topology: Topology | None = None, nodes: int | None = None, demo: bool = True) -> Lab:
        chosen = topology or load_topology()
        if nodes is not None:
            chosen = with_workers(chosen, nodes)
        new = Lab(chosen, DEFAULT_STATE_DIR)
        built.append(new)
        new.up(demo=demo, replace=True)
        return new

    yield build
    if built:
        built[-1].down()


@pytest.fixture(scope="module")
def mesh(lab: Lab) -> Iterator[MeshInfo]:
    """The lab in the mesh for one test module; out of the mesh again after it."""
    info = up_mesh(lab)
    try:
        # Keep-alive connections the demo opened through an earlier module's agents die with
        # them: one short round lets the demo drop them before a test measures anything.
        lab.traffic(requests=10, duration_limit=15)
        yield info
    finally:
        down_mesh(lab, info)
