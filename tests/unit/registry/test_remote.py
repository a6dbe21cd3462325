"""Changes another node made, applied to this node's books: each one an event marked as from the
fleet (so it is not audited again here), nothing for what is already held, and never a step back
when a local write raced ahead of the notification."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from ensign.daemon.registry import (
    ChangeEvent,
    Entry,
    EventHub,
    Grant,
    GrantBook,
    Registry,
    Role,
    RoleBook,
    SqliteStore,
)


def _books(path: Path) -> tuple[Registry, RoleBook, GrantBook, list[ChangeEvent]]:
    store = SqliteStore(path / "registry.db")
    asyncio.run(store.open())
    events = EventHub()
    seen: list[ChangeEvent] = []
    events.subscribe(seen.append)
    roles = RoleBook(store, events)
    return Registry(store, roles, events, "example.org"), roles, GrantBook(store, events), seen


def _entry(**kw: object) -> Entry:
    base = Entry(id="agt_R", name="r", kind="agent", spiffe_id="spiffe://example.org/agent/agt_R",
                 selectors=("unix:uid:5",), owner="o", created_at=10, updated_at=10)
    return replace(base, **kw)  # type: ignore[arg-type]


def test_remote_entries_are_events_from_the_fleet_once(tmp_path: Path) -> None:
    reg, _, _, seen = _books(tmp_path)
    e = _entry()
    assert reg.apply_remote([e], []) == 1
    assert reg.apply_remote([e], []) == 0  # held already: no second event
    suspended = replace(e, state="suspended", revision=2)
    assert reg.apply_remote([suspended], []) == 1
    assert reg.match({"unix:uid:5"}) == []  # a suspended agent no longer matches here
    assert reg.apply_remote([], ["agt_R"]) == 1
    assert [(ev.action, ev.origin, ev.actor) for ev in seen] == [
        ("register", "fleet", "fleet"), ("suspend", "fleet", "fleet"),
        ("delete", "fleet", "fleet")]


def test_a_later_local_revision_is_not_rolled_back(tmp_path: Path) -> None:
    reg, _, _, seen = _books(tmp_path)
    reg.apply_remote([_entry(revision=3, hint="new")], [])
    assert reg.apply_remote([_entry(revision=2, hint="old")], []) == 0
    assert reg.get("agt_R").hint == "new" and len(seen) == 1


def test_remote_roles_and_grants(tmp_path: Path) -> None:
    _, roles, grants, seen = _books(tmp_path)
    role = Role(name="reader", audiences=("a",), created_at=1, updated_at=1)
    assert roles.apply_remote([role], []) == 1
    assert roles.apply_remote([replace(role, audiences=("b",), revision=2)], []) == 1
    # deleted and created again elsewhere: both arrive in one read
    assert roles.apply_remote([replace(role, created_at=2)], ["reader"]) == 2
    g = Grant(id="grt_1", subject="alice", issuer="https://idp", agent_id="agt_R",
              scopes=("s",), created_at=1, created_by="uid:0")
    assert grants.apply_remote([g]) == 1
    assert grants.apply_remote([replace(g, revoked_at=5)]) == 1
    assert grants.apply_remote([g]) == 0  # a revoked grant is never un-revoked
    assert grants.get("grt_1").revoked_at == 5
    assert [ev.action for ev in seen] == ["role_create", "role_update", "role_delete",
                                          "role_create", "grant_create", "grant_revoke"]
    assert {ev.origin for ev in seen} == {"fleet"}
