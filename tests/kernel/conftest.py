"""Fixtures of the kernel tier: throwaway netns, cgroups, pins and listeners (kernel_sandbox.py)."""

from kernel_sandbox import cgroups, listen, netns, node, node_listen, pin_root

__all__ = ["cgroups", "listen", "netns", "node", "node_listen", "pin_root"]
