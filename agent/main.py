"""`weft agent run`: the node agent process (capture, HBONE, certificates, config, admin)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from ipaddress import IPv4Address
from pathlib import Path

from agent.runtime.node_agent import AgentConfig, NodeAgent
from weft.errors import NotRootError
from weft.hbone.eventloop import new_event_loop
from weft.hbone.native_session import DATA_PATHS, native_available
from weft.identity import DEFAULT_TRUST_DOMAIN

RUN_EXAMPLES = """\
examples:
  sudo weft agent run --node node1 --controller 10.77.0.2:15012 \\
       --join-token /run/weft/node1.token --trust-bundle /var/lib/weft/trust-bundle.pem \\
       --workloads-cgroup /sys/fs/cgroup/unified/weft/node1/workloads
  (the lab does this for you: 'sudo weft lab up --demo --mesh')
"""


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host:
        return text, default_port
    return host, int(port)


def _seconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (e.g. 60)")
    return value


def register_run(parser: argparse.ArgumentParser) -> None:
    parser.epilog = RUN_EXAMPLES
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--node", required=True, help="this node's name, as in Workload.spec.node")
    parser.add_argument("--controller", required=True, help="controller mTLS gRPC host:port")
    parser.add_argument("--join-address", help="controller join host:port (default: port 15013)")
    parser.add_argument("--join-token", type=Path, help="file holding a one-time join token")
    parser.add_argument(
        "--trust-bundle",
        type=Path,
        default=Path("/etc/weft/trust-bundle.pem"),
        help="the mesh roots, PEM (the controller writes STATE_DIR/trust-bundle.pem)",
    )
    parser.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN)
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="node certificate, saved config and workload certificates, all 0600"
        " (default /var/lib/weft/agent/NODE)",
    )
    parser.add_argument("--workloads-cgroup", type=Path, help="cgroup holding the workloads")
    parser.add_argument("--no-capture", action="store_true", help="run without eBPF capture")
    parser.add_argument(
        "--agent-address", type=IPv4Address, default=IPv4Address("169.254.1.1"),
        help="the address at which workloads reach this agent (default 169.254.1.1)",
    )  # fmt: skip
    parser.add_argument("--admin", default="127.0.0.1:15000", help="admin host:port")
    parser.add_argument("--metrics", default="0.0.0.0:15020", help="metrics host:port")
    parser.add_argument("--log-level", default="info")
    parser.add_argument(
        "--svid-ttl", type=_seconds, default=0, metavar="SECONDS",
        help="validity to ask for workload certificates (default: the controller's, 24 h)",
    )  # fmt: skip
    parser.add_argument(
        "--data-path", choices=DATA_PATHS, default=None,
        help="HBONE data path: native (C moves the bytes, weft._native) or python"
        " (default: native where weft._native is built, else python)",
    )  # fmt: skip
    parser.add_argument("--pin-root", default="/sys/fs/bpf/weft", help=argparse.SUPPRESS)
    parser.set_defaults(func=cmd_run)


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    controller_host, _ = _host_port(args.controller, 15012)
    return AgentConfig(
        node=args.node,
        controller=args.controller,
        join_address=args.join_address or f"{controller_host}:15013",
        trust_bundle=args.trust_bundle,
        join_token=args.join_token,
        state_dir=args.state_dir or Path("/var/lib/weft/agent") / args.node,
        workloads_cgroup=None if args.no_capture else args.workloads_cgroup,
        agent_address=args.agent_address,
        trust_domain=args.trust_domain,
        admin_address=_host_port(args.admin, 15000),
        metrics_address=_host_port(args.metrics, 15020),
        pin_root=Path(args.pin_root),
        svid_ttl=args.svid_ttl,
        data_path=args.data_path or ("native" if native_available() else "python"),
    )


def cmd_run(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise NotRootError("weft agent run")
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = config_from_args(args)
    logging.getLogger(__name__).info("HBONE data path: %s", config.data_path)

    async def main() -> None:
        agent = NodeAgent(config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, agent.stop.set)
        await agent.run()

    # uvloop (weft.hbone.eventloop): its TCP and TLS transports are C, asyncio's are Python;
    # measured on loopback, about a quarter less agent CPU per connection and per 1 KiB exchange.
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(main())
    return 0
