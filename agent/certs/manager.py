"""Workload SVIDs held in memory: one key per local identity, issued, renewed at half life.

The key never leaves this process (the controller sees a CSR); a renewal that fails is retried
with exponential backoff (0.5 s .. 150 s) while the old certificate keeps serving until it
expires. Every issuance also brings the trust bundle, which is how a root rotation reaches
the agent. TLS contexts are cached per identity and rebuilt when the SVID or bundle changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from cryptography import x509

from agent.certs.saved import SavedSvid
from weft.controller_client import Backoff, IssuedCertificate
from weft.identity import Identity
from weft.pki import PrivateKey, build_csr, certs_from_pem, generate_key, key_to_pem
from weft.tls import Svid, client_context, load_svid, load_trust_bundle, server_context

log = logging.getLogger(__name__)

Issue = Callable[[bytes], Awaitable[IssuedCertificate]]
Clock = Callable[[], dt.datetime]


DEFAULT_BACKOFF = Backoff()  # design.md: 0.5 s .. 150 s


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class CertState(StrEnum):
    PENDING = "pending"  # never issued yet
    VALID = "valid"
    RENEWING = "renewing"  # past half life, renewal failing; the old cert still serves
    EXPIRED = "expired"


def renewal_time(issued_at: dt.datetime, not_after: dt.datetime) -> dt.datetime:
    """Renew at half life, as Istio does: half the lifetime is left to retry in.

    Counted from when the agent received the certificate, not from notBefore, which CAs
    backdate for clock skew (a short-lived SVID would otherwise look due at once).
    """
    return issued_at + (not_after - issued_at) / 2


@dataclass
class HeldCertificate:
    """One identity's key and current SVID (None until the first issuance)."""

    identity: Identity
    key: PrivateKey
    chain_pem: bytes | None = None
    leaf: x509.Certificate | None = None
    issued_at: dt.datetime | None = None
    failures: int = 0
    last_error: str = ""
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    def state(self, now: dt.datetime) -> CertState:
        if self.leaf is None:
            return CertState.PENDING
        if now >= self.leaf.not_valid_after_utc:
            return CertState.EXPIRED
        if self.failures:
            return CertState.RENEWING
        return CertState.VALID

    def usable(self, now: dt.datetime) -> bool:
        return self.leaf is not None and self.state(now) != CertState.EXPIRED


class CertificateManager:
    """Issue and renew an SVID per local identity; hand out TLS contexts for them."""

    def __init__(
        self,
        issue: Issue,
        bundle_pem: bytes,
        *,
        clock: Clock = utc_now,
        backoff: Backoff = DEFAULT_BACKOFF,
        on_issued: Callable[[], None] | None = None,
    ) -> None:
        self._issue = issue
        self._on_issued = on_issued
        self.bundle_pem = bundle_pem
        self._clock = clock
        self._backoff = backoff
        self._held: dict[Identity, HeldCertificate] = {}
        self._contexts: dict[tuple[Identity, bool], tuple[bytes, bytes, ssl.SSLContext]] = {}
        self.changed = asyncio.Event()

    # --- the set of identities ------------------------------------------------------------

    def ensure(self, identities: Iterable[Identity]) -> None:
        """Hold exactly `identities`: start issuing new ones, drop (and forget) gone ones."""
        wanted = set(identities)
        for identity in list(self._held):
            if identity not in wanted:
                held = self._held.pop(identity)
                if held.task is not None:
                    held.task.cancel()
        for identity in sorted(wanted - set(self._held)):
            self._held[identity] = HeldCertificate(identity, generate_key())
        for held in self._held.values():
            if held.task is None:  # new, or restored from a saved file
                held.task = asyncio.get_running_loop().create_task(self._keep_renewed(held))

    def restore(self, identity: Identity, key: PrivateKey, chain_pem: bytes) -> None:
        """Hold a certificate saved by an earlier run (agent.certs.saved); call before ensure().

        It serves at once and is renewed at half its remaining lifetime, counted from now: the
        time of its issuance is not known, and the controller may be away.
        """
        certs = certs_from_pem(chain_pem)
        if not certs or identity in self._held:
            return
        self._held[identity] = HeldCertificate(identity, key, chain_pem, certs[0], self._clock())

    def export(self) -> list[SavedSvid]:
        """Every usable certificate with its key, for agent.certs.saved."""
        now = self._clock()
        return [
            SavedSvid(identity, held.key, held.chain_pem)
            for identity, held in sorted(self._held.items())
            if held.chain_pem is not None and held.usable(now)
        ]

    async def wait_issued(self, identity: Identity, timeout: float) -> bool:
        """Wait (bounded) until `identity` has a usable SVID."""
        try:
            async with asyncio.timeout(timeout):
                while not self.has(identity):
                    self.changed.clear()  # no await since has(): no update can be missed
                    await self.changed.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        tasks = [h.task for h in self._held.values() if h.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- using them -----------------------------------------------------------------------

    def has(self, identity: Identity) -> bool:
        held = self._held.get(identity)
        return held is not None and held.usable(self._clock())

    def svid(self, identity: Identity) -> Svid:
        """The identity's current SVID; LookupError when none is usable (fail closed)."""
        held = self._held.get(identity)
        if held is None or held.chain_pem is None or not held.usable(self._clock()):
            raise LookupError(f"no valid certificate for {identity}")
        return Svid(held.chain_pem, key_to_pem(held.key))

    def client_context(self, identity: Identity) -> ssl.SSLContext:
        return self._context(identity, server=False)

    def server_context(self, identity: Identity) -> ssl.SSLContext:
        return self._context(identity, server=True)

    def _context(self, identity: Identity, *, server: bool) -> ssl.SSLContext:
        svid = self.svid(identity)
        cached = self._contexts.get((identity, server))
        if cached is None:
            make = server_context if server else client_context
            context = make(svid, self.bundle_pem)
        else:
            context = cached[2]
            # A listener holds on to its context: renewal and rotation reload it in place, so
            # new handshakes get the new SVID and roots and open connections are left alone.
            if cached[1] != self.bundle_pem:
                load_trust_bundle(context, self.bundle_pem)
            if cached[0] != svid.chain_pem:
                load_svid(context, svid)
        self._contexts[(identity, server)] = (svid.chain_pem, self.bundle_pem, context)
        return context

    def _reload_contexts(self, renewed: Identity) -> None:
        """Load a renewed SVID (and new roots) into the contexts listeners already hold: the
        HBONE listener of a workload keeps its context for its lifetime, and would otherwise
        present the old certificate until it expired, then fail every handshake."""
        for identity, server in list(self._contexts):
            if identity == renewed or self._contexts[(identity, server)][1] != self.bundle_pem:
                with contextlib.suppress(LookupError):  # an expired one is not renewed here
                    self._context(identity, server=server)

    def report(self) -> list[dict[str, object]]:
        """What `weft certs` shows: one row per identity."""
        now = self._clock()
        rows: list[dict[str, object]] = []
        for identity, held in sorted(self._held.items()):
            leaf = held.leaf
            rows.append(
                {
                    "identity": identity.uri,
                    "kind": "workload",
                    "serial": f"{leaf.serial_number:x}" if leaf is not None else "",
                    "not_before": leaf.not_valid_before_utc.isoformat() if leaf else "",
                    "not_after": leaf.not_valid_after_utc.isoformat() if leaf else "",
                    "renew_at": renewal_time(held.issued_at, leaf.not_valid_after_utc).isoformat()
                    if leaf and held.issued_at
                    else "",
                    "state": held.state(now).value,
                    "last_error": held.last_error,
                }
            )
        return rows

    # --- renewal --------------------------------------------------------------------------

    async def _keep_renewed(self, held: HeldCertificate) -> None:
        delays = self._backoff.delays()
        if held.leaf is not None and held.issued_at is not None:  # restored: not due yet
            due = renewal_time(held.issued_at, held.leaf.not_valid_after_utc)
            await asyncio.sleep(max(0.0, (due - self._clock()).total_seconds()))
        while True:
            try:
                await self.renew_once(held)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # any failure: keep the old cert, retry later
                held.failures += 1
                held.last_error = str(err) or type(err).__name__
                log.warning(
                    "certificate for %s not renewed (attempt %d): %s",
                    held.identity,
                    held.failures,
                    held.last_error,
                )
                await asyncio.sleep(next(delays))
                continue
            delays = self._backoff.delays()
            assert held.leaf is not None
            assert held.issued_at is not None
            due = renewal_time(held.issued_at, held.leaf.not_valid_after_utc)
            await asyncio.sleep(max(0.0, (due - self._clock()).total_seconds()))

    async def renew_once(self, held: HeldCertificate) -> None:
        """One issuance for `held` (the same key: only the certificate is renewed)."""
        csr = build_csr(held.key, held.identity.uri)
        issued = await self._issue(csr)
        certs = certs_from_pem(issued.chain_pem)
        if not certs:
            raise ValueError("the controller returned an empty certificate chain")
        held.chain_pem = issued.chain_pem
        held.leaf = certs[0]
        held.issued_at = self._clock()
        held.failures = 0
        held.last_error = ""
        if issued.bundle_pem and issued.bundle_pem != self.bundle_pem:
            log.info(
                "trust bundle changed (root rotation): %d roots",
                len(certs_from_pem(issued.bundle_pem)),
            )
            self.bundle_pem = issued.bundle_pem
        log.info(
            "certificate for %s issued: serial %x, expires %s",
            held.identity,
            held.leaf.serial_number,
            held.leaf.not_valid_after_utc.isoformat(),
        )
        self._reload_contexts(held.identity)
        self.changed.set()
        if self._on_issued is not None:
            self._on_issued()
