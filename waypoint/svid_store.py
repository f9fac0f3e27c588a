"""The waypoint's SVID kept across restarts: `<state-dir>/svid.pem` (chain + key) and
`bundle.pem`, root-only (0600 in a 0700 directory), replaced atomically.

A join token is one-time, so without this a restarted waypoint would need a new one; with it,
the waypoint starts from its saved SVID while that is still valid and renews it over mTLS as
usual (as a node agent keeps its node certificate). A saved SVID for another identity, or an
expired one, is ignored: the waypoint then joins with its token.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from waypoint.svid import WaypointSvid
from weft.identity import Identity
from weft.pki import CertificateError, certs_from_pem, key_from_pem, key_to_pem, uri_san
from weft.private_file import write_private

SVID_FILE = "svid.pem"
BUNDLE_FILE = "bundle.pem"
_KEY_BEGIN = b"-----BEGIN PRIVATE KEY-----"


def save(state_dir: Path, svid: WaypointSvid) -> None:
    write_private(state_dir / SVID_FILE, svid.chain_pem + key_to_pem(svid.key))
    write_private(state_dir / BUNDLE_FILE, svid.bundle_pem)


def load(state_dir: Path, identity: Identity, now: dt.datetime) -> WaypointSvid | None:
    """The saved SVID of `identity` if there is one and it is valid at `now`; else None."""
    try:
        text = (state_dir / SVID_FILE).read_bytes()
        bundle = (state_dir / BUNDLE_FILE).read_bytes()
    except FileNotFoundError:
        return None
    start = text.find(_KEY_BEGIN)
    if start < 0:
        return None
    chain_pem, key_pem = text[:start], text[start:]
    try:
        certs = certs_from_pem(chain_pem)
        if not certs or uri_san(certs[0]) != identity.uri:
            return None
        if not certs[0].not_valid_before_utc <= now < certs[0].not_valid_after_utc:
            return None
        key = key_from_pem(key_pem)
    except (CertificateError, ValueError):
        return None
    svid = WaypointSvid(identity, key, chain_pem, bundle)
    svid.issued_at = certs[0].not_valid_before_utc  # so half life is counted as issued
    return svid
