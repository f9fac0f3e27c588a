"""The waypoint's own SVID: obtained once with a join token, renewed at half life, hot-reloaded.

The key is generated here and never leaves the process (the controller sees CSRs only). The
TLS contexts handed to the HBONE listener and the tunnel pool are built once and reloaded in
place on renewal (and on a trust-bundle change), so new handshakes present the new certificate
and open tunnels are left alone. A failed renewal is retried with backoff while the old
certificate serves until it expires.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import ssl
from collections.abc import Awaitable, Callable

from cryptography import x509

from weft.controller_client import Backoff, Credentials, IssuedCertificate
from weft.identity import Identity
from weft.pki import PrivateKey, build_csr, certs_from_pem, key_to_pem
from weft.tls import Svid, client_context, load_svid, load_trust_bundle, server_context

log = logging.getLogger(__name__)

Issue = Callable[[bytes], Awaitable[IssuedCertificate]]
Clock = Callable[[], dt.datetime]
DEFAULT_BACKOFF = Backoff()  # design.md: 0.5 s .. 150 s


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class WaypointSvid:
    """One identity's key, current certificate chain and trust bundle, and TLS contexts."""

    def __init__(
        self,
        identity: Identity,
        key: PrivateKey,
        chain_pem: bytes,
        bundle_pem: bytes,
        clock: Clock = utc_now,
    ) -> None:
        self.identity = identity
        self.key = key
        self._clock = clock
        self.chain_pem = chain_pem
        self.bundle_pem = bundle_pem
        self.issued_at = clock()
        self.renewals = 0
        self.last_error = ""
        self.on_renewed: Callable[[WaypointSvid], None] | None = None  # e.g. save it
        self._server: ssl.SSLContext | None = None
        self._client: ssl.SSLContext | None = None
        self._check(chain_pem)

    def _check(self, chain_pem: bytes) -> x509.Certificate:
        certs = certs_from_pem(chain_pem)
        if not certs:
            raise ValueError("the controller returned an empty certificate chain")
        return certs[0]

    @property
    def leaf(self) -> x509.Certificate:
        return self._check(self.chain_pem)

    def svid(self) -> Svid:
        return Svid(self.chain_pem, key_to_pem(self.key))

    def credentials(self) -> Credentials:
        """The waypoint's credential towards the controller (renewal, discovery)."""
        return Credentials(self.bundle_pem, self.chain_pem, key_to_pem(self.key))

    def server_context(self) -> ssl.SSLContext:
        if self._server is None:
            self._server = server_context(self.svid(), self.bundle_pem)
        return self._server

    def client_context(self, source: Identity) -> ssl.SSLContext:
        if source != self.identity:
            raise LookupError(f"this waypoint holds no certificate for {source}")
        if self._client is None:
            self._client = client_context(self.svid(), self.bundle_pem)
        return self._client

    def renew_at(self) -> dt.datetime:
        """Half life, counted from when it arrived (CAs backdate notBefore for clock skew)."""
        return self.issued_at + (self.leaf.not_valid_after_utc - self.issued_at) / 2

    def install(self, issued: IssuedCertificate) -> None:
        """Swap in a renewed chain (and a changed bundle) in place, contexts included."""
        leaf = self._check(issued.chain_pem)
        self.chain_pem = issued.chain_pem
        self.issued_at = self._clock()
        if issued.bundle_pem and issued.bundle_pem != self.bundle_pem:
            self.bundle_pem = issued.bundle_pem
            for context in (self._server, self._client):
                if context is not None:
                    load_trust_bundle(context, self.bundle_pem)
        for context in (self._server, self._client):
            if context is not None:
                load_svid(context, self.svid())
        self.renewals += 1
        if self.on_renewed is not None:
            self.on_renewed(self)
        log.info(
            "certificate for %s renewed: serial %x, expires %s",
            self.identity,
            leaf.serial_number,
            leaf.not_valid_after_utc.isoformat(),
        )

    async def keep_renewed(self, issue: Issue, backoff: Backoff = DEFAULT_BACKOFF) -> None:
        """Renew at half life forever (cancel to stop); failures back off, the old cert serves."""
        delays = backoff.delays()
        while True:
            await asyncio.sleep(max(0.0, (self.renew_at() - self._clock()).total_seconds()))
            try:
                self.install(await issue(build_csr(self.key, self.identity.uri)))
            except asyncio.CancelledError:
                raise
            except Exception as err:  # any failure: keep serving the old one, retry later
                self.last_error = str(err) or type(err).__name__
                log.warning("certificate for %s not renewed: %s", self.identity, self.last_error)
                await asyncio.sleep(next(delays))
                continue
            self.last_error = ""
            delays = backoff.delays()

    def report(self) -> dict[str, object]:
        """What the admin endpoint shows about the certificate."""
        leaf = self.leaf
        return {
            "identity": self.identity.uri,
            "serial": f"{leaf.serial_number:x}",
            "not_after": leaf.not_valid_after_utc.isoformat(),
            "renew_at": self.renew_at().isoformat(),
            "renewals": self.renewals,
            "last_error": self.last_error,
        }
