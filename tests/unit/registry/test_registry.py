"""The registry on a real SQLite file: matching, changes, persistence, and refusals."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from ensign.daemon.errors import Conflict, InvalidData, InvalidRequest, NotFound
from ensign.daemon.registry import Entry, ListFilter
from tests.support.registry import new_entry, open_registry, run


def test_match_requires_every_selector(tmp_path: Path) -> None:
    r = open_registry(tmp_path)
    a = run(r.register(new_entry("a", "unix:uid:1000"), 0))
    b = run(r.register(new_entry("b", "unix:uid:1000", "unix:gid:50"), 0))
    assert [e.id for e in r.match({"unix:uid:1000"})] == [a.id]
    assert [e.id for e in r.match({"unix:uid:1000", "unix:gid:50"})] == sorted([a.id, b.id])
    assert r.match({"unix:gid:50"}) == []
    assert a.id.startswith("agt_") and len(a.id) == 30
    assert a.spiffe_id == f"spiffe://example.org/agent/{a.id}"


def test_changes_persist_and_bump_revision(tmp_path: Path) -> None:
    r = open_registry(tmp_path)
    a = run(r.register(new_entry("a", "unix:uid:1"), 0))
    updated = run(r.update(a.id, 0, selectors=("unix:uid:2",), dns_names=("a.local",)))
    assert updated.revision == 2
    run(r._store.close())
    r2 = open_registry(tmp_path)
    assert r2.get(a.id).selectors == ("unix:uid:2",)
    assert r2.match({"unix:uid:1"}) == []
    assert stat.S_IMODE((tmp_path / "registry.db").stat().st_mode) == 0o600
    run(r2.delete(a.id, 0))
    with pytest.raises(NotFound):
        r2.get(a.id)


def test_refusals(tmp_path: Path) -> None:
    r = open_registry(tmp_path)
    run(r.register(new_entry("taken", "unix:uid:1"), 0))
    with pytest.raises(Conflict):
        run(r.register(new_entry("taken", "unix:uid:2"), 0))
    with pytest.raises(InvalidRequest, match="unknown type"):
        run(r.register(new_entry("x", "unx:uid:1"), 0))
    with pytest.raises(InvalidRequest, match="at least one selector"):
        run(r.register(new_entry("x"), 0))
    with pytest.raises(InvalidRequest, match="not in trust domain"):
        run(r.register(Entry(id="", name="x", kind="agent", spiffe_id="spiffe://other.org/x",
                             selectors=("unix:uid:1",), owner="o"), 0))
    with pytest.raises(InvalidRequest, match="owner is required"):
        run(r.register(new_entry("x", "unix:uid:1", owner=""), 0))
    with pytest.raises(InvalidRequest, match="cannot be changed"):
        run(r.update(r.entries()[0].id, 0, id="agt_other"))
    assert len(r) == 1  # nothing half-written


def test_expired_and_suspended_entries_do_not_match(tmp_path: Path) -> None:
    now = [1_800_000_000.0]
    r = open_registry(tmp_path, clock=lambda: now[0])
    with pytest.raises(InvalidData, match="in the past"):
        run(r.register(new_entry("dead", "unix:uid:1", expires_at=int(now[0]) - 1), 0))
    run(r.register(new_entry("old", "unix:uid:1", expires_at=int(now[0]) + 10), 0))
    assert [e.name for e in r.match({"unix:uid:1"})] == ["old"]
    now[0] += 11
    s = run(r.register(new_entry("sus", "unix:uid:1"), 0))
    run(r.transition(s.id, "suspend", "uid:0", "test"))
    assert r.match({"unix:uid:1"}) == []
    assert [e.name for e in r.entries(ListFilter(state="suspended"))] == ["sus"]


def test_a_repeated_match_drops_an_entry_once_it_expires_or_changes(tmp_path: Path) -> None:
    """match() keeps its answer per selector set, but only until the earliest expiry among
    what it found or the next change, and what it returns is the caller's to edit."""
    now = [1_800_000_000.0]
    r = open_registry(tmp_path, clock=lambda: now[0])
    short = run(r.register(new_entry("short", "unix:uid:1", expires_at=int(now[0]) + 10), 0))
    long = run(r.register(new_entry("long", "unix:uid:1"), 0))
    have = frozenset({"unix:uid:1", "unix:gid:1"})
    assert {e.name for e in r.match(have)} == {"short", "long"}
    r.match(have).clear()  # a caller's copy
    now[0] += 9
    assert {e.name for e in r.match(have)} == {"short", "long"}
    now[0] += 1  # expires_at is the first second it no longer holds
    assert [e.id for e in r.match(have)] == [long.id]
    assert short.id not in {e.id for e in r.match({"unix:uid:1"})}
    run(r.transition(long.id, "suspend", "uid:0", "test"))
    assert r.match(have) == []
    # what matched nothing is not kept: callers that hold no entry cannot fill the memo
    for i in range(50):
        assert r.match({f"unix:path:/tmp/x{i}", "unix:uid:9"}) == []
    assert len(r._matched) == 0


def test_the_daemons_own_spiffe_ids_cannot_be_registered(tmp_path: Path) -> None:
    """spiffe://<td>/ensign/... names the daemon itself (its HTTPS endpoint's node SVID): no
    entry may hold it, so no workload can pose as the node to a federating peer."""
    r = open_registry(tmp_path)
    for sid in ("spiffe://example.org/ensign/node/host1", "spiffe://example.org/ensign"):
        with pytest.raises(InvalidRequest, match="reserved for the daemon"):
            run(r.register(Entry(id="", name="x", kind="agent", spiffe_id=sid,
                                 selectors=("unix:uid:1",), owner="o"), 0))
    ok = run(r.register(Entry(id="", name="y", kind="agent",
                              spiffe_id="spiffe://example.org/ensigned/x",
                              selectors=("unix:uid:1",), owner="o"), 0))
    assert [e.id for e in r.by_spiffe_id("spiffe://example.org/ensigned/x")] == [ok.id]
    run(r.transition(ok.id, "suspend", "uid:0", "test"))
    assert r.by_spiffe_id("spiffe://example.org/ensigned/x") == []  # live entries only
