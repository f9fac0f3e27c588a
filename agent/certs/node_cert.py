"""The node's own certificate (its mTLS identity towards the controller), renewed at half life.

Renewal asks the controller's IdentityService for a certificate for a new key (a node CSR, which
only the node's current certificate may send); on failure it retries with exponential backoff
(0.5 s .. 150 s) and keeps using the current certificate, which stays valid until it expires.
Each renewed certificate is saved (the caller's `save`) so a restart does not need a new token.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable

from agent.certs.manager import DEFAULT_BACKOFF, Clock, renewal_time, utc_now
from weft.controller_client import Backoff, Credentials, NodeIdentity
from weft.pki import certs_from_pem, uri_san

log = logging.getLogger(__name__)

Renew = Callable[[NodeIdentity], Awaitable[NodeIdentity]]


class NodeCertificate:
    """Holds the node identity in use and keeps it renewed."""

    def __init__(
        self,
        identity: NodeIdentity,
        renew: Renew,
        save: Callable[[NodeIdentity], None],
        *,
        clock: Clock = utc_now,
        backoff: Backoff = DEFAULT_BACKOFF,
    ) -> None:
        self.identity = identity
        self._renew = renew
        self._save = save
        self._clock = clock
        self._backoff = backoff
        self.received_at = clock()  # when this process got it: renewal counts from here
        self.failures = 0
        self.last_error = ""

    @property
    def not_after(self) -> dt.datetime:
        return certs_from_pem(self.identity.chain_pem)[0].not_valid_after_utc

    @property
    def serial(self) -> str:
        return f"{certs_from_pem(self.identity.chain_pem)[0].serial_number:x}"

    def credentials(self) -> Credentials:
        return self.identity.credentials()

    def renew_at(self) -> dt.datetime:
        return renewal_time(self.received_at, self.not_after)

    def report(self) -> dict[str, object]:
        now = self._clock()
        state = "expired" if now >= self.not_after else "renewing" if self.failures else "valid"
        leaf = certs_from_pem(self.identity.chain_pem)[0]
        return {
            "identity": uri_san(leaf),
            "kind": "node",
            "serial": self.serial,
            "not_before": leaf.not_valid_before_utc.isoformat(),
            "not_after": self.not_after.isoformat(),
            "renew_at": self.renew_at().isoformat(),
            "state": state,
            "last_error": self.last_error,
        }

    async def keep_renewed(self) -> None:
        """Renew at half life forever (cancel to stop); failures back off and keep the old one."""
        delays = self._backoff.delays()
        while True:
            await asyncio.sleep(max(0.0, (self.renew_at() - self._clock()).total_seconds()))
            while True:
                try:
                    renewed = await self._renew(self.identity)
                    self._save(renewed)
                except asyncio.CancelledError:
                    raise
                except Exception as err:  # keep the current certificate while it is valid
                    self.failures += 1
                    self.last_error = str(err) or type(err).__name__
                    log.warning(
                        "node certificate not renewed (attempt %d, current one valid until %s):"
                        " %s",
                        self.failures, self.not_after.isoformat(), self.last_error,
                    )  # fmt: skip
                    await asyncio.sleep(next(delays))
                    continue
                break
            self.identity = renewed
            self.received_at = self._clock()
            self.failures, self.last_error = 0, ""
            delays = self._backoff.delays()
            log.info(
                "node certificate renewed: serial %s, expires %s",
                self.serial, self.not_after.isoformat(),
            )  # fmt: skip
