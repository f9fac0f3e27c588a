"""The last good config, saved on every applied version so a restart serves it at once.

Static stability (design.md §7): an agent restarted while the controller is away starts from
this file, as if the controller had sent it as a snapshot, and the controller's next snapshot
replaces it. The file holds resource documents only (no secrets); it is written atomically, so a
crash mid-write leaves the previous version, never half of one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from weft.api.convert import ConfigUpdate, ReceivedResource
from weft.model import ResourceKey
from weft.private_file import write_private
from weft.resources.documents import parse_stored

log = logging.getLogger(__name__)

FORMAT = 1


class SavedConfigError(ValueError):
    """The saved config cannot be used; the agent starts without it and waits for the controller."""


class LastGoodConfig:
    """The documents of the node's current config, kept in step with every applied update."""

    def __init__(self, path: Path, node: str) -> None:
        self.path = path
        self.node = node
        self.version = 0
        self.documents: dict[ResourceKey, Mapping[str, Any]] = {}

    def record(self, update: ConfigUpdate) -> None:
        """Follow an update the agent applied (call only after it was accepted) and save."""
        if update.snapshot:
            self.documents = {}
        for key in update.removals:
            self.documents.pop(key, None)
        for received in update.upserts:
            self.documents[received.parsed.key] = received.parsed.document
        self.version = update.version
        payload = {
            "format": FORMAT,
            "node": self.node,
            "version": self.version,
            "documents": [self.documents[k] for k in sorted(self.documents)],
        }
        write_private(self.path, json.dumps(payload, sort_keys=True).encode())

    def load(self) -> ConfigUpdate | None:
        """The saved config as a snapshot update; None when there is none.

        SavedConfigError when the file is unusable (another node's, another format, or a
        document that no longer validates): the caller logs it and waits for the controller.
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            payload = json.loads(raw)
            if payload.get("format") != FORMAT:
                raise SavedConfigError(f"format {payload.get('format')!r}, expected {FORMAT}")
            if payload.get("node") != self.node:
                raise SavedConfigError(f"saved for node {payload.get('node')!r}")
            version = int(payload["version"])
            upserts = tuple(ReceivedResource(parse_stored(d), 0) for d in payload["documents"])
        except SavedConfigError as err:
            raise SavedConfigError(f"{self.path}: {err}") from None
        except Exception as err:  # malformed JSON or a document that does not validate
            raise SavedConfigError(f"{self.path}: not a usable saved config: {err}") from err
        self.version = version
        self.documents = {r.parsed.key: r.parsed.document for r in upserts}
        return ConfigUpdate(version=version, snapshot=True, upserts=upserts, removals=())
