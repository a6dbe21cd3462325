"""The registry on a real SQLite file: matching, changes, persistence, and refusals."""

from __future__ import annotations

import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ensign.daemon.errors import Conflict, InvalidData, InvalidRequest, NotFound
from ensign.daemon.registry import Entry, EventHub, ListFilter, Registry, RoleBook, SqliteStore


def _reg(path: Path, clock: Callable[[], float] = time.time) -> Registry:
    store = SqliteStore(path / "registry.db")
    store.open()
    events = EventHub()
    r = Registry(store, RoleBook(store, events), events, "example.org", clock=clock)
    r.load()
    return r


def _entry(name: str, *selectors: str, **kw: object) -> Entry:
    kw.setdefault("owner", "owner@example.org")
    return Entry(id="", name=name, kind="agent", spiffe_id="", selectors=selectors, **kw)  # type: ignore[arg-type]


def test_match_requires_every_selector(tmp_path: Path) -> None:
    r = _reg(tmp_path)
    a = r.register(_entry("a", "unix:uid:1000"), 0)
    b = r.register(_entry("b", "unix:uid:1000", "unix:gid:50"), 0)
    assert [e.id for e in r.match({"unix:uid:1000"})] == [a.id]
    assert [e.id for e in r.match({"unix:uid:1000", "unix:gid:50"})] == sorted([a.id, b.id])
    assert r.match({"unix:gid:50"}) == []
    assert a.id.startswith("agt_") and len(a.id) == 30
    assert a.spiffe_id == f"spiffe://example.org/agent/{a.id}"


def test_changes_persist_and_bump_revision(tmp_path: Path) -> None:
    r = _reg(tmp_path)
    a = r.register(_entry("a", "unix:uid:1"), 0)
    updated = r.update(a.id, 0, selectors=("unix:uid:2",), dns_names=("a.local",))
    assert updated.revision == 2
    r._store.close()
    r2 = _reg(tmp_path)
    assert r2.get(a.id).selectors == ("unix:uid:2",)
    assert r2.match({"unix:uid:1"}) == []
    assert stat.S_IMODE((tmp_path / "registry.db").stat().st_mode) == 0o600
    r2.delete(a.id, 0)
    with pytest.raises(NotFound):
        r2.get(a.id)


def test_refusals(tmp_path: Path) -> None:
    r = _reg(tmp_path)
    r.register(_entry("taken", "unix:uid:1"), 0)
    with pytest.raises(Conflict):
        r.register(_entry("taken", "unix:uid:2"), 0)
    with pytest.raises(InvalidRequest, match="unknown type"):
        r.register(_entry("x", "unx:uid:1"), 0)
    with pytest.raises(InvalidRequest, match="at least one selector"):
        r.register(_entry("x"), 0)
    with pytest.raises(InvalidRequest, match="not in trust domain"):
        r.register(Entry(id="", name="x", kind="agent", spiffe_id="spiffe://other.org/x",
                         selectors=("unix:uid:1",), owner="o"), 0)
    with pytest.raises(InvalidRequest, match="owner is required"):
        r.register(_entry("x", "unix:uid:1", owner=""), 0)
    with pytest.raises(InvalidRequest, match="cannot be changed"):
        r.update(r.entries()[0].id, 0, id="agt_other")
    assert len(r) == 1  # nothing half-written


def test_expired_and_suspended_entries_do_not_match(tmp_path: Path) -> None:
    now = [1_800_000_000.0]
    r = _reg(tmp_path, clock=lambda: now[0])
    with pytest.raises(InvalidData, match="in the past"):
        r.register(_entry("dead", "unix:uid:1", expires_at=int(now[0]) - 1), 0)
    r.register(_entry("old", "unix:uid:1", expires_at=int(now[0]) + 10), 0)
    assert [e.name for e in r.match({"unix:uid:1"})] == ["old"]
    now[0] += 11
    s = r.register(_entry("sus", "unix:uid:1"), 0)
    r.transition(s.id, "suspend", "uid:0", "test")
    assert r.match({"unix:uid:1"}) == []
    assert [e.name for e in r.entries(ListFilter(state="suspended"))] == ["sus"]
