"""Workload certificates saved for a restart while the controller is away."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

from agent.certs.manager import CertificateManager
from agent.certs.saved import SavedSvid, load_svids, save_svids
from tests.unit.agent.issuer import InProcessIssuer, now
from weft.controller_client import Backoff
from weft.identity import Identity
from weft.pki import build_csr, certs_from_pem, certs_to_pem, generate_key, parse_csr

CATALOG = Identity.parse("spiffe://cluster.local/ns/shop/sa/catalog")
FRONTEND = Identity.parse("spiffe://cluster.local/ns/shop/sa/frontend")
FAST = Backoff(initial=0.05, maximum=0.2)


def signed(issuer: InProcessIssuer, identity: Identity, lifetime: dt.timedelta) -> SavedSvid:
    key = generate_key()
    request = parse_csr(build_csr(key, identity.uri))
    chain = issuer.ca.issue(request.public_key, request.uri, lifetime, now())
    return SavedSvid(identity, key, certs_to_pem(chain))


def test_saved_svids_load_back_without_the_expired_ones(tmp_path: Path) -> None:
    issuer = InProcessIssuer(dt.timedelta(hours=1))
    path = tmp_path / "svids.json"
    good = signed(issuer, CATALOG, dt.timedelta(hours=1))
    expired = signed(issuer, FRONTEND, dt.timedelta(seconds=-1))
    save_svids(path, issuer.bundle, [good, expired])
    assert path.stat().st_mode & 0o777 == 0o600
    loaded = load_svids(path, now())
    assert loaded is not None
    bundle, svids = loaded
    assert bundle == issuer.bundle
    assert [s.identity for s in svids] == [CATALOG]
    assert svids[0].chain_pem == good.chain_pem
    assert svids[0].key.private_numbers() == good.key.private_numbers()


def test_a_corrupt_file_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "svids.json"
    path.write_text('{"format": 1, "bundle": "x", "svids": [{"chain": "garbage"}]}')
    assert load_svids(path, now()) is None
    assert load_svids(tmp_path / "missing.json", now()) is None


def test_a_restored_certificate_serves_at_once_and_is_renewed_later() -> None:
    async def scenario() -> None:
        issuer = InProcessIssuer(dt.timedelta(seconds=2))
        saved = signed(issuer, CATALOG, dt.timedelta(seconds=2))
        issued: list[int] = []
        manager = CertificateManager(
            issuer, issuer.bundle, backoff=FAST, on_issued=lambda: issued.append(1)
        )
        manager.restore(CATALOG, saved.key, saved.chain_pem)
        manager.ensure([CATALOG])
        assert manager.has(CATALOG)  # no issuance needed: the controller may be away
        assert issuer.calls == 0
        assert manager.export()[0].chain_pem == saved.chain_pem
        await asyncio.sleep(1.5)  # half of its remaining ~2 s
        assert issuer.calls >= 1
        assert issued
        renewed = manager.export()[0].chain_pem
        assert certs_from_pem(renewed)[0].serial_number != (
            certs_from_pem(saved.chain_pem)[0].serial_number
        )
        await manager.close()

    asyncio.run(asyncio.wait_for(scenario(), 20))
