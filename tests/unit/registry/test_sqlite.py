"""The SQLite registry store: every typed write round-trips through a reopen, and one `write()`
is one transaction (all of it or none, with a Conflict naming the clash)."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from ensign.daemon.errors import Conflict, StoreError
from ensign.daemon.registry import Entry, Grant, Role, SqliteStore, StateChange
from ensign.daemon.registry.store import (
    DeleteEntry,
    DeleteRole,
    PutEntry,
    PutGrant,
    PutRole,
    RecordState,
)
from tests.support.registry import run

ENTRY = Entry(id="agt_1", name="builder", kind="agent", spiffe_id="spiffe://example.org/agent/b",
              selectors=("unix:uid:1000", "unix:path:/opt/b"), x509_ttl=600, jwt_ttl=60,
              dns_names=("b.example",), hint="internal", owner="ops@example.org",
              purpose="builds", capabilities=("build", "test"), roles=("reader",),
              metadata={"team": "infra", "tier": "1"}, state="active", expires_at=2_000_000_000,
              created_by=0, created_at=1_700_000_000, updated_at=1_700_000_001, revision=3)
ROLE = Role(name="reader", audiences=("https://api.example.org/*",), scopes=("docs:read",),
            max_ttl=120, may_act_for_users=True, may_redelegate=False, created_at=1,
            updated_at=2, revision=4)
GRANT = Grant(id="grt_1", subject="alice", issuer="https://idp.example.org", agent_id="agt_1",
              scopes=("calendar.read",), created_at=5, expires_at=6, revoked_at=0,
              created_by="uid:0")


def _store(path: Path) -> SqliteStore:
    s = SqliteStore(path / "registry.db")
    run(s.open())
    return s


def test_every_write_round_trips_through_a_reopen(tmp_path: Path) -> None:
    s = _store(tmp_path)
    run(s.write([PutRole(ROLE, new=True), PutEntry(ENTRY, new=True), PutGrant(GRANT, new=True),
                 RecordState("agt_1", 10, "", "active", "registered", "uid:0"),
                 RecordState("agt_1", 11, "active", "suspended", "why", "uid:0")]))
    run(s.close())
    again = _store(tmp_path)
    assert run(again.entries()) == [ENTRY]
    assert run(again.roles()) == [ROLE]
    assert run(again.grants()) == [GRANT]
    assert run(again.history("agt_1")) == [
        StateChange(10, "", "active", "registered", "uid:0"),
        StateChange(11, "active", "suspended", "why", "uid:0")]
    assert (tmp_path / "registry.db").stat().st_mode & 0o777 == 0o600


def test_updates_replace_and_deletes_remove(tmp_path: Path) -> None:
    s = _store(tmp_path)
    run(s.write([PutRole(ROLE, new=True), PutEntry(ENTRY, new=True), PutGrant(GRANT, new=True)]))
    moved = replace(ENTRY, selectors=("unix:uid:1001",), metadata={}, revision=4)
    wider = replace(ROLE, scopes=("docs:read", "docs:write"), revision=5)
    revoked = replace(GRANT, revoked_at=99)
    run(s.write([PutEntry(moved), PutRole(wider), PutGrant(revoked)]))
    assert (run(s.entries()), run(s.roles()), run(s.grants())) == ([moved], [wider], [revoked])
    run(s.write([DeleteEntry("agt_1", at=100), DeleteRole("reader")]))
    assert (run(s.entries()), run(s.roles())) == ([], [])
    assert run(s.history("agt_1")) == []


def test_one_write_is_all_or_nothing(tmp_path: Path) -> None:
    s = _store(tmp_path)
    run(s.write([PutEntry(ENTRY, new=True)]))
    other = Entry(id="agt_2", name="other", kind="agent", spiffe_id="spiffe://example.org/o",
                  selectors=("unix:uid:2",))
    clash = Entry(id="agt_3", name="builder", kind="agent", spiffe_id="spiffe://example.org/c",
                  selectors=("unix:uid:3",))  # an active entry holds this name
    with pytest.raises(Conflict, match="an active entry with that name already exists"):
        run(s.write([PutRole(ROLE, new=True), PutEntry(other, new=True),
                     RecordState("agt_2", 1, "", "active", "registered", "uid:0"),
                     PutEntry(clash, new=True)]))
    assert run(s.entries()) == [ENTRY] and run(s.roles()) == [] and run(s.history("agt_2")) == []
    with pytest.raises(Conflict, match="a role with that name already exists"):
        run(s.write([PutRole(ROLE, new=True), PutRole(ROLE, new=True)]))
    assert run(s.roles()) == []
    run(s.write([PutRole(ROLE, new=True), PutEntry(other, new=True)]))  # and the store still works
    assert sorted(e.id for e in run(s.entries())) == ["agt_1", "agt_2"]


def test_a_locked_database_is_a_store_error_and_nothing_is_written(tmp_path: Path) -> None:
    s = _store(tmp_path)
    other = sqlite3.connect(tmp_path / "registry.db", isolation_level=None, timeout=0)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    try:
        s._db.execute("PRAGMA busy_timeout=50")  # type: ignore[union-attr]
        with pytest.raises(StoreError, match="registry write failed"):
            run(s.write([PutEntry(ENTRY, new=True)]))
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert run(s.entries()) == []


def test_a_closed_store_refuses_reads_and_writes(tmp_path: Path) -> None:
    s = _store(tmp_path)
    run(s.close())
    with pytest.raises(StoreError, match="registry is closed"):
        run(s.entries())
    with pytest.raises(StoreError, match="registry is closed"):
        run(s.write([PutRole(ROLE, new=True)]))


def test_an_unopenable_file_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "registry.db").mkdir()  # a directory where the database should be
    with pytest.raises(StoreError, match="cannot open registry"):
        run(SqliteStore(tmp_path / "registry.db").open())
