"""Compiles the C load tools (bench/tools/*.c) into bench/.build/ with gcc, once per source."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from weft.errors import UnavailableError

TOOLS_DIR = Path(__file__).parent / "tools"
BUILD_DIR = Path(__file__).parent / ".build"
TOOL_NAMES = ("echo_server", "http_server", "rr_client", "conn_client")
SHARED_HEADER = TOOLS_DIR / "tool_common.h"  # #included by every tool: part of each one's hash


@dataclass(frozen=True)
class NativeTools:
    """Absolute paths of the compiled tools; processes in any network namespace can run them."""

    echo_server: Path
    http_server: Path
    rr_client: Path
    conn_client: Path


def build_tools(build_dir: Path = BUILD_DIR) -> NativeTools:
    """Compile each tool whose source changed since the last build (the hash is in the name)."""
    if shutil.which("gcc") is None:
        raise UnavailableError(
            "gcc is not installed; the benchmark compiles its C load tools with it",
            hint="apt-get install -y gcc (scripts/setup.sh installs it)",
        )
    build_dir.mkdir(parents=True, exist_ok=True)
    built = {name: _build_one(TOOLS_DIR / f"{name}.c", build_dir) for name in TOOL_NAMES}
    return NativeTools(**built)


def _build_one(source: Path, build_dir: Path) -> Path:
    digest = hashlib.sha256(source.read_bytes() + SHARED_HEADER.read_bytes()).hexdigest()[:12]
    binary = build_dir / f"{source.stem}-{digest}"
    if binary.exists():
        return binary.resolve()
    partial = binary.with_suffix(".partial")
    proc = subprocess.run(
        ["gcc", "-O2", "-Wall", "-Wextra", "-o", str(partial), str(source)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        raise UnavailableError(
            f"gcc could not compile {source}: {proc.stderr.strip()[-2000:]}",
            hint="check that build-essential is installed (apt-get install -y build-essential)",
        )
    partial.rename(binary)  # atomic: a concurrent run never executes a half-written binary
    return binary.resolve()
