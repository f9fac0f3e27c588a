"""Runs every process on a measured path at a raised CPU priority, the same for every path.

The machine has two cores and other work runs beside the benchmark. At nice -5 a bench process
gets about three times the CPU share of a default one when they compete, so the figures move
less with whatever else is running. Clients, servers and proxies all get it, so no path is
favoured; a meshed path must start its agents and waypoint through `prioritized` too.
"""

from __future__ import annotations

from collections.abc import Sequence

NICE = -5


def prioritized(argv: Sequence[str]) -> list[str]:
    """argv run under `nice -n -5` (root may raise priority)."""
    return ["nice", "-n", str(NICE), *argv]
