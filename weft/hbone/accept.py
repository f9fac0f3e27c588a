"""Accepting every connection waiting on a bare non-blocking listener (no asyncio server)."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

log = logging.getLogger(__name__)


def accept_waiting(
    listener: socket.socket, start: Callable[[socket.socket, tuple[str, int]], None], what: str
) -> None:
    """Call `start(sock, peer)` for each connection `listener` holds, until none is left.

    For a listener's reader callback: accepting without an asyncio server leaves each socket bare,
    so the native data path can take its descriptor as it is. An accept error (EMFILE and
    friends) is logged, naming `what`, and retried on the next wake-up.
    """
    while True:
        try:
            sock, peer = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            log.warning("%s accept failed: %s", what, error)
            return
        start(sock, (peer[0], peer[1]))
