"""Runs ip(8), nft(8) and nsenter(1) for the lab; a failure becomes an error saying what failed."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from weft.errors import UnavailableError, WeftError

NETNS_DIR = "/run/netns"


class PlumbingError(WeftError):
    """A command that builds or removes part of the lab failed."""


def netns_path(netns: str) -> str:
    return f"{NETNS_DIR}/{netns}"


def run(argv: Sequence[str], input: str | None = None, check: bool = True) -> str:
    """Run a plumbing command; return its stdout."""
    try:
        proc = subprocess.run(
            list(argv), input=input, capture_output=True, text=True, timeout=60, check=False
        )
    except FileNotFoundError as exc:
        raise UnavailableError(
            f"'{argv[0]}' is not installed",
            hint="run 'sudo make setup' (it installs iproute2, nftables and util-linux)",
        ) from exc
    if check and proc.returncode != 0:
        raise PlumbingError(_describe_failure(argv, input, proc))
    return proc.stdout


def ip_batch(lines: Sequence[str], netns: str | None = None) -> None:
    """Many commands in one `ip -batch` process (in `netns` if given): far faster than one each."""
    if not lines:
        return
    run([*(["ip", "-n", netns] if netns else ["ip"]), "-batch", "-"], input="\n".join(lines) + "\n")


def ip_batches_parallel(batches: dict[str, list[str]]) -> None:
    """Run one `ip -n NETNS -batch -` per netns concurrently (they are independent)."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(ip_batch, lines, netns) for netns, lines in batches.items()]
    for future in futures:
        future.result()  # raises the first failure, which names its netns


def in_netns(netns: str, argv: Sequence[str]) -> list[str]:
    """argv that runs `argv` in the netns without remounting /sys (unlike `ip netns exec`)."""
    return ["nsenter", f"--net={netns_path(netns)}", "--", *argv]


def nft_apply(netns: str, ruleset: str) -> None:
    run(in_netns(netns, ["nft", "-f", "-"]), input=ruleset)


def _describe_failure(
    argv: Sequence[str], input: str | None, proc: subprocess.CompletedProcess[str]
) -> str:
    detail = (proc.stderr or proc.stdout).strip() or f"exit code {proc.returncode}"
    command = " ".join(argv)
    if input:
        first = input.strip().splitlines()[:3]
        command += " <<< " + " / ".join(first) + (" / ..." if input.count("\n") > 3 else "")
    return f"'{command}' failed: {detail}"
