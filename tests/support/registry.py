"""A registry on a real SQLite file, for unit tests of the code that reads it."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ensign.daemon.registry import Entry, EventHub, Registry, RoleBook, SqliteStore


def open_registry(path: Path, trust_domain: str = "example.org",
                  clock: Callable[[], float] = time.time) -> Registry:
    """A loaded registry whose database is `path`/registry.db, reading the time from `clock`."""
    store = SqliteStore(path / "registry.db")
    store.open()
    events = EventHub()
    r = Registry(store, RoleBook(store, events), events, trust_domain, clock=clock)
    r.load()
    return r


def new_entry(name: str, *selectors: str, **kw: object) -> Entry:
    """An entry to register (the registry assigns id and SPIFFE ID)."""
    kw.setdefault("owner", "owner@example.org")
    return Entry(id="", name=name, kind="agent", spiffe_id="", selectors=selectors,
                 **kw)  # type: ignore[arg-type]
