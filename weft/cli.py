"""The `weft` command: one entry point that imports each command family only when it is used."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from weft import __version__
from weft.errors import ExitCode, WeftError

EXAMPLES = """\
examples:
  sudo weft check --pre                 # does this machine have what Weft needs?
  sudo weft lab up --demo               # a 3-node lab in network namespaces, with the demo shop
  sudo weft lab exec frontend -- curl -s http://10.96.0.10:8080/
  sudo weft lab down                    # remove every lab namespace, veth, cgroup and pin
  weft bench --quick                    # direct vs meshed vs stunnel/haproxy, side by side
  weft apply -f policy.yaml             # validate, then apply all-or-nothing
  weft get workloads -n shop -o json
"""


@dataclass(frozen=True)
class CommandFamily:
    """A `weft <name>` command: its help line and the module whose `register(parser)` builds it.

    The module is imported only when the command runs, so `weft lab` never loads grpc and the
    controller never loads bcc. Modules are named by string to keep `weft` free of imports of
    the parts (agent, controller, waypoint) it dispatches to.
    """

    name: str
    help: str
    module: str


COMMAND_FAMILIES: tuple[CommandFamily, ...] = (
    CommandFamily(
        "check", "pre-flight and health checks (--pre: kernel and system features)", "weft.check"
    ),
    CommandFamily("lab", "the network-namespace lab: up, down, status, exec", "vm.lab.cli"),
    CommandFamily("bench", "benchmark direct vs meshed vs peer proxies", "bench.cli"),
    CommandFamily(
        "controller",
        "run and administer the controller (init, run, token, rotate-root)",
        "controller.cli",
    ),
    CommandFamily(
        "apply", "validate and apply resources from YAML, all-or-nothing", "controller.admin_cli"
    ),
    CommandFamily("get", "list or show resources", "controller.admin_cli"),
    CommandFamily("delete", "delete resources", "controller.admin_cli"),
    CommandFamily(
        "namespace", "enable or disable the mesh for a namespace", "controller.admin_cli"
    ),
    CommandFamily(
        "status", "controller health, connected agents, versions, NACKs", "controller.admin_cli"
    ),
    CommandFamily("agent", "run the node agent, dump its eBPF maps", "agent.cli"),
    CommandFamily("certs", "workload certificates held by an agent", "agent.cli"),
    CommandFamily("config-dump", "an agent's or waypoint's effective configuration", "agent.cli"),
    CommandFamily("waypoint", "run an L7 waypoint proxy", "waypoint.cli"),
    CommandFamily("stat", "per-service request rate, success rate and latency", "weft.stat"),
)


def _family(name: str) -> CommandFamily | None:
    return next((f for f in COMMAND_FAMILIES if f.name == name), None)


def build_top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="weft",
        description="Weft: an eBPF-accelerated, sidecarless service mesh.",
        epilog="commands:\n"
        + "\n".join(f"  {f.name:<12} {f.help}" for f in COMMAND_FAMILIES)
        + "\n\n"
        + EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"weft {__version__}")
    return parser


def build_family_parser(family: CommandFamily) -> argparse.ArgumentParser:
    """Import the family's module and let it add its arguments and subcommands."""
    parser = argparse.ArgumentParser(
        prog=f"weft {family.name}",
        description=family.help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    try:
        module = importlib.import_module(family.module)
    except ModuleNotFoundError as exc:
        if exc.name and family.module.startswith(exc.name):
            raise WeftError(
                f"'weft {family.name}' is not available in this build ({family.module} is missing)"
            ) from exc
        raise
    register = module.register
    register(parser, family.name)
    return parser


def print_json(data: Any) -> None:
    """Machine-readable output for `-o json`: one JSON document on stdout."""
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    top = build_top_parser()
    if not args_list or args_list[0] in ("-h", "--help", "--version"):
        top.parse_args(args_list or ["--help"])
        return ExitCode.OK
    family = _family(args_list[0])
    if family is None:
        top.print_usage(sys.stderr)
        print(f"weft: unknown command '{args_list[0]}'; see 'weft --help'", file=sys.stderr)
        return ExitCode.USAGE
    try:
        parser = build_family_parser(family)
        args = parser.parse_args(args_list[1:])
        handler: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
        if handler is None:
            parser.print_help(sys.stderr)
            return ExitCode.USAGE
        return int(handler(args))
    except WeftError as err:
        print(f"weft {family.name}: error: {err}", file=sys.stderr)
        return int(err.exit_code)
    except KeyboardInterrupt:
        print(f"weft {family.name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
