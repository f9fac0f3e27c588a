"""The CA as the running controller sees it: reloaded when rotate-root rewrites the files."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address

from cryptography import x509

from controller.ca import CertificateAuthority
from controller.ca_files import CAFiles
from weft.pki import CONTROLLER_PATH, CONTROLLER_SERVER_NAME, certs_to_pem, key_to_pem

SERVER_CERT_LIFETIME = dt.timedelta(days=30)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class TrustProvider:
    """Thread-safe access to the signer, the trust bundle and the controller's own certificate."""

    def __init__(
        self,
        files: CAFiles,
        server_ips: tuple[IPv4Address | IPv6Address, ...] = (),
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self.files = files
        self.trust_domain = files.trust_domain
        self._clock = clock
        self._server_ips = server_ips
        self._lock = threading.Lock()
        self._stamp: tuple[float, ...] = ()
        self._ca: CertificateAuthority | None = None
        self._server_pair: tuple[bytes, bytes] = (b"", b"")
        self._server_issued = dt.datetime.min.replace(tzinfo=dt.UTC)
        self.generation = 0  # bumps on every reload; the TLS layer compares it
        self._reload_if_changed()

    def _reload_if_changed(self) -> CertificateAuthority:
        with self._lock:
            now = self._clock()
            previous = self.files.previous_signer(now)
            stamp = (*self.files.stamp(), previous is None)
            # The serving certificate is renewed at half life, like every leaf in the mesh.
            stale = now >= self._server_issued + SERVER_CERT_LIFETIME / 2
            if self._ca is None or stamp != self._stamp or stale:
                ca = self.files.load()
                # During a rotation overlap the serving certificate stays under the old root,
                # which every agent still trusts; after it, under the new one.
                serving = previous or ca
                chain, key = serving.issue_with_new_key(
                    f"spiffe://{ca.trust_domain}{CONTROLLER_PATH}",
                    SERVER_CERT_LIFETIME,
                    now,
                    dns_names=[CONTROLLER_SERVER_NAME, "localhost"],
                    ip_addresses=self._server_ips,
                )
                self._ca, self._stamp = ca, stamp
                self._server_pair = (key_to_pem(key), certs_to_pem(chain))
                self._server_issued = now
                self.generation += 1
            return self._ca

    def authority(self) -> CertificateAuthority:
        return self._reload_if_changed()

    def bundle(self) -> list[x509.Certificate]:
        self._reload_if_changed()
        return self.files.bundle(self._clock())

    def bundle_pem(self) -> bytes:
        return certs_to_pem(self.bundle())

    def server_pair(self) -> tuple[bytes, bytes]:
        """(private key PEM, certificate chain PEM) for the controller's TLS listeners."""
        self._reload_if_changed()
        return self._server_pair

    def now(self) -> dt.datetime:
        return self._clock()
