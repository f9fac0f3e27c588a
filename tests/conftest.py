"""Test tiers: unit (no root), kernel (root + bcc), e2e (root + lab).

With WEFT_REQUIRE_KERNEL=1 (set by CI) a skipped kernel or lab test is a failure: a root test
that is skipped in CI only appears to pass. So is a skipped `native` test: CI's machine installs
libssl-dev, so `weft._native` not being built there is a broken install, not a reason to skip.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

ROOT_TIERS = ("kernel", "lab")
# Markers whose skip fails a CI run (WEFT_REQUIRE_KERNEL=1).
REQUIRED_IN_CI = (*ROOT_TIERS, "native")


def require_kernel() -> bool:
    return os.environ.get("WEFT_REQUIRE_KERNEL") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests in tests/kernel and tests/e2e carry their tier's marker even if it was forgotten."""
    for item in items:
        path = str(item.path)
        if f"{os.sep}tests{os.sep}kernel{os.sep}" in path:
            item.add_marker(pytest.mark.kernel)
        elif f"{os.sep}tests{os.sep}e2e{os.sep}" in path:
            item.add_marker(pytest.mark.lab)


def pytest_runtest_setup(item: pytest.Item) -> None:
    tiers = [m for m in ROOT_TIERS if item.get_closest_marker(m)]
    if tiers and os.geteuid() != 0:
        pytest.skip(f"{tiers[0]} test needs root (run the suite with sudo)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[assignment]
    required = [m for m in REQUIRED_IN_CI if item.get_closest_marker(m)]
    if report.skipped and require_kernel() and required:
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"WEFT_REQUIRE_KERNEL=1: a {required[0]} test was skipped: {reason}"
