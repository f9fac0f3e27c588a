"""Fixtures of the kernel tier: throwaway netns, cgroups, pins and listeners (kernel_sandbox.py)."""

from kernel_sandbox import cgroups, listen, netns, pin_root

__all__ = ["cgroups", "listen", "netns", "pin_root"]
