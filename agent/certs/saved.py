"""Workload SVIDs and the trust bundle saved for a restart while the controller is away.

Keys are written only here: one 0600 file in the agent's 0700 state directory (the lab keeps it
under /run, a tmpfs on most systems), replaced atomically on every issuance, never logged.
Without this file an agent restarted with the controller down would have no certificate to
open or accept a tunnel with, and every meshed connection would fail (closed) until it returns.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from weft.identity import Identity
from weft.pki import PrivateKey, certs_from_pem, key_from_pem, key_to_pem
from weft.private_file import write_private

log = logging.getLogger(__name__)

FORMAT = 1


@dataclass(frozen=True)
class SavedSvid:
    identity: Identity
    key: PrivateKey
    chain_pem: bytes


def save_svids(path: Path, bundle_pem: bytes, svids: list[SavedSvid]) -> None:
    payload = {
        "format": FORMAT,
        "bundle": bundle_pem.decode(),
        "svids": [
            {
                "identity": s.identity.uri,
                "key": key_to_pem(s.key).decode(),
                "chain": s.chain_pem.decode(),
            }
            for s in svids
        ],
    }
    write_private(path, json.dumps(payload, sort_keys=True).encode())


def load_svids(path: Path, now: dt.datetime) -> tuple[bytes, list[SavedSvid]] | None:
    """(bundle, still-valid SVIDs) from `path`; None if there is no usable file (logged)."""
    try:
        payload = json.loads(path.read_bytes())
        if payload.get("format") != FORMAT:
            raise ValueError(f"format {payload.get('format')!r}, expected {FORMAT}")
        bundle = str(payload["bundle"]).encode()
        svids = []
        for entry in payload["svids"]:
            chain = str(entry["chain"]).encode()
            leaf = certs_from_pem(chain)[0]
            if leaf.not_valid_after_utc <= now:
                continue  # expired while the agent was down: ask for a new one
            identity = Identity.parse(str(entry["identity"]))
            svids.append(SavedSvid(identity, key_from_pem(str(entry["key"]).encode()), chain))
    except FileNotFoundError:
        return None
    except Exception as err:  # never include the content: it holds private keys
        log.warning("ignoring the saved certificates in %s: %s", path, type(err).__name__)
        return None
    return bundle, svids
