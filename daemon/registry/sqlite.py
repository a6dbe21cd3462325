"""The registry on SQLite (the embedded default for one node): schema, rows, transactions.

WAL mode with synchronous=FULL: a write returns once it is durable. No domain rules here.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ensign.daemon.errors import Conflict, StoreError
from ensign.daemon.registry.model import Entry, Grant, StateChange
from ensign.daemon.registry.policy import Role
from ensign.daemon.registry.store import (
    DeleteEntry,
    DeleteRole,
    PutEntry,
    PutGrant,
    PutRole,
    RecordState,
    Write,
)

SCHEMA_VERSION = 4

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

ENTRY_COLUMNS = (
    "id", "name", "kind", "spiffe_id", "selectors", "x509_ttl", "jwt_ttl", "dns_names", "hint",
    "owner", "purpose", "capabilities", "roles", "metadata", "state", "expires_at", "created_by",
    "created_at", "updated_at", "revision", "federates_with",
)
ENTRY_JSON = ("selectors", "dns_names", "capabilities", "roles", "metadata", "federates_with")
ROLE_COLUMNS = ("name", "audiences", "scopes", "max_ttl", "may_act_for_users", "may_redelegate",
                "created_at", "updated_at", "revision", "may_introspect")
GRANT_COLUMNS = ("id", "subject", "issuer", "agent_id", "scopes", "created_at", "expires_at",
                 "revoked_at", "created_by")


class SqliteStore:
    """One SQLite connection in WAL mode, used from the event loop thread only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    async def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(_SCHEMA)
            _migrate(db)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self.path.chmod(0o600)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open registry {self.path}: {e}") from None
        self._db = db

    async def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- reads -----------------------------------------------------------------------------

    async def entries(self) -> list[Entry]:
        rows = self._rows(f"SELECT {', '.join(ENTRY_COLUMNS)} FROM entries")  # noqa: S608
        return [entry_from_row(r) for r in rows]

    async def roles(self) -> list[Role]:
        rows = self._rows(f"SELECT {', '.join(ROLE_COLUMNS)} FROM roles")  # noqa: S608
        return [role_from_row(r) for r in rows]

    async def grants(self) -> list[Grant]:
        rows = self._rows(f"SELECT {', '.join(GRANT_COLUMNS)} FROM grants")  # noqa: S608
        return [grant_from_row(r) for r in rows]

    async def history(self, entry_id: str) -> list[StateChange]:
        rows = self._rows(
            "SELECT at, from_state, to_state, reason, actor FROM state_history "
            "WHERE entry_id = ? ORDER BY seq", (entry_id,))
        return [StateChange(*r) for r in rows]

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self._db is None:
            raise StoreError("registry is closed")
        try:
            return list(self._db.execute(sql, args))
        except sqlite3.Error as e:
            raise StoreError(f"registry read failed: {e}") from None

    # -- writes ----------------------------------------------------------------------------

    async def write(self, writes: Sequence[Write]) -> None:
        self.run([s for w in writes for s in _statements(w)])

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


#: Columns added after the first release: (table, column, definition). Idempotent on start.
_ADDED_COLUMNS = (
    ("entries", "federates_with", "TEXT NOT NULL DEFAULT '[]'"),
    ("roles", "may_introspect", "INTEGER NOT NULL DEFAULT 0"),
)


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a registry written by an earlier release up to SCHEMA_VERSION, in place."""
    for table, column, definition in _ADDED_COLUMNS:
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")


def _statements(w: Write) -> list[Statement]:
    match w:
        case PutEntry(entry=e, new=True):
            marks = ", ".join("?" for _ in ENTRY_COLUMNS)
            return [(f"INSERT INTO entries ({', '.join(ENTRY_COLUMNS)}) "  # noqa: S608
                     f"VALUES ({marks})", entry_row(e))]
        case PutEntry(entry=e):
            sets = ", ".join(f"{c} = ?" for c in ENTRY_COLUMNS[1:])
            return [(f"UPDATE entries SET {sets} WHERE id = ?",  # noqa: S608
                     (*entry_row(e)[1:], e.id))]
        case DeleteEntry(entry_id=i, at=at):
            return [("DELETE FROM entries WHERE id = ?", (i,)),
                    ("INSERT OR IGNORE INTO retired_ids (id, retired_at) VALUES (?, ?)", (i, at))]
        case RecordState():
            return [("INSERT INTO state_history (entry_id, at, from_state, to_state, reason, "
                     "actor) VALUES (?, ?, ?, ?, ?, ?)",
                     (w.entry_id, w.at, w.from_state, w.to_state, w.reason, w.actor))]
        case PutRole(role=r, new=new):
            values = role_row(r)
            if new:
                marks = ", ".join("?" for _ in ROLE_COLUMNS)
                return [(f"INSERT INTO roles ({', '.join(ROLE_COLUMNS)}) "  # noqa: S608
                         f"VALUES ({marks})", values)]
            sets = ", ".join(f"{c} = ?" for c in ROLE_COLUMNS[1:])
            return [(f"UPDATE roles SET {sets} WHERE name = ?", (*values[1:], r.name))]  # noqa: S608
        case DeleteRole(name=name):
            return [("DELETE FROM roles WHERE name = ?", (name,))]
        case PutGrant(grant=g, new=new):
            row = grant_row(g)
            if new:
                marks = ", ".join("?" for _ in GRANT_COLUMNS)
                return [(f"INSERT INTO grants ({', '.join(GRANT_COLUMNS)}) "  # noqa: S608
                         f"VALUES ({marks})", row)]
            sets = ", ".join(f"{c} = ?" for c in GRANT_COLUMNS[1:])
            return [(f"UPDATE grants SET {sets} WHERE id = ?", (*row[1:], g.id))]  # noqa: S608
    raise TypeError(f"unknown registry write {w!r}")


def entry_row(e: Entry) -> tuple[Any, ...]:
    values = []
    for col in ENTRY_COLUMNS:
        v = getattr(e, col)
        if col in ENTRY_JSON:
            v = json.dumps(v if isinstance(v, dict) else list(v), sort_keys=True)
        values.append(v)
    return tuple(values)


def entry_from_row(row: tuple[Any, ...]) -> Entry:
    data = dict(zip(ENTRY_COLUMNS, row, strict=True))
    for col in ENTRY_JSON:
        v = json.loads(data[col])
        data[col] = v if isinstance(v, dict) else tuple(v)
    return Entry(**data)


def role_row(r: Role) -> tuple[Any, ...]:
    return (r.name, json.dumps(list(r.audiences)), json.dumps(list(r.scopes)), r.max_ttl,
            int(r.may_act_for_users), int(r.may_redelegate), r.created_at, r.updated_at,
            r.revision, int(r.may_introspect))


def role_from_row(row: tuple[Any, ...]) -> Role:
    d = dict(zip(ROLE_COLUMNS, row, strict=True))
    d["audiences"] = tuple(json.loads(d["audiences"]))
    d["scopes"] = tuple(json.loads(d["scopes"]))
    for flag in ("may_act_for_users", "may_redelegate", "may_introspect"):
        d[flag] = bool(d[flag])
    return Role(**d)


def grant_row(g: Grant) -> tuple[Any, ...]:
    return (g.id, g.subject, g.issuer, g.agent_id, json.dumps(list(g.scopes)), g.created_at,
            g.expires_at, g.revoked_at, g.created_by)


def grant_from_row(row: tuple[Any, ...]) -> Grant:
    d = dict(zip(GRANT_COLUMNS, row, strict=True))
    d["scopes"] = tuple(json.loads(d["scopes"]))
    return Grant(**d)
