"""Fixtures for HBONE tests: a throwaway CA and the SVIDs of a client and a server workload."""

from __future__ import annotations

import pytest
from hbone_testing import CLIENT_ID, SERVER_ID, TestCa, make_ca

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
