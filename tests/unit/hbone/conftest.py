"""Fixtures for HBONE tests: a throwaway CA, a client's and a server's SVIDs, a native mesh."""

from __future__ import annotations

import functools

import pytest
from hbone_testing import CLIENT_ID, SERVER_ID, MeshOpener, TestCa, make_ca, mesh_on

from weft.tls import Svid


@pytest.fixture(scope="session")
def ca() -> TestCa:
    return make_ca()


@pytest.fixture(scope="session")
def client_svid(ca: TestCa) -> Svid:
    return ca.issue(CLIENT_ID)


@pytest.fixture(scope="session")
def server_svid(ca: TestCa) -> Svid:
    return ca.issue(SERVER_ID)


@pytest.fixture(scope="session")
def native_mesh(ca: TestCa, client_svid: Svid, server_svid: Svid) -> MeshOpener:
    """mesh_on() with the native data path on both ends: native_mesh(authorize=..., ...)."""
    return functools.partial(mesh_on, ca, client_svid, server_svid, ("native", "native"))
