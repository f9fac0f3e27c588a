"""The test tree itself: rules that keep pytest's default (rootdir-less) import mode working."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_module_basenames_are_unique_across_tiers() -> None:
    # tests/ has no __init__.py files, so pytest imports each test module by its basename:
    # two files with one name in different tiers make the whole collection fail.
    names = Counter(p.name for p in TESTS.rglob("*.py") if p.name != "conftest.py")
    assert [name for name, count in names.items() if count > 1] == []
