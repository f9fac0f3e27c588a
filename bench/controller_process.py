"""`weft controller run` as a child process on ephemeral loopback ports (benchmarks and tests)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


class ControllerStartError(RuntimeError):
    """The controller's first line did not announce its listeners; the process is gone."""


@dataclass(frozen=True)
class ControllerProcess:
    proc: subprocess.Popen[str]
    grpc: str  # host:port of the mTLS gRPC API
    join: str  # host:port of the join endpoint


def spawn_controller_process(state_dir: Path) -> ControllerProcess:
    """Run the controller on a prepared state dir, every port 0, and read where it listens.

    Its first stdout line names the ports ("... mTLS 127.0.0.1:P, join 127.0.0.1:Q, ..."); a
    controller that says anything else is killed and ControllerStartError raised with the line.
    """
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "weft.cli",
            "controller",
            "run",
            "--state-dir",
            str(state_dir),
            "--listen",
            "127.0.0.1",
            "--grpc-port",
            "0",
            "--join-port",
            "0",
            "--http-port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "mTLS 127.0.0.1:" not in line:
        proc.kill()
        proc.wait(5)
        raise ControllerStartError(f"controller did not start: {line!r}")
    return ControllerProcess(
        proc,
        grpc="127.0.0.1:" + line.split("mTLS 127.0.0.1:")[1].split(",")[0],
        join="127.0.0.1:" + line.split("join 127.0.0.1:")[1].split(",")[0],
    )
