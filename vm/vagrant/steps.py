"""Runs the Vagrant lab's commands as named steps that log to a file and fail naming both."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from weft.errors import UnavailableError

TAIL_LINES = 15
_BACKTRACE = re.compile(r"^\s*(from )?/\S+\.rb:\d+:in ")


class StepError(UnavailableError):
    """A lab step failed: the message names the step, the hint names the log to read."""

    def __init__(self, step: str, log: Path, detail: str) -> None:
        super().__init__(
            f"vagrant lab: step '{step}' failed: {detail}",
            hint=f"read {log} (its last lines are above); the lab cleaned up what it started",
        )
        self.step = step
        self.log = log


def tail(log: Path, lines: int = TAIL_LINES) -> str:
    """The log's last lines, without Ruby backtraces (vagrant's errors come before them)."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    kept = [line for line in text.splitlines() if not _BACKTRACE.match(line)]
    return "\n".join(kept[-lines:])


def run(
    step: str,
    argv: Sequence[str],
    log: Path,
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    netns: str | None = None,
) -> None:
    """Run `argv` (inside netns `netns` when given), appending its output to `log`."""
    if netns is not None:
        argv = ["nsenter", f"--net=/run/netns/{netns}", "--", *argv]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        out.write(f"\n### {time.strftime('%H:%M:%S')} step '{step}': {' '.join(argv)}\n")
        out.flush()
        try:
            result = subprocess.run(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise StepError(step, log, f"did not finish within {timeout:.0f} s") from None
        except FileNotFoundError:
            raise StepError(
                step, log, f"{argv[0]} is not installed (run scripts/setup.sh)"
            ) from None
    if result.returncode != 0:
        raise StepError(step, log, f"{argv[0]} exited with {result.returncode}:\n{tail(log)}")
