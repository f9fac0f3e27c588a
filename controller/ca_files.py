"""The CA on disk: signer, trust bundle with overlapping roots, and the credentials made from them.

Layout under the state dir:  ca/ (0700), ca/signer.pem (signer cert + chain), ca/signer.key (0600),
ca/bundle.json (roots with the time each old root leaves the bundle), admin.pem (the admin
credential: cert chain + key, 0600). `weft controller rotate-root` rewrites these files; a running
controller notices the change on its next issuance or TLS handshake.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from controller.ca import CertificateAuthority, create_root
from weft.errors import ConfigError, ConflictError, UnavailableError
from weft.pki import (
    CertificateError,
    admin_uri,
    cert_to_pem,
    certs_from_pem,
    certs_to_pem,
    key_from_pem,
    key_to_pem,
)
from weft.private_file import write_private

ADMIN_LIFETIME = dt.timedelta(days=365)


@dataclass(frozen=True)
class BundleRoot:
    cert: x509.Certificate
    drop_after: dt.datetime | None  # None: the current root, kept until rotated out


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class CAFiles:
    """Reads and writes the CA files of one state dir."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.signer_pem = state_dir / "ca" / "signer.pem"
        self.signer_key = state_dir / "ca" / "signer.key"
        self.bundle_json = state_dir / "ca" / "bundle.json"
        self.previous_pem = state_dir / "ca" / "previous.pem"
        self.previous_key = state_dir / "ca" / "previous.key"
        self.previous_json = state_dir / "ca" / "previous.json"
        self.config_json = state_dir / "controller.json"
        self.admin_pem = state_dir / "admin.pem"

    def exists(self) -> bool:
        return self.signer_pem.exists() and self.signer_key.exists() and self.bundle_json.exists()

    def stamp(self) -> tuple[float, ...]:
        """Changes whenever rotate-root rewrites the CA (mtime_ns of each file)."""
        return tuple(
            p.stat().st_mtime_ns if p.exists() else 0.0
            for p in (self.signer_pem, self.signer_key, self.bundle_json, self.previous_json)
        )

    @property
    def trust_domain(self) -> str:
        try:
            return str(json.loads(self.config_json.read_text())["trust_domain"])
        except (OSError, ValueError, KeyError) as err:
            raise UnavailableError(
                f"{self.config_json}: controller state is missing or unreadable ({err})",
                hint=f"run 'weft controller init --state-dir {self.state_dir}' first",
            ) from err

    # --- init and rotation ---------------------------------------------------------------------

    def init(
        self,
        trust_domain: str,
        now: dt.datetime,
        ca_cert: Path | None = None,
        ca_key: Path | None = None,
    ) -> CertificateAuthority:
        if self.exists():
            raise ConflictError(
                f"{self.state_dir} already holds a controller CA",
                hint="use 'weft controller rotate-root' to replace the root, "
                "or choose another --state-dir",
            )
        self.config_json.parent.mkdir(parents=True, exist_ok=True)
        _write_public(self.config_json, json.dumps({"trust_domain": trust_domain}).encode())
        ca, roots = self._new_signer(trust_domain, now, ca_cert, ca_key)
        self._save(ca, [BundleRoot(r, None) for r in roots])
        self.write_admin_credential(ca, now)
        return ca

    def rotate(
        self,
        overlap: dt.timedelta,
        now: dt.datetime,
        ca_cert: Path | None = None,
        ca_key: Path | None = None,
    ) -> CertificateAuthority:
        """Install a new signer; old roots stay trusted until now + overlap, then leave."""
        old = [
            BundleRoot(r.cert, now + overlap if r.drop_after is None else r.drop_after)
            for r in self.bundle_roots(now)
        ]
        ca, roots = self._new_signer(self.trust_domain, now, ca_cert, ca_key)
        # Keep the outgoing signer for the overlap: the controller's own serving certificate
        # stays under the old root until every agent has had time to learn the new bundle.
        previous = self.load()
        write_private(self.previous_key, key_to_pem(previous.key))
        _write_public(self.previous_pem, certs_to_pem([previous.cert, *previous.chain]))
        _write_public(
            self.previous_json, json.dumps({"drop_after": (now + overlap).isoformat()}).encode()
        )
        self._save(ca, [BundleRoot(r, None) for r in roots] + old)
        self.write_admin_credential(ca, now)
        return ca

    def _new_signer(
        self, trust_domain: str, now: dt.datetime, ca_cert: Path | None, ca_key: Path | None
    ) -> tuple[CertificateAuthority, list[x509.Certificate]]:
        if (ca_cert is None) != (ca_key is None):
            raise ConfigError("--ca-cert/--ca-key", "--ca-key", "both files or neither")
        if ca_cert is None or ca_key is None:
            root, key = create_root(trust_domain, now)
            return CertificateAuthority(trust_domain, root, key), [root]
        try:
            certs = certs_from_pem(ca_cert.read_bytes())
            key = key_from_pem(ca_key.read_bytes())
        except (OSError, CertificateError, ValueError) as err:
            raise ConfigError(
                str(ca_cert), "(file)", "a PEM CA certificate chain and key", str(err)
            ) from err
        # The file holds the intermediate first, then its issuers; the last self-signed one is the
        # root that goes into the trust bundle.
        roots = [c for c in certs if c.issuer == c.subject]
        if not roots:
            raise ConfigError(str(ca_cert), "(chain)", "the chain up to and including its root CA")
        signer, chain = certs[0], tuple(c for c in certs[1:] if c.issuer != c.subject)
        ca = CertificateAuthority(trust_domain, signer, key, chain)
        try:
            ca.check(roots, now)
        except CertificateError as err:
            raise ConfigError(
                str(ca_cert), "(chain)", "a CA certificate chaining to its root", str(err)
            ) from err
        return ca, roots

    def _save(self, ca: CertificateAuthority, roots: list[BundleRoot]) -> None:
        write_private(self.signer_key, key_to_pem(ca.key))
        _write_public(self.signer_pem, certs_to_pem([ca.cert, *ca.chain]))
        entries = [
            {
                "pem": cert_to_pem(r.cert).decode(),
                "drop_after": r.drop_after.isoformat() if r.drop_after else None,
            }
            for r in roots
        ]
        _write_public(self.bundle_json, json.dumps(entries, indent=2).encode())

    def write_admin_credential(self, ca: CertificateAuthority, now: dt.datetime) -> Path:
        """One file for the CLI: the admin cert chain, its key, and the roots to trust."""
        chain, key = ca.issue_with_new_key(admin_uri(ca.trust_domain), ADMIN_LIFETIME, now)
        roots = certs_to_pem(self.bundle(now))
        write_private(self.admin_pem, certs_to_pem(chain) + key_to_pem(key) + roots)
        return self.admin_pem

    # --- loading -------------------------------------------------------------------------------

    def load(self) -> CertificateAuthority:
        if not self.exists():
            raise UnavailableError(
                f"no controller CA in {self.state_dir}",
                hint=f"run 'weft controller init --state-dir {self.state_dir}' first",
            )
        certs = certs_from_pem(self.signer_pem.read_bytes())
        key = key_from_pem(self.signer_key.read_bytes())
        return CertificateAuthority(self.trust_domain, certs[0], key, tuple(certs[1:]))

    def previous_signer(self, now: dt.datetime) -> CertificateAuthority | None:
        """The signer replaced by the last rotation, while its overlap lasts."""
        try:
            drop_after = dt.datetime.fromisoformat(
                json.loads(self.previous_json.read_text())["drop_after"]
            )
            if now >= drop_after:
                return None
            certs = certs_from_pem(self.previous_pem.read_bytes())
            key = key_from_pem(self.previous_key.read_bytes())
        except (OSError, ValueError, KeyError, CertificateError):
            return None
        return CertificateAuthority(self.trust_domain, certs[0], key, tuple(certs[1:]))

    def bundle_roots(self, now: dt.datetime) -> list[BundleRoot]:
        """The roots agents must trust at `now`: old ones are dropped once their overlap ended."""
        entries = json.loads(self.bundle_json.read_text())
        roots = []
        for entry in entries:
            drop_after = (
                dt.datetime.fromisoformat(entry["drop_after"]) if entry["drop_after"] else None
            )
            if drop_after is not None and now >= drop_after:
                continue
            roots.append(BundleRoot(certs_from_pem(entry["pem"].encode())[0], drop_after))
        return roots

    def bundle(self, now: dt.datetime) -> list[x509.Certificate]:
        return [r.cert for r in self.bundle_roots(now)]
