"""Makes sure the Debian packages of the load tools and peer proxies are installed."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping

from weft.errors import NotRootError, UnavailableError

# The command each package provides, checked before asking dpkg or apt.
REQUIRED_PACKAGES: Mapping[str, str] = {
    "iperf3": "iperf3",
    "stunnel4": "stunnel4",
    "haproxy": "haproxy",
    "wrk": "wrk",
    "gcc": "gcc",
}


def missing_packages(
    required: Mapping[str, str] = REQUIRED_PACKAGES, search_path: str | None = None
) -> list[str]:
    """The packages whose command is not on PATH (sbin included: haproxy lives there)."""
    path = search_path or os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return [
        package for package, command in required.items() if not shutil.which(command, path=path)
    ]


def ensure_packages(required: Mapping[str, str] = REQUIRED_PACKAGES) -> list[str]:
    """Install what is missing with apt-get; returns the packages it installed."""
    missing = missing_packages(required)
    if not missing:
        return []
    if os.geteuid() != 0:
        raise NotRootError(f"installing {', '.join(missing)} for the benchmark")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (["apt-get", "update"], ["apt-get", "install", "-y", *missing]):
        proc = subprocess.run(
            argv, capture_output=True, text=True, env=env, timeout=600, check=False
        )
        if proc.returncode != 0:
            raise UnavailableError(
                f"'{' '.join(argv)}' failed: {proc.stderr.strip()[-1000:]}",
                hint=f"install {' '.join(missing)} by hand, then run 'weft bench' again",
            )
    still = missing_packages(required)
    if still:
        raise UnavailableError(
            f"apt-get installed {', '.join(missing)} but {', '.join(still)} is still missing",
            hint="check the apt sources of this machine",
        )
    return missing
