"""The registry's SQLite file: schema, migrations and transactions. No domain rules here."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ensign.daemon.errors import Conflict, StoreError

SCHEMA_VERSION = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    spiffe_id TEXT NOT NULL,
    selectors TEXT NOT NULL,
    x509_ttl INTEGER NOT NULL DEFAULT 0,
    jwt_ttl INTEGER NOT NULL DEFAULT 0,
    dns_names TEXT NOT NULL DEFAULT '[]',
    hint TEXT NOT NULL DEFAULT '',
    owner TEXT NOT NULL DEFAULT '',
    purpose TEXT NOT NULL DEFAULT '',
    capabilities TEXT NOT NULL DEFAULT '[]',
    roles TEXT NOT NULL DEFAULT '[]',
    metadata TEXT NOT NULL DEFAULT '{}',
    state TEXT NOT NULL DEFAULT 'active',
    expires_at INTEGER NOT NULL DEFAULT 0,
    created_by INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    revision INTEGER NOT NULL DEFAULT 1
);
CREATE UNIQUE INDEX IF NOT EXISTS entries_live_name ON entries(name)
    WHERE state != 'decommissioned';
CREATE TABLE IF NOT EXISTS retired_ids (id TEXT PRIMARY KEY, retired_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS state_history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    entry_id TEXT NOT NULL,
    at INTEGER NOT NULL,
    from_state TEXT NOT NULL,
    to_state TEXT NOT NULL,
    reason TEXT NOT NULL,
    actor TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS state_history_entry ON state_history(entry_id);
CREATE TABLE IF NOT EXISTS grants (
    id TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    issuer TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    scopes TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL DEFAULT 0,
    revoked_at INTEGER NOT NULL DEFAULT 0,
    created_by TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS grants_agent ON grants(agent_id);
CREATE TABLE IF NOT EXISTS roles (
    name TEXT PRIMARY KEY,
    audiences TEXT NOT NULL,
    scopes TEXT NOT NULL DEFAULT '[]',
    max_ttl INTEGER NOT NULL DEFAULT 0,
    may_act_for_users INTEGER NOT NULL DEFAULT 0,
    may_redelegate INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    revision INTEGER NOT NULL DEFAULT 1
);
"""

Statement = tuple[str, tuple[Any, ...]]


class Store:
    """One SQLite connection in WAL mode, used from the event loop thread only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self.path.chmod(0o600)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open registry {self.path}: {e}") from None
        self._db = db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self._db is None:
            raise StoreError("registry is closed")
        try:
            return list(self._db.execute(sql, args))
        except sqlite3.Error as e:
            raise StoreError(f"registry read failed: {e}") from None

    @contextmanager
    def transaction(self) -> Iterator[list[Statement]]:
        """Collect statements, then run them in one IMMEDIATE transaction (all or nothing)."""
        statements: list[Statement] = []
        yield statements
        self.run(statements)

    def run(self, statements: list[Statement]) -> None:
        if self._db is None:
            raise StoreError("registry is closed")
        if not statements:
            return
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    self._db.execute(sql, args)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.IntegrityError as e:
            if "entries.name" in str(e):
                raise Conflict("an active entry with that name already exists") from None
            if "roles.name" in str(e):
                raise Conflict("a role with that name already exists") from None
            raise Conflict(f"registry constraint failed: {e}") from None
        except sqlite3.OperationalError as e:
            raise StoreError(f"registry write failed: {e}") from None
