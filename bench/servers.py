"""Starts the servers every path talks to, in each bench server workload."""

from __future__ import annotations

import sys

from bench.listening import wait_listening
from bench.loads.catalog import SERVICE_PORTS
from bench.native import NativeTools
from bench.priority import prioritized
from bench.testbed import BenchLayout, Testbed


def start_servers(testbed: Testbed, layout: BenchLayout, tools: NativeTools) -> list[int]:
    """iperf3, the C echo and HTTP servers and the gRPC echo server, bound to the workload's IP."""
    port = {service: str(number) for service, number in SERVICE_PORTS.items()}
    pids: list[int] = []
    try:
        for workload, _node in layout.servers:
            ip = testbed.workload_ip(workload)
            commands = {
                # --rcv-timeout: a client killed mid-test frees the server in 5 s, not 120 s
                "iperf": ["iperf3", "-s", "-B", ip, "-p", port["iperf"], "--rcv-timeout", "5000"],
                "echo": [str(tools.echo_server), ip, port["echo"]],
                "http": [str(tools.http_server), ip, port["http"]],
                "grpc": [sys.executable, "-m", "bench.grpc_echo", "serve", ip, port["grpc"]],
            }
            for service, argv in commands.items():
                pids.append(testbed.spawn(workload, prioritized(argv), f"{workload}-{service}"))
        for workload, _node in layout.servers:
            wait_listening(testbed, list(SERVICE_PORTS.values()), workload=workload)
    except BaseException:
        for pid in pids:  # a lab that stays up (--testbed running) keeps no stray server
            testbed.stop(pid)
        raise
    return pids
