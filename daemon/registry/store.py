"""The registry's storage, as one interface: typed writes applied in one transaction, and reads
of everything at start. Backends implement `RegistryStore`: SQLite for one node (sqlite.py),
PostgreSQL for a fleet (postgres.py).

The books keep their records in memory and write through the store; a backend never decides
anything, it only makes writes durable and reads them back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ensign.daemon.registry.model import Entry, Grant, StateChange
from ensign.daemon.registry.policy import Role


@dataclass(frozen=True, slots=True)
class PutEntry:
    entry: Entry
    new: bool = False  # insert (the id must be unused) or replace the stored entry


@dataclass(frozen=True, slots=True)
class DeleteEntry:
    """The entry goes; its id is retired and never handed out again."""

    entry_id: str
    at: int


@dataclass(frozen=True, slots=True)
class RecordState:
    """One line of an entry's state history."""

    entry_id: str
    at: int
    from_state: str
    to_state: str
    reason: str
    actor: str


@dataclass(frozen=True, slots=True)
class PutRole:
    role: Role
    new: bool = False


@dataclass(frozen=True, slots=True)
class DeleteRole:
    name: str


@dataclass(frozen=True, slots=True)
class PutGrant:
    grant: Grant
    new: bool = False


Write = PutEntry | DeleteEntry | RecordState | PutRole | DeleteRole | PutGrant


class RegistryStore(Protocol):
    """Where the registry lives. All reads and writes happen on the event loop's thread.

    Async because a shared database (PostgreSQL, for a fleet) is a network away: a write must
    never stall the loop that issues SVIDs.
    """

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def entries(self) -> list[Entry]: ...

    async def roles(self) -> list[Role]: ...

    async def grants(self) -> list[Grant]: ...

    async def history(self, entry_id: str) -> list[StateChange]: ...

    async def write(self, writes: Sequence[Write]) -> None:
        """Apply every write in one transaction: all of them or none (then it raises)."""
        ...
