"""`weft waypoint`: run an L7 waypoint from resource files, or print what it would enforce."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import signal
import ssl
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any, get_args

import grpc
import grpc.aio

from waypoint.admin import AdminServer
from waypoint.compiler import CompiledWaypoint, CompileError, compile_resources
from waypoint.config import RouteFilter, WaypointConfig
from waypoint.discovery_client import ControllerOptions, DiscoveryFeed, NoCredentialError, join
from waypoint.inbound import HboneInbound
from waypoint.proxy import WaypointProxy
from waypoint.svid import WaypointSvid
from waypoint.telemetry import FLUSH_POLICY, RequestRecord, access_log_line
from waypoint.workers import Supervisor, default_workers, reserve_port, serve_control
from weft.access_log import BufferedLog
from weft.errors import UnavailableError, UsageError, WeftError
from weft.identity import DEFAULT_TRUST_DOMAIN
from weft.resources import parse_documents, read_documents
from weft.tls import Svid, server_context

FILTER_TYPES = get_args(RouteFilter)
EXAMPLES = """\
examples:
  weft waypoint compile -f shop.yaml --name waypoint           # what the waypoint would enforce
  weft waypoint run -f shop.yaml --name waypoint --listen 127.0.0.1:15080 \\
      --endpoint reviews-v1.default:9080=127.0.0.1:8081       # override a backend's endpoints
  curl -H 'Host: reviews' http://127.0.0.1:15080/reviews/1      # then send it requests
  curl http://127.0.0.1:15020/metrics                           # istio_requests_total & co.
  weft waypoint run -f shop.yaml --name waypoint --hbone 0.0.0.0:15008 \
      --cert svid.pem --key svid-key.pem --trust-bundle bundle.pem  # mTLS tunnels in
  weft controller token create --waypoint shop/waypoint > wp.token   # in the mesh: a token,
  weft waypoint run --name waypoint --namespace shop --controller 10.77.0.2:15012 \
      --join-token wp.token --trust-bundle bundle.pem --hbone 0.0.0.0:15008 --listen off
      # its own SVID from the token, configuration from the controller, renewed at half life
"""


def register(parser: argparse.ArgumentParser, name: str) -> None:
    parser.epilog = EXAMPLES
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")

    def common(verb: argparse.ArgumentParser, required: bool = True) -> None:
        verb.add_argument(
            "-f", "--filename", action="append", required=required, metavar="PATH",
            help="resource YAML files or directories (repeat for several); '-' for stdin",
        )  # fmt: skip
        verb.add_argument("--name", default="waypoint", help="the Waypoint resource to run")
        verb.add_argument("--namespace", default="default", help="its namespace")
        verb.add_argument(
            "--endpoint", action="append", default=[], metavar="BACKEND=IP:PORT",
            help="endpoints of a backend (name.namespace:port), instead of its selected workloads",
        )  # fmt: skip

    run = verbs.add_parser(
        "run", help="serve HTTP/1.1 and HTTP/2 (gRPC) on --listen and/or --hbone"
    )
    common(run, required=False)
    run.add_argument(
        "--controller", metavar="HOST:PORT",
        help="take configuration and an SVID from the controller (mTLS gRPC, 15012), not -f",
    )  # fmt: skip
    run.add_argument(
        "--join-token", metavar="FILE",
        help="with --controller: the one-time token of 'weft controller token create --waypoint'",
    )  # fmt: skip
    run.add_argument(
        "--state-dir", metavar="DIR",
        help="with --controller: keep the SVID here (0600) so a restart needs no new token",
    )  # fmt: skip
    run.add_argument(
        "--join-address", metavar="HOST:PORT",
        help="with --controller: its join listener (default: the controller's host, port 15013)",
    )  # fmt: skip
    run.add_argument(
        "--service-account", default="waypoint",
        help="with --controller: the Waypoint's serviceAccount (its SPIFFE ID's sa/)",
    )  # fmt: skip
    run.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN)
    run.add_argument(
        "--listen", default="127.0.0.1:15080", metavar="IP:PORT",
        help="plain-TCP listener (HTTP/1.1, or HTTP/2 with prior knowledge); 'off' to disable",
    )  # fmt: skip
    run.add_argument(
        "--hbone", default="off", metavar="IP:PORT",
        help="HBONE (mTLS CONNECT) listener, e.g. 0.0.0.0:15008; needs --cert/--key/--trust-bundle",
    )  # fmt: skip
    run.add_argument("--cert", help="the waypoint's SVID certificate chain (PEM)")
    run.add_argument("--key", help="the SVID's private key (PEM)")
    run.add_argument(
        "--trust-bundle", help="the mesh's trust bundle (PEM), also to verify the controller"
    )
    run.add_argument(
        "--admin", default="127.0.0.1:15020", metavar="IP:PORT",
        help="metrics and readiness endpoint; 'off' to disable",
    )  # fmt: skip
    run.add_argument(
        "--max-seconds", type=float, default=None,
        help="stop by itself after this long (for scripts and tests)",
    )  # fmt: skip
    run.add_argument(
        "--request-headers-timeout", type=float, default=10.0, metavar="SECONDS",
        help="a request head must arrive within this once it started, else 408 (slowloris)",
    )  # fmt: skip
    run.add_argument("--quiet", action="store_true", help="no access log on stdout")
    run.add_argument(
        "--workers", type=_worker_count, default=None, metavar="N",
        help="processes sharing --listen with SO_REUSEPORT, one event loop each (default: one "
        "per CPU with -f, as haproxy runs a thread per CPU; 1 with --controller or --hbone)",
    )  # fmt: skip
    run.add_argument("--worker-control-fd", type=int, default=None, help=argparse.SUPPRESS)
    run.set_defaults(func=_run)

    show = verbs.add_parser("compile", help="print the compiled configuration and endpoints")
    common(show)
    show.add_argument("-o", "--output", choices=("json",), default="json")
    show.set_defaults(func=_compile)


def _worker_count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a number of processes >= 1, got {text!r}")
    return int(text)


def _address(text: str, flag: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":")
    if not colon or not port.isdigit() or not 0 <= int(port) < 65536:
        raise UsageError(
            f"{flag}: expected IP:PORT, got {text!r}", hint=f"e.g. {flag} 127.0.0.1:15080"
        )
    return host.strip("[]") or "127.0.0.1", int(port)


def parse_endpoint_overrides(values: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """`reviews-v1.default:9080=127.0.0.1:8081,127.0.0.1:8082` -> {backend: endpoints}."""
    overrides: dict[str, tuple[str, ...]] = {}
    for value in values:
        backend, equals, addresses = value.partition("=")
        if not equals or backend.count(":") != 1 or not addresses:
            raise UsageError(
                f"--endpoint: expected NAME.NAMESPACE:PORT=IP:PORT[,IP:PORT], got {value!r}",
                hint="e.g. --endpoint reviews-v1.default:9080=127.0.0.1:8081",
            )
        endpoints = tuple(a.strip() for a in addresses.split(","))
        for endpoint in endpoints:
            _address(endpoint, "--endpoint")
        overrides[backend] = overrides.get(backend, ()) + endpoints
    return overrides


def load(args: argparse.Namespace) -> CompiledWaypoint:
    """Read, validate and compile; every failure names the file or resource to fix."""
    parsed = parse_documents(read_documents(args.filename, stdin=sys.stdin))
    try:
        compiled = compile_resources([p.resource for p in parsed], args.name, args.namespace)
    except CompileError as error:
        raise UsageError(
            f"{', '.join(args.filename)}: {error}",
            hint="fix the resource named above and run the command again; nothing was started",
        ) from None
    overrides = parse_endpoint_overrides(args.endpoint)
    return CompiledWaypoint(compiled.config, {**compiled.endpoints, **overrides})


def _plain(value: object) -> Any:
    """Dataclasses to JSON-ready values, leaving out compiled regexes and networks."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        plain = {
            f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init
        }
        if isinstance(value, FILTER_TYPES):
            plain["type"] = type(value).__name__  # as Gateway API's filter `type` says
        return plain
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (tuple, list, frozenset, set)):
        items = [_plain(v) for v in value]
        return sorted(items, key=str) if isinstance(value, (frozenset, set)) else items
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _compile(args: argparse.Namespace) -> int:
    compiled = load(args)
    document = {"config": _plain(compiled.config), "endpoints": _plain(compiled.endpoints)}
    json.dump(document, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0


@dataclass(frozen=True)
class _ServeOptions:
    listen: tuple[str, int] | None
    admin: tuple[str, int] | None
    hbone: tuple[str, int] | None
    tls: ssl.SSLContext | None
    max_seconds: float | None
    quiet: bool
    request_headers_timeout_s: float = 10.0
    worker_control_fd: int | None = None  # set in a worker process started by --workers


def _read(path: str, flag: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise UsageError(
            f"{flag} {path}: {error.strerror}", hint=f"check the path given to {flag}"
        ) from None


def _hbone_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    if args.hbone == "off":
        return None
    missing = [flag for flag, value in (("--cert", args.cert), ("--key", args.key),
               ("--trust-bundle", args.trust_bundle)) if not value]  # fmt: skip
    if missing:
        raise UsageError(
            "--hbone needs the waypoint's SVID and the mesh trust bundle: "
            f"{', '.join(missing)} missing",
            hint="pass --cert, --key and --trust-bundle, or --hbone off for plain TCP only",
        )
    svid = Svid(chain_pem=_read(args.cert, "--cert"), key_pem=_read(args.key, "--key"))
    try:
        return server_context(svid, _read(args.trust_bundle, "--trust-bundle"))
    except WeftError as error:
        raise UsageError(str(error), hint="check --cert, --key and --trust-bundle") from None


def _controller_options(args: argparse.Namespace) -> ControllerOptions:
    if args.filename:
        raise UsageError(
            "-f and --controller both say where the configuration comes from",
            hint="pass one of them: files for a standalone waypoint, --controller in a mesh",
        )
    missing = [flag for flag, value in (("--join-token", args.join_token or args.state_dir),
               ("--trust-bundle", args.trust_bundle)) if not value]  # fmt: skip
    if missing:
        raise UsageError(
            f"--controller needs {', '.join(missing)}",
            hint="create a token with 'weft controller token create --waypoint NS/NAME'",
        )
    if args.cert or args.key:
        raise UsageError(
            "--cert/--key are for a standalone waypoint: with --controller it gets its own SVID",
            hint="drop --cert and --key",
        )
    host, port = _address(args.controller, "--controller")
    join_address = args.join_address or f"{host}:15013"
    _address(join_address, "--join-address")
    token = ""
    if args.join_token:
        token = _read(args.join_token, "--join-token").decode().strip()
        if not token:
            raise UsageError(f"--join-token {args.join_token}: the file is empty")
    return ControllerOptions(
        controller=f"{host}:{port}",
        join_address=join_address,
        token=token,
        bundle_pem=_read(args.trust_bundle, "--trust-bundle"),
        name=args.name,
        namespace=args.namespace,
        service_account=args.service_account,
        trust_domain=args.trust_domain,
        state_dir=Path(args.state_dir) if args.state_dir else None,
    )


def _run(args: argparse.Namespace) -> int:
    controller = _controller_options(args) if args.controller else None
    if controller is None and not args.filename:
        raise UsageError(
            "nothing to serve: no -f files and no --controller",
            hint="pass -f shop.yaml, or --controller HOST:15012 with --join-token",
        )
    compiled = load(args) if controller is None else None
    options = _ServeOptions(
        listen=None if args.listen == "off" else _address(args.listen, "--listen"),
        admin=None if args.admin == "off" else _address(args.admin, "--admin"),
        hbone=None if args.hbone == "off" else _address(args.hbone, "--hbone"),
        tls=_hbone_tls(args) if controller is None else None,
        max_seconds=args.max_seconds,
        quiet=args.quiet,
        request_headers_timeout_s=args.request_headers_timeout,
        worker_control_fd=args.worker_control_fd,
    )
    workers = _workers(args, controller is not None)
    try:
        import uvloop  # the event loop the data path is measured with (design.md §9)

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    if controller is not None:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        return int(runner(_serve_from_controller(controller, options)))
    assert compiled is not None
    if workers > 1:
        return int(asyncio.run(_supervise(args, options, workers)))
    return int(runner(_serve(compiled, options)))


def _workers(args: argparse.Namespace, controller: bool) -> int:
    """How many processes serve: --workers, else one per CPU where workers can share the work
    (a static configuration on the plain listener), else one."""
    if args.worker_control_fd is not None:
        return 1  # this is a worker
    reasons = [
        reason
        for reason, applies in (
            ("--controller (each worker would need its own discovery stream)", controller),
            ("--hbone (the HBONE listener runs in one process)", args.hbone != "off"),
            ("-f - (stdin can be read only once)", "-" in (args.filename or ())),
            ("--listen off (workers share the plain listener)", args.listen == "off"),
        )
        if applies
    ]
    if args.workers is None:
        return 1 if reasons else default_workers()
    if args.workers > 1 and reasons:
        raise UsageError(
            f"--workers {args.workers} cannot be used with {reasons[0]}",
            hint="drop --workers (one process) or serve the plain listener from files",
        )
    return int(args.workers)


def _worker_argv(args: argparse.Namespace, listen: tuple[str, int]) -> list[str]:
    """The command line of one worker: this waypoint, one process, no admin endpoint."""
    argv = [sys.executable, "-m", "weft.cli", "waypoint", "run"]
    for path in args.filename:
        argv += ["-f", path]
    argv += ["--name", args.name, "--namespace", args.namespace]
    for endpoint in args.endpoint:
        argv += ["--endpoint", endpoint]
    host = f"[{listen[0]}]" if ":" in listen[0] else listen[0]
    argv += ["--listen", f"{host}:{listen[1]}", "--admin", "off", "--workers", "1"]
    argv += ["--request-headers-timeout", str(args.request_headers_timeout)]
    return [*argv, "--quiet"] if args.quiet else argv


async def _supervise(args: argparse.Namespace, options: _ServeOptions, count: int) -> int:
    """The parent of `count` worker processes (workers.py): admin endpoint, restarts, stop."""
    assert options.listen is not None
    try:
        reserved = reserve_port(*options.listen)
    except OSError as error:
        raise UsageError(
            f"--listen {options.listen[0]}:{options.listen[1]}: {error.strerror}",
            hint="pick a free port, or stop what listens there",
        ) from None
    listen = reserved.getsockname()[:2]
    supervisor = Supervisor(_worker_argv(args, listen), count)
    admin = supervisor.admin()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        if options.admin is not None:
            host, port = await admin.start(*options.admin)
            print(f"waypoint: metrics on http://{host}:{port}/metrics", file=sys.stderr)
        try:
            await supervisor.start()
        except RuntimeError as error:
            raise UnavailableError(str(error), hint="see the worker's message above") from None
        pids = ", ".join(str(worker.pid) for worker in supervisor.workers)
        print(
            f"waypoint: {count} workers (pids {pids}) serving on {listen[0]}:{listen[1]}",
            file=sys.stderr,
            flush=True,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), options.max_seconds)
    finally:
        codes = await supervisor.stop()
        await admin.close()
        reserved.close()
    failed = [code for code in codes if code not in (0, None)]
    if failed:
        print(f"waypoint: workers stopped with codes {codes}", file=sys.stderr)
    return 0


async def _serve_from_controller(controller: ControllerOptions, options: _ServeOptions) -> int:
    try:
        svid = await join(controller)
    except NoCredentialError as error:
        raise UsageError(
            f"waypoint {controller.namespace}/{controller.name}: {error}",
            hint="pass --join-token from 'weft controller token create --waypoint NS/NAME'",
        ) from None
    except grpc.aio.AioRpcError as error:
        raise UnavailableError(
            f"joining at {controller.join_address} as waypoint "
            f"{controller.namespace}/{controller.name}: {error.details() or error.code().name}",
            hint="is the token fresh and unused, and is the Waypoint resource applied?",
        ) from None
    print(f"waypoint: serving as {svid.identity}", file=sys.stderr)
    empty = CompiledWaypoint(WaypointConfig(services=()), {})
    return await _serve(empty, replace(options, tls=svid.server_context()), controller, svid)


async def _serve(
    compiled: CompiledWaypoint,
    options: _ServeOptions,
    controller: ControllerOptions | None = None,
    svid: WaypointSvid | None = None,
) -> int:
    access_log = BufferedLog(sys.stdout, FLUSH_POLICY)  # a write per half second, not per request

    def log(record: RequestRecord) -> None:
        if not options.quiet:
            access_log.write(access_log_line(record))

    proxy = WaypointProxy(
        compiled.config,
        compiled.endpoints,
        access_log=log,
        access_log_buffer=None if options.quiet else access_log,
        request_headers_timeout_s=options.request_headers_timeout_s,
        reuse_port=options.worker_control_fd is not None,
    )
    feed = None
    if controller is not None and svid is not None:
        feed = DiscoveryFeed(controller, svid, proxy)
        proxy.connect = feed.connect
        proxy.fast_dial = feed.fast_dial
    inbound = HboneInbound(proxy, options.tls) if options.tls is not None else None
    listening = False
    admin = AdminServer(
        proxy.metrics,
        ready=lambda: listening and (feed is None or feed.applied_version > 0),
        dump=None if feed is None else feed.dump,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    services = ", ".join(f"{s.hostname}:{s.port}" for s in compiled.config.services)
    following: asyncio.Task[None] | None = None
    control: asyncio.Task[None] | None = None
    try:
        if options.admin is not None:
            host, port = await admin.start(*options.admin)
            print(f"waypoint: metrics on http://{host}:{port}/metrics", file=sys.stderr)
        if options.listen is not None:
            try:
                host, port = await proxy.start(*options.listen)
            except OSError as error:
                raise UsageError(
                    f"--listen {options.listen[0]}:{options.listen[1]}: {error.strerror}",
                    hint="pick a free port, or stop what listens there",
                ) from None
            print(
                f"waypoint: serving {services or 'no services'} on {host}:{port}", file=sys.stderr
            )
        if inbound is not None and options.hbone is not None:
            await inbound.start(*options.hbone)  # raises HboneError (a WeftError) if taken
            print(f"waypoint: HBONE (mTLS) on {options.hbone[0]}:{inbound.port}", file=sys.stderr)
        listening = True
        if options.worker_control_fd is not None:
            fd = options.worker_control_fd
            control = loop.create_task(serve_control(fd, proxy.metrics, stop))
        if feed is not None:
            following = asyncio.get_running_loop().create_task(feed.run(stop))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), options.max_seconds)
    finally:
        stop.set()
        if following is not None:
            await asyncio.gather(following, return_exceptions=True)
        if inbound is not None:
            await inbound.close()
        await proxy.close()
        if feed is not None:
            await feed.close()
        await admin.close()
        if control is not None:
            control.cancel()
        access_log.flush()
    return 0
