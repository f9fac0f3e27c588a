"""Runs Python code inside a named network namespace: setns(2) on a dedicated, throw-away thread."""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from typing import TypeVar

from vm.lab.iproute import PlumbingError, netns_path

CLONE_NEWNET = 0x40000000
T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)


def inside_netns(netns: str, function: Callable[[], T]) -> T:
    """Call `function` in a new thread that joined `netns`, and return its result.

    The network namespace is per thread, so only that thread moves; it ends right after, and
    the rest of the process (and every socket it made) stays where it was. Sockets created by
    `function` belong to `netns` for their whole life.
    """
    result: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fd = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            errors.append(PlumbingError(f"netns {netns} does not exist: {exc.strerror}"))
            return
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                errors.append(PlumbingError(f"setns({netns}) failed: {os.strerror(err)}"))
                return
        finally:
            os.close(fd)
        try:
            result.append(function())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


def write_sysctls(netns: str, values: dict[str, str]) -> None:
    """Set net.* sysctls of `netns` (/proc/sys/net is per network namespace of the caller)."""

    def write() -> None:
        for key, value in values.items():
            path = "/proc/sys/" + key.replace(".", "/")
            with open(path, "w", encoding="ascii") as handle:
                handle.write(value)

    inside_netns(netns, write)
