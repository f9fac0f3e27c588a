"""`weft controller init|run|token create|rotate-root`: set up, run and administer it."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from controller.ca_files import CAFiles
from controller.identity_service import IssuancePolicy
from controller.server import Controller, ControllerConfig
from controller.store import Store
from controller.waypoints import parse_reference, token_subject
from weft.controller_client import DEFAULT_STATE_DIR
from weft.identity import DEFAULT_TRUST_DOMAIN
from weft.pki import certs_to_pem
from weft.resources.fields import DNS_SUBDOMAIN, FieldError, parse_duration

EPILOG = """\
examples:
  weft controller init                              # a new CA (ECDSA P-256) and admin credential
  weft controller init --ca-cert ca.pem --ca-key ca.key   # sign with your own intermediate CA
  weft controller run --listen 10.0.0.1             # gRPC mTLS :15012, join :15013, http :15014
  weft controller token create --node n1 --ttl 30m  # a one-time join token for node n1
  weft controller token create --waypoint shop/waypoint   # ... for a waypoint's own SVID
  weft controller rotate-root --overlap 48h         # new root; old certificates verify for 48h
"""


def _duration(text: str) -> dt.timedelta:
    try:
        return dt.timedelta(seconds=parse_duration("duration", text))
    except FieldError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: expected {err.expected}") from None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _init(args: argparse.Namespace) -> int:
    files = CAFiles(args.state_dir)
    ca = files.init(args.trust_domain, _now(), args.ca_cert, args.ca_key)
    bundle = args.state_dir / "trust-bundle.pem"
    bundle.write_bytes(certs_to_pem(files.bundle(_now())))
    Store(args.state_dir / "store.db").close()
    print(f"controller state initialized in {args.state_dir} (trust domain {ca.trust_domain})")
    print(f"  signer:           {ca.cert.subject.rfc4514_string()}")
    print(f"  trust bundle:     {bundle}   (give this to agents)")
    print(f"  admin credential: {files.admin_pem}   (keep it secret; 'weft apply' uses it)")
    print(f"next: weft controller run --state-dir {args.state_dir}")
    return 0


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = ControllerConfig(
        state_dir=args.state_dir,
        listen=args.listen,
        grpc_port=args.grpc_port,
        join_port=args.join_port,
        http_port=args.http_port,
        policy=IssuancePolicy(svid_lifetime=args.svid_ttl, node_lifetime=args.node_cert_ttl),
        max_workers=args.max_workers,
    )
    controller = Controller(config)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    controller.start()
    print(
        f"weft controller: mTLS {args.listen}:{controller.grpc_port}, "
        f"join {args.listen}:{controller.join_port}, http {args.listen}:{controller.http_port}",
        flush=True,
    )
    stop.wait()
    controller.stop()
    return 0


def _token_create(args: argparse.Namespace) -> int:
    files = CAFiles(args.state_dir)
    trust_domain = files.trust_domain  # fails with a hint if init was not run
    if args.waypoint is not None:
        subject, what = token_subject(*args.waypoint), f"waypoint {'/'.join(args.waypoint)}"
    else:
        subject, what = args.node, f"node {args.node}"
    store = Store(args.state_dir / "store.db")
    try:
        token = store.create_join_token(subject, args.ttl.total_seconds(), _now().timestamp())
    finally:
        store.close()
    expires = (_now() + args.ttl).replace(microsecond=0).isoformat()
    if args.output == "json":
        key = "node" if args.waypoint is None else "waypoint"
        json.dump({key: what.split(" ", 1)[1], "token": token, "expires": expires}, sys.stdout)
        print()
    else:
        print(token)
        print(
            f"one-time join token for {what} in {trust_domain}, expires {expires}", file=sys.stderr
        )
    return 0


def _rotate_root(args: argparse.Namespace) -> int:
    files = CAFiles(args.state_dir)
    ca = files.rotate(args.overlap, _now(), args.ca_cert, args.ca_key)
    bundle = args.state_dir / "trust-bundle.pem"
    bundle.write_bytes(certs_to_pem(files.bundle(_now())))
    print(f"new signer: {ca.cert.subject.rfc4514_string()}")
    print(f"old roots stay trusted until {(_now() + args.overlap).replace(microsecond=0)}")
    print(f"trust bundle (old + new roots): {bundle}; admin credential renewed: {files.admin_pem}")
    print("a running controller picks up the new CA on its next certificate request")
    return 0


def _waypoint_reference(text: str) -> tuple[str, str]:
    try:
        namespace, name = parse_reference(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    for part in (namespace, name):
        if not DNS_SUBDOMAIN.match(part):
            raise argparse.ArgumentTypeError(f"{part!r} is not a lowercase DNS name")
    return namespace, name


def _node_name(text: str) -> str:
    if not DNS_SUBDOMAIN.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a lowercase DNS name")
    return text


def register(parser: argparse.ArgumentParser, name: str) -> None:
    del name
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help=f"controller state: CA, store, admin credential (default {DEFAULT_STATE_DIR})",
    )
    ca_files = argparse.ArgumentParser(add_help=False)
    ca_files.add_argument("--ca-cert", type=Path, help="operator CA: certificate chain up to root")
    ca_files.add_argument("--ca-key", type=Path, help="operator CA: private key (ECDSA P-256)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    init = sub.add_parser("init", parents=[common, ca_files], help="create the CA and credentials")
    init.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN)
    init.set_defaults(func=_init)

    run = sub.add_parser("run", parents=[common], help="serve gRPC (mTLS), join and HTTP")
    run.add_argument("--listen", default="0.0.0.0", help="address to listen on")
    run.add_argument("--grpc-port", type=int, default=15012, help="mTLS gRPC (0: any)")
    run.add_argument("--join-port", type=int, default=15013, help="node join, TLS (0: any)")
    run.add_argument("--http-port", type=int, default=15014, help="/metrics, /healthz")
    run.add_argument(
        "--svid-ttl", type=_duration, default=dt.timedelta(hours=24), help="workload cert lifetime"
    )
    run.add_argument(
        "--node-cert-ttl", type=_duration, default=dt.timedelta(hours=24), help="node cert lifetime"
    )
    run.add_argument(
        "--max-workers",
        type=int,
        default=ControllerConfig.max_workers,
        help="gRPC worker threads; each connected agent's discovery stream holds one",
    )
    run.set_defaults(func=_run)

    token = sub.add_parser("token", help="join tokens for nodes and waypoints")
    token_sub = token.add_subparsers(dest="token_command", metavar="COMMAND")
    create = token_sub.add_parser("create", parents=[common], help="print a one-time join token")
    subject = create.add_mutually_exclusive_group(required=True)
    subject.add_argument("--node", type=_node_name, help="for a node agent")
    subject.add_argument(
        "--waypoint",
        type=_waypoint_reference,
        metavar="NAMESPACE/NAME",
        help="for a waypoint: buys that Waypoint's own SVID, once",
    )
    create.add_argument("--ttl", type=_duration, default=dt.timedelta(hours=1))
    create.add_argument("-o", "--output", choices=["text", "json"], default="text")
    create.set_defaults(func=_token_create)

    rotate = sub.add_parser(
        "rotate-root", parents=[common, ca_files], help="replace the root, overlapping the old"
    )
    rotate.add_argument("--overlap", type=_duration, required=True, help="e.g. 24h")
    rotate.set_defaults(func=_rotate_root)
