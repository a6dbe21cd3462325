"""A registry written by an earlier release opens, keeps its rows and gains the new columns."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from ensign.daemon.registry import SqliteStore

_V3 = """
CREATE TABLE entries (id TEXT PRIMARY KEY, name TEXT NOT NULL, kind TEXT NOT NULL,
    spiffe_id TEXT NOT NULL, selectors TEXT NOT NULL, x509_ttl INTEGER NOT NULL DEFAULT 0,
    jwt_ttl INTEGER NOT NULL DEFAULT 0, dns_names TEXT NOT NULL DEFAULT '[]',
    hint TEXT NOT NULL DEFAULT '', owner TEXT NOT NULL DEFAULT '',
    purpose TEXT NOT NULL DEFAULT '', capabilities TEXT NOT NULL DEFAULT '[]',
    roles TEXT NOT NULL DEFAULT '[]', metadata TEXT NOT NULL DEFAULT '{}',
    state TEXT NOT NULL DEFAULT 'active', expires_at INTEGER NOT NULL DEFAULT 0,
    created_by INTEGER NOT NULL DEFAULT 0, created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL, revision INTEGER NOT NULL DEFAULT 1);
CREATE TABLE roles (name TEXT PRIMARY KEY, audiences TEXT NOT NULL,
    scopes TEXT NOT NULL DEFAULT '[]', max_ttl INTEGER NOT NULL DEFAULT 0,
    may_act_for_users INTEGER NOT NULL DEFAULT 0, may_redelegate INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,
    revision INTEGER NOT NULL DEFAULT 1);
INSERT INTO entries (id, name, kind, spiffe_id, selectors, created_at, updated_at)
    VALUES ('agt_01', 'old', 'agent', 'spiffe://example.org/agent/agt_01', '["unix:uid:7"]', 1, 1);
INSERT INTO roles (name, audiences, created_at, updated_at) VALUES ('r', '["a"]', 1, 1);
PRAGMA user_version=3;
"""


def test_a_version_3_registry_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    db = sqlite3.connect(path)
    db.executescript(_V3)
    db.close()
    store = SqliteStore(path)
    asyncio.run(store.open())
    try:
        [entry] = asyncio.run(store.entries())
        assert (entry.id, entry.selectors, entry.federates_with) == ("agt_01", ("unix:uid:7",), ())
        [role] = asyncio.run(store.roles())
        assert (role.name, role.may_introspect) == ("r", False)
    finally:
        asyncio.run(store.close())
    asyncio.run(store.open())  # a second start changes nothing
    try:
        assert [e.id for e in asyncio.run(store.entries())] == ["agt_01"]
    finally:
        asyncio.run(store.close())
