"""`weft lab up --vagrant` and `weft lab down --vagrant`: print phases, map errors to exit codes."""

from __future__ import annotations

import argparse
import time

from rich.console import Console

from vm.lab.session import SessionLock
from vm.vagrant import lab, libvirt
from weft.errors import ExitCode


def vagrant_up(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    started = time.monotonic()
    # The emulated VMs saturate the CPUs: no lab test or benchmark runs beside them.
    session = SessionLock()
    session.acquire(wait=args.wait, on_wait=console.print)
    try:
        timings = lab.up(
            progress=lambda line: console.print(f"  {time.monotonic() - started:6.1f} s  {line}")
        )
    finally:
        session.release()
    console.print(timings.report())
    console.print(
        "[green]Vagrant lab up[/]: VMs control, node1, node2 (weft-controller and weft-agent "
        "units; waypoint shop/waypoint as weft-waypoint@shop-waypoint on node2); "
        f"log {lab.log_file()}\n"
        f"next: cd vm && sudo nsenter --net=/run/netns/{libvirt.NETNS} env "
        f"VAGRANT_HOME={lab.VAGRANT_HOME} VAGRANT_DOTFILE_PATH={lab.STATE_DIR}/dotfile "
        "vagrant ssh node1; 'sudo weft lab down --vagrant' removes it all"
    )
    return ExitCode.OK


def vagrant_down(args: argparse.Namespace) -> int:
    started = time.monotonic()
    removed = lab.down(progress=lambda line: print(f"  {line}"))
    print(
        f"Vagrant lab down in {time.monotonic() - started:.1f} s: "
        + (", ".join(removed) if removed else "nothing was running")
    )
    return ExitCode.OK
