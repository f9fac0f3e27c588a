"""Fixtures of the controller tests (the helpers live in controller_testkit)."""

from controller_testkit import controller

__all__ = ["controller"]
