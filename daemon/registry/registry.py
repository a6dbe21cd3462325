"""The agent registry: entries, their lifecycle and history, kept in memory over a store.

An entry matches a caller when every one of the entry's selectors is among the caller's. The
index maps each entry's first (sorted) selector to the entry, so a match looks only at entries
that share at least that selector with the caller: O(caller selectors), not O(entries).
Every change goes through `EventHub` with the actor, the before and the after. No gRPC here.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

from ulid import ULID

from ensign.daemon.errors import Conflict, InvalidRequest, InvalidTransition, NotFound
from ensign.daemon.registry.events import Action, ChangeEvent, EventHub
from ensign.daemon.registry.model import (
    _MUTABLE,
    DAEMON_ACTOR,
    TRANSITIONS,
    BulkChange,
    Entry,
    ListFilter,
    StateChange,
    check_expiry,
    validate_entry,
)
from ensign.daemon.registry.roles import RoleBook
from ensign.daemon.registry.store import DeleteEntry, PutEntry, RecordState, RegistryStore, Write

log = logging.getLogger(__name__)

#: Selector sets whose match() is kept: as many as the attestation cache holds callers. Their
#: strings are the caller's (paths, units), so only sets that hold an entry are kept: a caller
#: that matches nothing cannot fill it.
MAX_MATCHED = 4096


class Registry:
    """Entries of one trust domain. Use from one thread (the event loop)."""

    def __init__(self, store: RegistryStore, roles: RoleBook, events: EventHub, trust_domain: str,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._roles = roles
        self._events = events
        self._td = trust_domain
        self._clock = clock
        self._entries: dict[str, Entry] = {}
        self._index: dict[str, set[str]] = defaultdict(set)
        self._by_spiffe_id: dict[str, set[str]] = defaultdict(set)
        # match() by selector set, until the earliest expiry among what it found: every request
        # asks it, with the same selectors as the last request from that process. Emptied on
        # every change of an entry.
        self._matched: dict[frozenset[str], tuple[float, tuple[Entry, ...]]] = {}
        roles.holders = self.holders

    async def load(self) -> None:
        self._entries.clear()
        self._index.clear()
        self._by_spiffe_id.clear()
        self._matched.clear()
        for e in await self._store.entries():
            self._remember(e)
        log.info("registry loaded", extra={"entries": len(self._entries)})

    # -- queries ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, entry_id: str) -> Entry:
        try:
            return self._entries[entry_id]
        except KeyError:
            raise NotFound(f"no entry with id {entry_id!r}") from None

    def entries(self, flt: ListFilter | None = None) -> list[Entry]:
        flt = flt or ListFilter()
        return sorted((e for e in self._entries.values() if flt.accepts(e)), key=lambda e: e.id)

    @property
    def lookup(self) -> Mapping[str, Entry]:
        """Every entry by id (a read-only view: no copy per lookup)."""
        return self._entries

    def by_spiffe_id(self, spiffe_id: str) -> list[Entry]:
        """Live entries with this SPIFFE ID (the holder of an X.509-SVID for it), in id order."""
        now = self._clock()
        return sorted((e for i in self._by_spiffe_id.get(spiffe_id, ())
                       if (e := self._entries[i]).is_live(now)), key=lambda e: e.id)

    def live_ids(self) -> set[str]:
        now = self._clock()
        return {e.id for e in self._entries.values() if e.is_live(now)}

    def active_selector_sets(self) -> Iterator[tuple[str, ...]]:
        return (e.selectors for e in self._entries.values() if e.state == "active")

    def holders(self, role: str) -> list[str]:
        return sorted(e.id for e in self._entries.values()
                      if role in e.roles and e.state != "decommissioned")

    async def history(self, entry_id: str) -> list[StateChange]:
        self.get(entry_id)
        return await self._store.history(entry_id)

    def match(self, selectors: Iterable[str]) -> list[Entry]:
        """Live entries whose selectors are all among `selectors`, in id order."""
        have = frozenset(selectors)
        now = self._clock()
        hit = self._matched.get(have)
        if hit is not None and now < hit[0]:
            return list(hit[1])
        found: dict[str, Entry] = {}
        for s in have:
            for entry_id in self._index.get(s, ()):
                e = self._entries[entry_id]
                if e.is_live(now) and have.issuperset(e.selectors):
                    found[entry_id] = e
        matched = tuple(found[k] for k in sorted(found))
        if matched:
            # Only time passing changes the answer between changes: a live entry's expiry.
            until = min((e.expires_at for e in matched if e.expires_at), default=math.inf)
            if len(self._matched) >= MAX_MATCHED:
                self._matched.clear()
            self._matched[have] = (until, matched)
        return list(matched)

    # -- changes ---------------------------------------------------------------------------

    def prepare_register(self, entry: Entry, actor_uid: int,
                         planned_roles: Collection[str] = ()) -> Entry:
        """Validate a new entry and give it its id, without writing it."""
        now = int(self._clock())
        entry_id = f"agt_{ULID()}"
        spiffe_id = entry.spiffe_id or f"spiffe://{self._td}/agent/{entry_id}"
        self._roles.check_exist(r for r in entry.roles if r not in planned_roles)
        check_expiry(entry.expires_at, self._clock())
        return validate_entry(
            replace(entry, id=entry_id, spiffe_id=spiffe_id, created_at=now, updated_at=now,
                    revision=1, state="active", created_by=actor_uid),
            self._td,
        )

    async def register(self, entry: Entry, actor_uid: int) -> Entry:
        e = self.prepare_register(entry, actor_uid)
        await self._commit([PutEntry(e, new=True), RecordState(
            e.id, e.created_at, "", "active", "registered", f"uid:{actor_uid}")])
        self._accept(None, e)
        self._emit("register", e.id, f"uid:{actor_uid}", None, e, "")
        return e

    def prepare_update(self, entry_id: str, planned_roles: Collection[str] = (),
                       **changes: Any) -> tuple[Entry, Entry]:
        old = self.get(entry_id)
        bad = set(changes) - _MUTABLE
        if bad:
            raise InvalidRequest(f"{', '.join(sorted(bad))} cannot be changed with update")
        if old.state == "decommissioned":
            raise InvalidTransition(f"entry {entry_id} is decommissioned; it cannot change")
        if "roles" in changes:
            self._roles.check_exist(r for r in changes["roles"] if r not in planned_roles)
        if "expires_at" in changes:
            check_expiry(changes["expires_at"], self._clock())
        new = validate_entry(
            replace(old, **changes, updated_at=int(self._clock()), revision=old.revision + 1),
            self._td,
        )
        return old, new

    async def update(self, entry_id: str, actor_uid: int, **changes: Any) -> Entry:
        old, new = self.prepare_update(entry_id, **changes)
        await self._commit([PutEntry(new)])
        self._accept(old, new)
        self._emit("update", new.id, f"uid:{actor_uid}", old, new, "")
        return new

    async def transition(self, entry_id: str, action: Action, actor: str, reason: str) -> Entry:
        old = self.get(entry_id)
        to = TRANSITIONS.get((old.state, action))
        if to is None:
            raise InvalidTransition(f"cannot {action} entry {entry_id}: it is {old.state}")
        now = int(self._clock())
        new = replace(old, state=to, updated_at=now, revision=old.revision + 1)
        await self._commit([PutEntry(new), RecordState(entry_id, now, old.state, to, reason,
                                                       actor)])
        self._accept(old, new)
        self._emit(action, entry_id, actor, old, new, reason)
        return new

    async def delete(self, entry_id: str, actor_uid: int) -> Entry:
        old = self.get(entry_id)
        now = int(self._clock())
        await self._commit([
            DeleteEntry(entry_id, now),
            RecordState(entry_id, now, old.state, "deleted", "deleted", f"uid:{actor_uid}"),
        ])
        self._forget(old)
        self._emit("delete", entry_id, f"uid:{actor_uid}", old, None, "")
        return old

    async def expire_due(self) -> list[Entry]:
        """Decommission entries whose `expires_at` has passed. Returns those changed.

        In a fleet every node tries; the database lets one win (the revision check) and the
        others see the change arrive. An expired entry stops issuing at once either way."""
        now = self._clock()
        due = [e.id for e in self._entries.values()
               if e.expires_at and e.expires_at <= now and e.state != "decommissioned"]
        done = []
        for i in due:
            try:
                done.append(await self.transition(i, "expire", DAEMON_ACTOR, "expired"))
            except (Conflict, InvalidTransition, NotFound):
                continue  # another node got there first
        return done

    # -- bulk (declarative apply) ----------------------------------------------------------

    async def commit_bulk(self, writes: Sequence[Write], changes: list[BulkChange]) -> None:
        """Write many prepared changes in one transaction, then update memory and emit."""
        await self._commit(writes)
        self.accepted(changes)

    async def write(self, writes: Sequence[Write]) -> None:
        """Prepared writes of any book in one transaction (then call each book's accepted)."""
        await self._commit(writes)

    def accepted(self, changes: list[BulkChange]) -> None:
        """Prepared changes are committed (by commit_bulk, or with other books' writes in one
        transaction): update memory and emit."""
        for action, entry_id, actor, before, after, reason in changes:
            self._accept(before, after)
            self._emit(action, entry_id, actor, before, after, reason)

    # -- changes another node made (fleet) ---------------------------------------------------

    def apply_remote(self, entries: Iterable[Entry], deleted: Iterable[str]) -> int:
        """Take entries as the shared database holds them now; emit a change for each that
        differs from ours. Returns how many changed."""
        changed = 0
        for e in entries:
            cur = self._entries.get(e.id)
            if cur == e or (cur is not None and _newer(cur, e)):
                continue  # ours already (our own write), or a later local write raced ahead
            self._accept(cur, e)
            self._emit(_remote_action(cur, e), e.id, "fleet", cur, e, "", origin="fleet")
            changed += 1
        for entry_id in deleted:
            cur = self._entries.get(entry_id)
            if cur is None:
                continue
            self._forget(cur)
            self._emit("delete", entry_id, "fleet", cur, None, "", origin="fleet")
            changed += 1
        return changed

    # -- internals -------------------------------------------------------------------------

    async def _commit(self, writes: Sequence[Write]) -> None:
        await self._store.write(writes)

    def _accept(self, old: Entry | None, new: Entry | None) -> None:
        """Memory follows a committed change, unless a later one is held already (a remote
        change applied while this write was on its way)."""
        held = self._entries.get(new.id if new is not None else old.id if old else "")
        if new is None:
            if held is not None:
                self._forget(held)
        elif held is None:
            self._remember(new)
        elif not _newer(held, new):
            self._replace(held, new)

    def _emit(self, action: Action, subject: str, actor: str, before: Entry | None,
              after: Entry | None, reason: str, origin: str = "") -> None:
        self._events.emit(ChangeEvent(
            action, subject, actor, before.as_dict() if before else None,
            after.as_dict() if after else None, reason, at=int(self._clock()), origin=origin))

    def _replace(self, old: Entry, new: Entry) -> None:
        self._forget(old)
        self._remember(new)

    def _remember(self, e: Entry) -> None:
        self._matched.clear()
        self._entries[e.id] = e
        self._index[e.selectors[0]].add(e.id)
        self._by_spiffe_id[e.spiffe_id].add(e.id)

    def _forget(self, e: Entry) -> None:
        self._matched.clear()
        self._entries.pop(e.id, None)
        ids = self._index.get(e.selectors[0])
        if ids is not None:
            ids.discard(e.id)
            if not ids:
                del self._index[e.selectors[0]]
        same = self._by_spiffe_id.get(e.spiffe_id)
        if same is not None:
            same.discard(e.id)
            if not same:
                del self._by_spiffe_id[e.spiffe_id]


def _newer(held: Entry, incoming: Entry) -> bool:
    """Is the held entry a later write than the incoming one? Revisions only grow."""
    return (held.created_at, held.revision) > (incoming.created_at, incoming.revision)


def _remote_action(before: Entry | None, after: Entry) -> Action:
    if before is None:
        return "register"
    if before.state != after.state:
        for (frm, action), to in TRANSITIONS.items():
            if frm == before.state and to == after.state:
                return action  # type: ignore[return-value]
    return "update"
