"""TLS contexts for HBONE (TLS 1.3, mutual auth, ALPN h2) and the peer's SPIFFE identity."""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from weft.errors import UnavailableError, WeftError
from weft.identity import Identity, InvalidIdentityError

ALPN_HBONE = "h2"


class TlsMaterialError(WeftError):
    """The SVID, its key or the trust bundle cannot be loaded; nothing was started."""


class PeerIdentityError(WeftError):
    """The peer's certificate does not carry exactly one valid SPIFFE ID; the tunnel is refused."""


@dataclass(frozen=True, repr=False)
class Svid:
    """A workload's X.509 SVID: its certificate chain (leaf first) and private key, as PEM bytes.

    repr is off so that a key never reaches a log line by accident.
    """

    chain_pem: bytes
    key_pem: bytes

    def __repr__(self) -> str:
        return f"Svid(chain={len(self.chain_pem)} bytes, key=<redacted>)"


def server_context(svid: Svid, trust_bundle_pem: bytes) -> ssl.SSLContext:
    """An SSLContext for the HBONE listener: it requires a client SVID from the trust bundle."""
    context = _base_context(ssl.PROTOCOL_TLS_SERVER, svid, trust_bundle_pem)
    # Clients of a pooled tunnel keep their connection open; resumption tickets would only cost
    # the server two extra records per handshake.
    context.num_tickets = 0
    return context


def client_context(svid: Svid, trust_bundle_pem: bytes) -> ssl.SSLContext:
    """An SSLContext for opening HBONE tunnels as the workload that owns `svid`."""
    return _base_context(ssl.PROTOCOL_TLS_CLIENT, svid, trust_bundle_pem)


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> Identity:
    """The SPIFFE ID in the peer certificate's only URI SAN; PeerIdentityError otherwise."""
    certificate = ssl_object.getpeercert()
    if not certificate:
        raise _no_certificate()
    alternative_names = certificate.get("subjectAltName", ())
    uris = [str(entry[1]) for entry in alternative_names if len(entry) == 2 and entry[0] == "URI"]
    return _identity_from_uris(uris)


def peer_identity_der(certificate_der: bytes | None) -> Identity:
    """peer_identity() for a verified peer certificate given as DER (weft._native's sessions)."""
    if not certificate_der:
        raise _no_certificate()
    try:
        certificate = x509.load_der_x509_certificate(certificate_der)
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        uris: list[str] = names.value.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    except ValueError as error:
        raise PeerIdentityError(
            f"the peer certificate cannot be parsed: {error}",
            hint="re-issue the peer's SVID from the mesh CA",
        ) from error
    return _identity_from_uris(uris)


def _no_certificate() -> PeerIdentityError:
    return PeerIdentityError(
        "the peer presented no verified certificate",
        hint="HBONE needs mutual TLS: check that the peer sends its workload SVID",
    )


def _identity_from_uris(uris: list[str]) -> Identity:
    if len(uris) != 1:
        raise PeerIdentityError(
            f"the peer certificate has {len(uris)} URI SANs {uris!r}; an SVID has exactly one",
            hint="re-issue the peer's SVID from the mesh CA",
        )
    try:
        return Identity.parse(str(uris[0]))
    except InvalidIdentityError as error:
        raise PeerIdentityError(
            f"the peer certificate's URI SAN is not a SPIFFE ID: {error}",
            hint="re-issue the peer's SVID from the mesh CA",
        ) from error


class _DirectSSLObject(ssl.SSLObject):
    """An SSLObject whose read, write and pending are the C object's methods themselves.

    uvloop's and asyncio's TLS transports call them for every record (pending twice a read);
    ssl.SSLObject's are Python functions that only forward to the C object, a frame each.
    """

    @classmethod
    def _create(cls, *args: Any, **kwargs: Any) -> _DirectSSLObject:
        self: _DirectSSLObject = super()._create(*args, **kwargs)  # type: ignore[misc]
        c_object = self._sslobj  # type: ignore[attr-defined]
        self.read = c_object.read  # type: ignore[method-assign]
        self.write = c_object.write  # type: ignore[method-assign]
        self.pending = c_object.pending  # type: ignore[method-assign]
        return self


def _base_context(protocol: int, svid: Svid, trust_bundle_pem: bytes) -> ssl.SSLContext:
    context = ssl.SSLContext(protocol)
    context.sslobject_class = _DirectSSLObject
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    # SVIDs name workloads, not hosts: the SPIFFE ID is checked after the handshake instead.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols([ALPN_HBONE])
    load_trust_bundle(context, trust_bundle_pem)
    load_svid(context, svid)
    return context


def load_trust_bundle(context: ssl.SSLContext, trust_bundle_pem: bytes) -> None:
    """Trust `trust_bundle_pem` in `context`; also used to pick up a root rotation in place."""
    try:
        # A bundle holds every root of the trust domain (more than one during a root rotation).
        context.load_verify_locations(cadata=trust_bundle_pem.decode("ascii"))
    except (ssl.SSLError, ValueError, UnicodeDecodeError) as error:
        raise TlsMaterialError(
            f"the mesh trust bundle is not a list of PEM certificates: {error}",
            hint="fetch the trust bundle from the controller again",
        ) from error


def load_svid(context: ssl.SSLContext, svid: Svid) -> None:
    """Present `svid` from `context`; also used to swap in a renewed SVID in place."""
    with _memory_file(svid.chain_pem + b"\n" + svid.key_pem) as path:
        try:
            context.load_cert_chain(path)
        except ssl.SSLError as error:
            raise TlsMaterialError(
                f"the workload SVID and its key cannot be loaded together: {error.reason}",
                hint="the certificate must be PEM, leaf first, and match the private key; "
                "request a new SVID",
            ) from error


@contextlib.contextmanager
def _memory_file(content: bytes) -> Iterator[str]:
    """A path to `content` that never touches a disk: ssl can only load a key from a path."""
    try:
        descriptor = os.memfd_create("weft-svid", os.MFD_CLOEXEC)
    except OSError as error:  # pragma: no cover - every kernel we support has memfd
        raise UnavailableError(
            f"memfd_create failed ({error}); the SVID key would have to be written to disk",
            hint="run on Linux >= 3.17",
        ) from error
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(descriptor, view) :]
        yield f"/proc/self/fd/{descriptor}"
    finally:
        os.close(descriptor)
