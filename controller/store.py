"""The controller's durable state: resources, their change log, join tokens, issued node certs.

SQLite in WAL mode with synchronous=FULL: an apply is one transaction, so a crash (even kill -9)
leaves all of it or none, and anything the controller acknowledged survives a restart. Every
change bumps one global revision; the change log keeps what each revision did.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weft.model import Kind, ResourceKey
from weft.resources import ParsedResource

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS resources (
    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    document TEXT NOT NULL, revision INTEGER NOT NULL,
    PRIMARY KEY (kind, namespace, name));
CREATE TABLE IF NOT EXISTS changes (
    revision INTEGER NOT NULL, kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    operation TEXT NOT NULL CHECK (operation IN ('apply', 'delete')), document TEXT,
    PRIMARY KEY (revision, kind, namespace, name));
CREATE TABLE IF NOT EXISTS join_tokens (
    token_id TEXT PRIMARY KEY, secret_sha256 TEXT NOT NULL, node TEXT NOT NULL,
    created_at REAL NOT NULL, expires_at REAL NOT NULL, used_at REAL);
CREATE TABLE IF NOT EXISTS node_certificates (
    node TEXT PRIMARY KEY, serial TEXT NOT NULL, not_after REAL NOT NULL, issued_at REAL NOT NULL);
"""

TOKEN_PREFIX = "weft-join"


@dataclass(frozen=True)
class StoredResource:
    key: ResourceKey
    document: dict[str, Any]
    revision: int  # the revision that last changed it


@dataclass(frozen=True)
class Change:
    """What one revision did to one resource; `document` is None for a delete."""

    revision: int
    key: ResourceKey
    document: dict[str, Any] | None


@dataclass(frozen=True)
class ApplyResult:
    revision: int
    created: tuple[ResourceKey, ...]
    configured: tuple[ResourceKey, ...]
    unchanged: tuple[ResourceKey, ...]


@dataclass(frozen=True)
class NodeCertificate:
    node: str
    serial: str
    not_after: float
    issued_at: float


class TokenRefusedError(Exception):
    """A join token that cannot be used; the message is the reason (for the audit log)."""


def _canonical(document: dict[str, Any]) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


class Store:
    """One SQLite database; safe to share between the gRPC worker threads."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT).
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            cursor = self._db.cursor()
            cursor.execute("BEGIN IMMEDIATE")
            try:
                yield cursor
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
            cursor.execute("COMMIT")

    def _read(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._db.execute(sql, args))

    @staticmethod
    def _revision(cursor: sqlite3.Cursor) -> int:
        row = cursor.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def _bump(cursor: sqlite3.Cursor) -> int:
        revision = Store._revision(cursor) + 1
        cursor.execute(
            "INSERT INTO meta (key, value) VALUES ('revision', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(revision),),
        )
        return revision

    def revision(self) -> int:
        rows = self._read("SELECT value FROM meta WHERE key = 'revision'")
        return int(rows[0][0]) if rows else 0

    # --- resources ----------------------------------------------------------------------------

    def apply(self, batch: Sequence[ParsedResource]) -> ApplyResult:
        """Store a validated batch in one transaction; identical documents do not bump anything."""
        created: list[ResourceKey] = []
        configured: list[ResourceKey] = []
        unchanged: list[ResourceKey] = []
        with self._transaction() as cur:
            revision = self._revision(cur)
            bumped = False
            for item in batch:
                key = item.key
                text = _canonical(dict(item.document))
                row = cur.execute(
                    "SELECT document FROM resources WHERE kind=? AND namespace=? AND name=?",
                    (key.kind.value, key.namespace, key.name),
                ).fetchone()
                if row is not None and row[0] == text:
                    unchanged.append(key)
                    continue
                if not bumped:
                    revision, bumped = self._bump(cur), True
                (created if row is None else configured).append(key)
                cur.execute(
                    "INSERT INTO resources (kind, namespace, name, document, revision) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (kind, namespace, name) "
                    "DO UPDATE SET document = excluded.document, revision = excluded.revision",
                    (key.kind.value, key.namespace, key.name, text, revision),
                )
                cur.execute(
                    "INSERT INTO changes VALUES (?, ?, ?, ?, 'apply', ?)",
                    (revision, key.kind.value, key.namespace, key.name, text),
                )
        return ApplyResult(revision, tuple(created), tuple(configured), tuple(unchanged))

    def delete(self, keys: Sequence[ResourceKey]) -> tuple[int, tuple[ResourceKey, ...]]:
        """Delete what exists of `keys` in one transaction; returns the revision and the deleted."""
        deleted: list[ResourceKey] = []
        with self._transaction() as cur:
            revision = self._revision(cur)
            for key in keys:
                gone = cur.execute(
                    "DELETE FROM resources WHERE kind=? AND namespace=? AND name=?",
                    (key.kind.value, key.namespace, key.name),
                ).rowcount
                if not gone:
                    continue
                if not deleted:
                    revision = self._bump(cur)
                deleted.append(key)
                cur.execute(
                    "INSERT INTO changes VALUES (?, ?, ?, ?, 'delete', NULL)",
                    (revision, key.kind.value, key.namespace, key.name),
                )
        return revision, tuple(deleted)

    def resources(
        self, kind: Kind | None = None, namespace: str | None = None, name: str | None = None
    ) -> list[StoredResource]:
        clauses, args = [], []
        for column, value in (
            ("kind", kind.value if kind else None),
            ("namespace", namespace),
            ("name", name),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._read(
            f"SELECT kind, namespace, name, document, revision FROM resources {where} "
            "ORDER BY kind, namespace, name",
            args,
        )
        return [
            StoredResource(ResourceKey(Kind(k), ns, n), json.loads(doc), rev)
            for k, ns, n, doc, rev in rows
        ]

    def changes(self, after_revision: int) -> list[Change]:
        rows = self._read(
            "SELECT revision, kind, namespace, name, document FROM changes WHERE revision > ? "
            "ORDER BY revision, kind, namespace, name",
            (after_revision,),
        )
        return [
            Change(rev, ResourceKey(Kind(k), ns, n), None if doc is None else json.loads(doc))
            for rev, k, ns, n, doc in rows
        ]

    # --- join tokens --------------------------------------------------------------------------

    def create_join_token(self, node: str, ttl_seconds: float, now: float) -> str:
        """A one-time token for `node`; only its SHA-256 is stored, so a DB leak reveals none."""
        token_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(24)
        digest = hashlib.sha256(secret.encode()).hexdigest()
        with self._transaction() as cur:
            cur.execute(
                "INSERT INTO join_tokens VALUES (?, ?, ?, ?, ?, NULL)",
                (token_id, digest, node, now, now + ttl_seconds),
            )
        return f"{TOKEN_PREFIX}.{token_id}.{secret}"

    def redeem_join_token(self, token: str, now: float) -> str:
        """Mark the token used and return its node; raises TokenRefusedError with the reason."""
        prefix, _, rest = token.partition(".")
        token_id, _, secret = rest.partition(".")
        if prefix != TOKEN_PREFIX or not token_id or not secret:
            raise TokenRefusedError("malformed join token")
        with self._transaction() as cur:
            row = cur.execute(
                "SELECT secret_sha256, node, expires_at, used_at FROM join_tokens WHERE token_id=?",
                (token_id,),
            ).fetchone()
            if row is None:
                raise TokenRefusedError(f"unknown join token {token_id}")
            digest, node, expires_at, used_at = row
            if not hmac.compare_digest(digest, hashlib.sha256(secret.encode()).hexdigest()):
                raise TokenRefusedError(f"wrong secret for join token {token_id}")
            if used_at is not None:
                raise TokenRefusedError(f"join token {token_id} was already used")
            if now >= expires_at:
                raise TokenRefusedError(f"join token {token_id} expired")
            cur.execute("UPDATE join_tokens SET used_at=? WHERE token_id=?", (now, token_id))
        return str(node)

    # --- issued node certificates -------------------------------------------------------------

    def record_node_certificate(self, cert: NodeCertificate) -> None:
        with self._transaction() as cur:
            cur.execute(
                "INSERT INTO node_certificates VALUES (?, ?, ?, ?) ON CONFLICT (node) DO UPDATE "
                "SET serial=excluded.serial, not_after=excluded.not_after, "
                "issued_at=excluded.issued_at",
                (cert.node, cert.serial, cert.not_after, cert.issued_at),
            )

    def node_certificates(self) -> list[NodeCertificate]:
        rows = self._read("SELECT node, serial, not_after, issued_at FROM node_certificates")
        return [NodeCertificate(*row) for row in sorted(rows)]
