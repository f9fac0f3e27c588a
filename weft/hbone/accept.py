"""Bare non-blocking listeners (no asyncio server): making one, accepting what waits on it."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

from weft.hbone.native_session import native_accept

log = logging.getLogger(__name__)

IP_TRANSPARENT = 19  # linux/in.h; the socket module does not export it


def accept_waiting(
    listener: socket.socket, start: Callable[[socket.socket, tuple[str, int]], None], what: str
) -> None:
    """Call `start(sock, peer)` for each connection `listener` holds, until none is left.

    For a listener's reader callback: accepting without an asyncio server leaves each socket bare,
    so the native data path can take its descriptor as it is. An accept error (EMFILE and
    friends) is logged, naming `what`, and retried on the next wake-up.
    """
    # socket.accept() is _accept() plus, per connection, the listener's family and type read
    # through enum properties and a default-timeout check: ten Python calls, a twentieth of an
    # agent's per-connection calls. The socket made here is the same: the listener's family, a
    # stream, its descriptor in blocking mode under no default timeout (callers set their own).
    family = listener.family
    accept = listener._accept  # type: ignore[attr-defined]  # _socket.socket's, not in typeshed
    while True:
        try:
            fd, peer = accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            log.warning("%s accept failed: %s", what, error)
            return
        start(socket.socket(family, socket.SOCK_STREAM, 0, fd), (peer[0], peer[1]))


def accept_descriptors(
    listener: socket.socket, start: Callable[[int, tuple[str, int]], None], what: str
) -> bool:
    """accept_waiting() handing over bare descriptors, non-blocking from accept4() (weft._native):
    no ioctl(FIONBIO) per connection for setblocking(False), and no socket object (Python 3.11
    checks a descriptor it wraps with a getsockname()). False, accepting nothing, without
    weft._native: then use accept_waiting()."""
    accept = native_accept
    if accept is None:
        return False
    fd = listener.fileno()
    while True:
        try:
            accepted = accept(fd)
        except OSError as error:
            log.warning("%s accept failed: %s", what, error)
            return True
        if accepted is None:
            return True
        start(accepted[0], (accepted[1], accepted[2]))


def listening_socket(host: str, port: int, *, transparent: bool = False) -> socket.socket:
    """A non-blocking listening TCP socket on an IP address; `transparent` sets IP_TRANSPARENT
    before bind()."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if transparent:
            sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
