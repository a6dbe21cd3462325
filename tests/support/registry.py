"""A registry on a real SQLite file, for unit tests of the code that reads it.

The registry's writes are coroutines (a fleet's store is a network away); `run` drives one to
its end from a plain test."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from ensign.daemon.registry import Entry, EventHub, Registry, RoleBook, SqliteStore

T = TypeVar("T")


def run(aw: Awaitable[T]) -> T:
    """Await `aw` on a fresh event loop (a registry write, load or close)."""
    async def wrapped() -> T:
        return await aw

    return asyncio.run(wrapped())


def open_registry(path: Path, trust_domain: str = "example.org",
                  clock: Callable[[], float] = time.time) -> Registry:
    """A loaded registry whose database is `path`/registry.db, reading the time from `clock`."""
    store = SqliteStore(path / "registry.db")
    run(store.open())
    events = EventHub()
    r = Registry(store, RoleBook(store, events), events, trust_domain, clock=clock)
    run(r.load())
    return r


def new_entry(name: str, *selectors: str, **kw: object) -> Entry:
    """An entry to register (the registry assigns id and SPIFFE ID)."""
    kw.setdefault("owner", "owner@example.org")
    return Entry(id="", name=name, kind="agent", spiffe_id="", selectors=selectors,
                 **kw)  # type: ignore[arg-type]
