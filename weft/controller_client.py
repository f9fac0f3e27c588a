"""A client of the controller's gRPC services, for agents (asyncio) and the CLI (blocking).

Lives in weft/ so the agent can use it without importing the controller. Credentials are PEM:
a certificate chain, its private key and the trust bundle; the controller's certificate is
verified against the bundle under the fixed name `weft-controller`, whatever address is dialled.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio

from weft.api.convert import ConfigUpdate, ack_request, subscribe_request, update_from_proto
from weft.api.v1 import discovery_pb2, discovery_pb2_grpc, identity_pb2, identity_pb2_grpc
from weft.errors import UnavailableError, UsageError
from weft.pki import (
    CONTROLLER_SERVER_NAME,
    PrivateKey,
    build_csr,
    certs_from_pem,
    certs_to_pem,
    generate_key,
    key_to_pem,
    node_uri,
)

ADMIN_CREDENTIAL_ENV = "WEFT_ADMIN_CREDENTIAL"
CONTROLLER_ENV = "WEFT_CONTROLLER"
DEFAULT_CONTROLLER = "127.0.0.1:15012"
DEFAULT_STATE_DIR = Path("/var/lib/weft/controller")  # the controller's; admin.pem is in it
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.ssl_target_name_override", CONTROLLER_SERVER_NAME),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


@dataclass(frozen=True)
class Credentials:
    """A client identity (chain + key, both optional for joining) and the roots it trusts."""

    bundle_pem: bytes
    chain_pem: bytes | None = None
    key_pem: bytes | None = None

    @classmethod
    def from_file(cls, path: Path) -> Credentials:
        """Read a combined PEM file: certificates, one private key, the self-signed roots."""
        try:
            text = path.read_bytes()
        except OSError as err:
            raise UsageError(
                f"cannot read the credential file {path}: {err.strerror}",
                hint="run 'weft controller init' (it writes admin.pem in the state dir), "
                f"or pass --admin-credential / set {ADMIN_CREDENTIAL_ENV}",
            ) from err
        certs = certs_from_pem(text)
        start = text.find(b"-----BEGIN PRIVATE KEY-----")
        end = text.find(b"-----END PRIVATE KEY-----")
        if start < 0 or end < 0:
            raise UsageError(f"{path}: no private key in the credential file")
        key_pem = text[start : end + len(b"-----END PRIVATE KEY-----")] + b"\n"
        roots = [c for c in certs if c.issuer == c.subject]
        chain = [c for c in certs if c.issuer != c.subject]
        if not chain or not roots:
            raise UsageError(f"{path}: expected a certificate chain and the trust bundle roots")
        return cls(certs_to_pem(roots), certs_to_pem(chain), key_pem)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.bundle_pem, self.key_pem, self.chain_pem)


def admin_credential_path(explicit: str | None, state_dir: Path) -> Path:
    """--admin-credential, else $WEFT_ADMIN_CREDENTIAL, else <state-dir>/admin.pem."""
    return Path(explicit or os.environ.get(ADMIN_CREDENTIAL_ENV) or state_dir / "admin.pem")


def add_admin_flags(parser: argparse.ArgumentParser) -> None:
    """--controller and --admin-credential for a command that calls the controller as its admin
    (`args.controller`; `admin_credential_path(args.admin_credential, args.state_dir)`)."""
    parser.add_argument(
        "--controller",
        default=os.environ.get(CONTROLLER_ENV, DEFAULT_CONTROLLER),
        help=f"controller gRPC address (default ${CONTROLLER_ENV} or {DEFAULT_CONTROLLER})",
    )
    parser.add_argument(
        "--admin-credential",
        help=f"admin credential PEM (default ${ADMIN_CREDENTIAL_ENV} or STATE_DIR/admin.pem)",
    )
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help=argparse.SUPPRESS)


def unavailable(address: str, err: grpc.RpcError) -> UnavailableError:
    """An operator-facing error for a failed call, with what to check next."""
    code = err.code() if isinstance(err, grpc.Call) else None
    details = err.details() if isinstance(err, grpc.Call) else str(err)
    return UnavailableError(
        f"controller at {address}: {details or code}",
        hint="is the controller running ('weft controller run') and is the port reachable? "
        "a TLS failure means the credential's trust bundle does not match the controller's CA",
    )


@dataclass(frozen=True)
class NodeIdentity:
    """What joining gives a node: its key (generated locally), certificate chain and bundle."""

    node: str
    key: PrivateKey
    chain_pem: bytes
    bundle_pem: bytes

    def credentials(self) -> Credentials:
        return Credentials(self.bundle_pem, self.chain_pem, key_to_pem(self.key))


async def join_node(
    join_address: str,
    token: str,
    node: str,
    *,
    trust_domain: str,
    bundle_pem: bytes,
    timeout: float = 10,
) -> NodeIdentity:
    """Exchange a one-time join token and a CSR for node `node`'s certificate."""
    return await join_as(
        join_address, token, node_uri(trust_domain, node), bundle_pem=bundle_pem, timeout=timeout
    )


async def join_as(
    join_address: str, token: str, uri: str, *, bundle_pem: bytes, timeout: float = 10
) -> NodeIdentity:
    """Redeem a one-time join token with a CSR for `uri`: a node's, or a waypoint's own SVID
    (its token is from `weft controller token create --waypoint NS/NAME`)."""
    key = generate_key()
    csr = build_csr(key, uri)
    async with grpc.aio.secure_channel(
        join_address, grpc.ssl_channel_credentials(bundle_pem), options=CHANNEL_OPTIONS
    ) as channel:
        stub = identity_pb2_grpc.IdentityServiceStub(channel)
        reply = await stub.JoinNode(
            identity_pb2.JoinNodeRequest(token=token, csr_pem=csr.decode()), timeout=timeout
        )
    bundle = "".join(reply.trust_bundle.root_pem).encode()
    return NodeIdentity(reply.node, key, "".join(reply.cert_chain_pem).encode(), bundle)


async def renew_node(
    address: str, identity: NodeIdentity, *, trust_domain: str, timeout: float = 10
) -> NodeIdentity:
    """A new certificate for a new key of node `identity.node`, authenticated by its current one."""
    key = generate_key()
    csr = build_csr(key, node_uri(trust_domain, identity.node))
    async with ControllerClient(address, identity.credentials()) as client:
        issued = await client.create_certificate(csr, timeout=timeout)
    if not certs_from_pem(issued.chain_pem):
        raise ValueError("the controller returned an empty certificate chain")
    bundle = issued.bundle_pem or identity.bundle_pem
    return NodeIdentity(identity.node, key, issued.chain_pem, bundle)


@dataclass(frozen=True)
class IssuedCertificate:
    chain_pem: bytes  # leaf first
    bundle_pem: bytes


class DiscoveryStream:
    """One Watch stream: iterate for updates; ack or nack each version after applying it."""

    def __init__(
        self,
        call: grpc.aio.StreamStreamCall[discovery_pb2.WatchRequest, discovery_pb2.WatchUpdate],
        requests: asyncio.Queue[object],
    ) -> None:
        self._call = call
        self._requests = requests

    def __aiter__(self) -> AsyncIterator[ConfigUpdate]:
        return self._updates()

    async def _updates(self) -> AsyncIterator[ConfigUpdate]:
        async for message in self._call:
            assert isinstance(message, discovery_pb2.WatchUpdate)
            yield update_from_proto(message)

    async def ack(self, version: int) -> None:
        await self._requests.put(ack_request(version))

    async def nack(self, version: int, error: str) -> None:
        await self._requests.put(ack_request(version, error or "rejected"))

    def cancel(self) -> None:
        self._call.cancel()


class ControllerClient:
    """The node-side client of IdentityService and DiscoveryService over mTLS."""

    def __init__(self, address: str, credentials: Credentials) -> None:
        self.address = address
        self._channel = grpc.aio.secure_channel(
            address, credentials.channel_credentials(), options=CHANNEL_OPTIONS
        )
        self._identity = identity_pb2_grpc.IdentityServiceStub(self._channel)
        self._discovery = discovery_pb2_grpc.DiscoveryServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> ControllerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def create_certificate(
        self, csr_pem: bytes, validity_seconds: int = 0, timeout: float = 10
    ) -> IssuedCertificate:
        reply = await self._identity.CreateCertificate(
            identity_pb2.CreateCertificateRequest(
                csr_pem=csr_pem.decode(), validity_seconds=validity_seconds
            ),
            timeout=timeout,
        )
        return IssuedCertificate(
            "".join(reply.cert_chain_pem).encode(), "".join(reply.trust_bundle.root_pem).encode()
        )

    async def trust_bundle(self, timeout: float = 10) -> bytes:
        reply = await self._identity.GetTrustBundle(
            identity_pb2.GetTrustBundleRequest(), timeout=timeout
        )
        return "".join(reply.root_pem).encode()

    def watch(self, node: str, waypoint: str = "") -> DiscoveryStream:
        requests: asyncio.Queue[object] = asyncio.Queue()
        requests.put_nowait(subscribe_request(node, waypoint))

        async def outgoing() -> AsyncIterator[discovery_pb2.WatchRequest]:
            while True:
                item = await requests.get()
                assert isinstance(item, discovery_pb2.WatchRequest)
                yield item

        call = self._discovery.Watch(outgoing())
        return DiscoveryStream(call, requests)


@dataclass(frozen=True)
class Backoff:
    """Exponential reconnect delays (design.md: 0.5 s .. 150 s)."""

    initial: float = 0.5
    maximum: float = 150.0
    factor: float = 2.0

    def delays(self) -> Iterator[float]:
        delay = self.initial
        while True:
            yield delay
            delay = min(self.maximum, delay * self.factor)


ApplyUpdate = Callable[[ConfigUpdate], Awaitable[str | None]]


async def follow_discovery(
    address: str,
    credentials: Callable[[], Credentials],
    node: str,
    apply: ApplyUpdate,
    stop: asyncio.Event,
    *,
    backoff: Backoff = Backoff(),
    on_disconnect: Callable[[str], None] | None = None,
    waypoint: str = "",
) -> None:
    """Keep node `node`'s configuration flowing until `stop` is set.

    `apply(update)` returns None when the update is in force (ACK) or why it was refused (NACK);
    after a NACK the agent keeps running its last good configuration. When the stream breaks,
    the agent keeps what it has (static stability) and reconnects with backoff; the controller
    then starts again from a snapshot. `credentials` is called on every connect, so a renewed
    node certificate is picked up. A waypoint passes `waypoint` ("namespace/name").
    """
    delays = backoff.delays()
    while not stop.is_set():
        reason = "stream ended"
        try:
            async with ControllerClient(address, credentials()) as client:
                stream = client.watch(node, waypoint)
                reader = asyncio.ensure_future(_apply_all(stream, apply))
                stopper = asyncio.ensure_future(stop.wait())
                done, _ = await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
                stopper.cancel()
                if reader not in done:
                    stream.cancel()
                    reader.cancel()
                    return
                delivered, reason = reader.result()
                if delivered:  # the controller was reachable: start backing off afresh
                    delays = backoff.delays()
        except grpc.aio.AioRpcError as err:
            reason = f"{err.code().name}: {err.details()}"
        if on_disconnect is not None:
            on_disconnect(reason)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), next(delays))


async def _apply_all(stream: DiscoveryStream, apply: ApplyUpdate) -> tuple[bool, str]:
    """Apply updates until the stream ends: (whether any arrived, why it ended)."""
    delivered = False
    try:
        async for update in stream:
            delivered = True
            error = await apply(update)
            if error is None:
                await stream.ack(update.version)
            else:
                await stream.nack(update.version, error)
    except grpc.aio.AioRpcError as err:
        return delivered, f"{err.code().name}: {err.details()}"
    return delivered, "stream ended"
