"""Small programs run inside workloads to check the lab's network: connect probes and listeners.

Each is bounded in count and time, as every load loop in the lab must be.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

# Connects once to each [host, port] of the JSON argument (3 s timeout each); prints the
# failures as a JSON list.
CONNECT_PROBE = """
import json, socket, sys
failed = []
for host, port in json.loads(sys.argv[1]):
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as exc:
        failed.append(f"{host}:{port} {exc}")
print(json.dumps(failed))
"""

# Accepts (and closes) connections on a port: at most 1000 of them, for at most 120 s.
LISTENER = """
import socket, sys, time
server = socket.create_server(("0.0.0.0", int(sys.argv[1])))
server.settimeout(1)
deadline = time.monotonic() + 120
for _ in range(1000):
    if time.monotonic() > deadline:
        break
    try:
        conn, _ = server.accept()
    except TimeoutError:
        continue
    conn.close()
"""


def connect_probe_argv(targets: Sequence[tuple[str, int]]) -> list[str]:
    """argv that tries one TCP connection to each (host, port) and prints the failures."""
    return [sys.executable, "-c", CONNECT_PROBE, json.dumps([list(t) for t in targets])]


def listener_argv(port: int) -> list[str]:
    """argv of a bounded TCP listener on `port`."""
    return [sys.executable, "-c", LISTENER, str(port)]
