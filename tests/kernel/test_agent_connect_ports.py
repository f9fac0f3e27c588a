"""The agent's connections to workloads do not run out of ports while bind(port 0) would.

In a throwaway netns whose ephemeral range has two ports, two connections from the agent's
address take both. A bind() to port 0 then finds no port (EADDRINUSE; before that point it
scans the whole range on every connection, which is what cost the inbound agent most of its CPU
with a range full of TIME_WAIT); open_from() leaves the port to connect(), which shares a port
between connections to different destinations, so a third connection still opens.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from kernel_sandbox import Netns

PROBE = """
import asyncio, errno
from ipaddress import IPv4Address
from agent.tunnel.connect import open_from

async def main():
    async def idle(reader, writer):
        await reader.read()
    for host in ("127.0.0.2", "127.0.0.4"):
        await asyncio.start_server(idle, host, 7000)
    agent = IPv4Address("127.0.0.3")
    held = [await open_from(agent, IPv4Address("127.0.0.2"), 7000) for _ in range(2)]
    try:
        await asyncio.open_connection("127.0.0.4", 7000, local_addr=("127.0.0.3", 0))
        bound = "connected"
    except OSError as error:
        bound = errno.errorcode[error.errno]
    reader, writer = await open_from(agent, IPv4Address("127.0.0.4"), 7000)
    ports = [w.get_extra_info("sockname")[1] for _, w in held]
    print(bound, writer.get_extra_info("sockname")[1], *ports)

asyncio.run(asyncio.wait_for(main(), 10))
"""


def test_connections_from_the_agent_address_share_ports_that_bind_cannot(netns: Netns) -> None:
    run = ["ip", "netns", "exec", netns.name]
    subprocess.run(
        [*run, "sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=40000 40001"],
        check=True, capture_output=True,
    )  # fmt: skip
    probe = subprocess.run(
        [*run, sys.executable, "-c", PROBE],
        capture_output=True, text=True, timeout=30, check=False,
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    bound, port, *held = probe.stdout.split()
    assert bound == "EADDRINUSE"  # what the agent's connect(local_addr=...) met
    assert sorted(held) == ["40000", "40001"]
    assert port in held  # a port already in use, towards another destination
