"""The agent registry: entries, their lifecycle and history, on SQLite with an in-memory index.

An entry matches a caller when every one of the entry's selectors is among the caller's. The
index maps each entry's first (sorted) selector to the entry, so a match looks only at entries
that share at least that selector with the caller: O(caller selectors), not O(entries).
Every change goes through `EventHub` with the actor, the before and the after. No gRPC here.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ulid import ULID

from ensign.daemon.errors import InvalidRequest, InvalidTransition, NotFound
from ensign.daemon.registry.events import Action, ChangeEvent, EventHub
from ensign.daemon.registry.roles import RoleBook
from ensign.daemon.registry.store import Statement, Store
from ensign.daemon.spiffe_id import SpiffeId
from ensign.daemon.units import MAX_TIMESTAMP, MAX_TTL_SECONDS

log = logging.getLogger(__name__)

SELECTOR_TYPES = frozenset({"unix", "systemd", "sigstore", "tpm"})
KINDS = frozenset({"agent", "service"})
STATES = ("active", "suspended", "decommissioned")
_SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_SELECTORS = 64
MAX_NAME = 128
DAEMON_ACTOR = "ensign"

#: (from, action) -> to. Decommissioned is terminal.
TRANSITIONS: dict[tuple[str, str], str] = {
    ("active", "suspend"): "suspended",
    ("suspended", "resume"): "active",
    ("active", "decommission"): "decommissioned",
    ("suspended", "decommission"): "decommissioned",
    ("active", "expire"): "decommissioned",
    ("suspended", "expire"): "decommissioned",
}

_JSON_FIELDS = ("selectors", "dns_names", "capabilities", "roles", "metadata")
_COLUMNS = (
    "id", "name", "kind", "spiffe_id", "selectors", "x509_ttl", "jwt_ttl", "dns_names", "hint",
    "owner", "purpose", "capabilities", "roles", "metadata", "state", "expires_at", "created_by",
    "created_at", "updated_at", "revision",
)
_MUTABLE = frozenset({
    "name", "spiffe_id", "selectors", "x509_ttl", "jwt_ttl", "dns_names", "hint", "owner",
    "purpose", "capabilities", "roles", "metadata", "expires_at", "kind",
})


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    name: str
    kind: str
    spiffe_id: str
    selectors: tuple[str, ...]
    x509_ttl: int = 0  # seconds; 0 = the daemon's default
    jwt_ttl: int = 0
    dns_names: tuple[str, ...] = ()
    hint: str = ""
    owner: str = ""
    purpose: str = ""
    capabilities: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    state: str = "active"
    expires_at: int = 0
    created_by: int = 0
    created_at: int = 0
    updated_at: int = 0
    revision: int = 1

    def is_live(self, now: float) -> bool:
        return self.state == "active" and (not self.expires_at or self.expires_at > now)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("selectors", "dns_names", "capabilities", "roles"):
            d[k] = list(d[k])
        return d


#: (action, entry id, actor, before, after, reason) of one change in a bulk write
BulkChange = tuple[Action, str, str, "Entry | None", "Entry | None", str]


@dataclass(frozen=True, slots=True)
class StateChange:
    at: int
    from_state: str
    to_state: str
    reason: str
    actor: str


@dataclass(frozen=True, slots=True)
class ListFilter:
    state: str = ""
    owner: str = ""
    capability: str = ""
    role: str = ""
    kind: str = ""
    selector: str = ""
    name_prefix: str = ""

    def accepts(self, e: Entry) -> bool:
        return (
            (not self.state or e.state == self.state)
            and (not self.owner or e.owner == self.owner)
            and (not self.capability or self.capability in e.capabilities)
            and (not self.role or self.role in e.roles)
            and (not self.kind or e.kind == self.kind)
            and (not self.selector or self.selector in e.selectors)
            and e.name.startswith(self.name_prefix)
        )


def validate_selector(text: str) -> str:
    kind, sep, rest = text.partition(":")
    if not sep or not rest:
        raise InvalidRequest(f"invalid selector {text!r}: write type:value, e.g. unix:uid:1000")
    if kind not in SELECTOR_TYPES:
        raise InvalidRequest(
            f"invalid selector {text!r}: unknown type {kind!r} "
            f"(known: {', '.join(sorted(SELECTOR_TYPES))})"
        )
    if len(text) > 1024 or any(c in text for c in "\n\r\0"):
        raise InvalidRequest(f"invalid selector {text[:40]!r}: too long or control characters")
    # Values the attestor can only ever emit in one form: a typo here would never match.
    key, _, value = rest.partition(":")
    if kind == "unix" and key in ("uid", "gid") and not (
            value.isascii() and value.isdigit() and int(value) < 2**32):
        raise InvalidRequest(f"invalid selector {text!r}: {key} must be a number below 2^32")
    if kind == "unix" and key == "sha256" and not _SHA256.fullmatch(value):
        raise InvalidRequest(f"invalid selector {text!r}: sha256 must be 64 lowercase hex digits")
    return text


def validate_filter(flt: ListFilter) -> ListFilter:
    if flt.state and flt.state not in STATES:
        raise InvalidRequest(f"unknown state {flt.state!r} (known: {', '.join(STATES)})")
    if flt.kind and flt.kind not in KINDS:
        raise InvalidRequest(f"unknown kind {flt.kind!r} (known: {', '.join(sorted(KINDS))})")
    return flt


def validate_entry(e: Entry, trust_domain: str) -> Entry:
    if not e.name or len(e.name) > MAX_NAME or not e.name.isprintable():
        raise InvalidRequest(f"name must be 1..{MAX_NAME} printable characters")
    if e.kind not in KINDS:
        raise InvalidRequest(f"kind must be one of {', '.join(sorted(KINDS))}, got {e.kind!r}")
    if e.kind == "agent" and not e.owner.strip():
        raise InvalidRequest("owner is required for an agent: the accountable human (--owner)")
    if not e.selectors:
        raise InvalidRequest("an entry needs at least one selector")
    if len(e.selectors) > MAX_SELECTORS:
        raise InvalidRequest(f"at most {MAX_SELECTORS} selectors per entry")
    for s in e.selectors:
        validate_selector(s)
    sid = SpiffeId.parse(e.spiffe_id)
    if not sid.member_of(trust_domain):
        raise InvalidRequest(f"SPIFFE ID {e.spiffe_id} is not in trust domain {trust_domain}")
    if not sid.is_workload:
        raise InvalidRequest("SPIFFE ID needs a path; the bare trust domain ID is the CA's")
    if e.x509_ttl < 0 or e.jwt_ttl < 0 or e.expires_at < 0:
        raise InvalidRequest("TTLs and expiry must not be negative")
    if max(e.x509_ttl, e.jwt_ttl) > MAX_TTL_SECONDS:
        raise InvalidRequest(f"TTLs must be at most {MAX_TTL_SECONDS} seconds (3650 days)")
    if e.expires_at > MAX_TIMESTAMP:
        raise InvalidRequest("expiry must be before the year 10000")
    if e.state not in STATES:
        raise InvalidRequest(f"unknown state {e.state!r}")
    if len(e.hint.encode()) > 1024:
        raise InvalidRequest("hint is limited to 1024 bytes")
    return replace(e, selectors=tuple(sorted(set(e.selectors))))


class Registry:
    """Entries of one trust domain. Use from one thread (the event loop)."""

    def __init__(self, store: Store, roles: RoleBook, events: EventHub, trust_domain: str,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._roles = roles
        self._events = events
        self._td = trust_domain
        self._clock = clock
        self._entries: dict[str, Entry] = {}
        self._index: dict[str, set[str]] = defaultdict(set)
        roles.holders = self.holders

    def load(self) -> None:
        self._entries.clear()
        self._index.clear()
        for row in self._store.rows(f"SELECT {', '.join(_COLUMNS)} FROM entries"):  # noqa: S608
            self._remember(_from_row(row))
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

    def live_ids(self) -> set[str]:
        now = self._clock()
        return {e.id for e in self._entries.values() if e.is_live(now)}

    def active_selector_sets(self) -> Iterator[tuple[str, ...]]:
        return (e.selectors for e in self._entries.values() if e.state == "active")

    def holders(self, role: str) -> list[str]:
        return sorted(e.id for e in self._entries.values()
                      if role in e.roles and e.state != "decommissioned")

    def history(self, entry_id: str) -> list[StateChange]:
        self.get(entry_id)
        rows = self._store.rows(
            "SELECT at, from_state, to_state, reason, actor FROM state_history "
            "WHERE entry_id = ? ORDER BY seq", (entry_id,))
        return [StateChange(*r) for r in rows]

    def match(self, selectors: Iterable[str]) -> list[Entry]:
        """Live entries whose selectors are all among `selectors`, in id order."""
        have = frozenset(selectors)
        now = self._clock()
        found: dict[str, Entry] = {}
        for s in have:
            for entry_id in self._index.get(s, ()):
                e = self._entries[entry_id]
                if e.is_live(now) and have.issuperset(e.selectors):
                    found[entry_id] = e
        return [found[k] for k in sorted(found)]

    # -- changes ---------------------------------------------------------------------------

    def prepare_register(self, entry: Entry, actor_uid: int,
                         planned_roles: Collection[str] = ()) -> Entry:
        """Validate a new entry and give it its id, without writing it."""
        now = int(self._clock())
        entry_id = f"agt_{ULID()}"
        spiffe_id = entry.spiffe_id or f"spiffe://{self._td}/agent/{entry_id}"
        self._roles.check_exist(r for r in entry.roles if r not in planned_roles)
        return validate_entry(
            replace(entry, id=entry_id, spiffe_id=spiffe_id, created_at=now, updated_at=now,
                    revision=1, state="active", created_by=actor_uid),
            self._td,
        )

    def register(self, entry: Entry, actor_uid: int) -> Entry:
        e = self.prepare_register(entry, actor_uid)
        self._commit([_insert(e), _history(e.id, e.created_at, "", "active", "registered",
                                           f"uid:{actor_uid}")])
        self._remember(e)
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
        new = validate_entry(
            replace(old, **changes, updated_at=int(self._clock()), revision=old.revision + 1),
            self._td,
        )
        return old, new

    def update(self, entry_id: str, actor_uid: int, **changes: Any) -> Entry:
        old, new = self.prepare_update(entry_id, **changes)
        self._commit([_update(new)])
        self._replace(old, new)
        self._emit("update", new.id, f"uid:{actor_uid}", old, new, "")
        return new

    def transition(self, entry_id: str, action: Action, actor: str, reason: str) -> Entry:
        old = self.get(entry_id)
        to = TRANSITIONS.get((old.state, action))
        if to is None:
            raise InvalidTransition(f"cannot {action} entry {entry_id}: it is {old.state}")
        now = int(self._clock())
        new = replace(old, state=to, updated_at=now, revision=old.revision + 1)
        self._commit([_update(new), _history(entry_id, now, old.state, to, reason, actor)])
        self._replace(old, new)
        self._emit(action, entry_id, actor, old, new, reason)
        return new

    def delete(self, entry_id: str, actor_uid: int) -> Entry:
        old = self.get(entry_id)
        now = int(self._clock())
        self._commit([
            ("DELETE FROM entries WHERE id = ?", (entry_id,)),
            ("INSERT OR IGNORE INTO retired_ids (id, retired_at) VALUES (?, ?)", (entry_id, now)),
            _history(entry_id, now, old.state, "deleted", "deleted", f"uid:{actor_uid}"),
        ])
        self._forget(old)
        self._emit("delete", entry_id, f"uid:{actor_uid}", old, None, "")
        return old

    def expire_due(self) -> list[Entry]:
        """Decommission entries whose `expires_at` has passed. Returns those changed."""
        now = self._clock()
        due = [e.id for e in self._entries.values()
               if e.expires_at and e.expires_at <= now and e.state != "decommissioned"]
        return [self.transition(i, "expire", DAEMON_ACTOR, "expired") for i in due]

    # -- bulk (declarative apply) ----------------------------------------------------------

    def commit_bulk(self, statements: list[Statement], changes: list[BulkChange]) -> None:
        """Write many prepared changes in one transaction, then update memory and emit."""
        self._commit(statements)
        for action, entry_id, actor, before, after, reason in changes:
            if before is not None and after is not None:
                self._replace(before, after)
            elif after is not None:
                self._remember(after)
            self._emit(action, entry_id, actor, before, after, reason)

    # -- internals -------------------------------------------------------------------------

    def _commit(self, statements: list[Statement]) -> None:
        self._store.run(statements)

    def _emit(self, action: Action, subject: str, actor: str, before: Entry | None,
              after: Entry | None, reason: str) -> None:
        self._events.emit(ChangeEvent(
            action, subject, actor, before.as_dict() if before else None,
            after.as_dict() if after else None, reason, at=int(self._clock())))

    def _replace(self, old: Entry, new: Entry) -> None:
        self._forget(old)
        self._remember(new)

    def _remember(self, e: Entry) -> None:
        self._entries[e.id] = e
        self._index[e.selectors[0]].add(e.id)

    def _forget(self, e: Entry) -> None:
        self._entries.pop(e.id, None)
        ids = self._index.get(e.selectors[0])
        if ids is not None:
            ids.discard(e.id)
            if not ids:
                del self._index[e.selectors[0]]


def _insert(e: Entry) -> Statement:
    marks = ", ".join("?" for _ in _COLUMNS)
    return (f"INSERT INTO entries ({', '.join(_COLUMNS)}) VALUES ({marks})",  # noqa: S608
            _to_row(e))


def _update(e: Entry) -> Statement:
    sets = ", ".join(f"{c} = ?" for c in _COLUMNS[1:])
    return (f"UPDATE entries SET {sets} WHERE id = ?", (*_to_row(e)[1:], e.id))  # noqa: S608


def _history(entry_id: str, at: int, frm: str, to: str, reason: str, actor: str) -> Statement:
    return ("INSERT INTO state_history (entry_id, at, from_state, to_state, reason, actor) "
            "VALUES (?, ?, ?, ?, ?, ?)", (entry_id, at, frm, to, reason, actor))


def _to_row(e: Entry) -> tuple[Any, ...]:
    values = []
    for col in _COLUMNS:
        v = getattr(e, col)
        if col in _JSON_FIELDS:
            v = json.dumps(v if isinstance(v, dict) else list(v), sort_keys=True)
        values.append(v)
    return tuple(values)


def _from_row(row: tuple[Any, ...]) -> Entry:
    data = dict(zip(_COLUMNS, row, strict=True))
    for col in _JSON_FIELDS:
        v = json.loads(data[col])
        data[col] = v if isinstance(v, dict) else tuple(v)
    return Entry(**data)


insert_statement = _insert
update_statement = _update
history_statement = _history
