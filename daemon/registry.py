"""The agent registry: SQLite (WAL) on disk, an in-memory selector index for matching.

An entry matches a caller when every one of the entry's selectors is among the caller's. The
index maps each entry's rarest-looking selector (its first, sorted) to the entry, so a match
looks only at entries that share at least that selector with the caller. No gRPC here.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ulid import ULID

from .errors import Conflict, InvalidRequest, NotFound, StoreError
from .spiffe_id import SpiffeId

log = logging.getLogger(__name__)

SELECTOR_TYPES = frozenset({"unix", "systemd", "sigstore", "tpm"})
KINDS = frozenset({"agent", "service"})
STATES = frozenset({"active", "suspended", "decommissioned"})
MAX_SELECTORS = 64
MAX_NAME = 128

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    spiffe_id TEXT NOT NULL,
    selectors TEXT NOT NULL,
    x509_ttl INTEGER NOT NULL DEFAULT 0,
    jwt_ttl INTEGER NOT NULL DEFAULT 0,
    dns_names TEXT NOT NULL DEFAULT '[]',
    hint TEXT NOT NULL DEFAULT '',
    owner TEXT NOT NULL DEFAULT '',
    purpose TEXT NOT NULL DEFAULT '',
    capabilities TEXT NOT NULL DEFAULT '[]',
    roles TEXT NOT NULL DEFAULT '[]',
    metadata TEXT NOT NULL DEFAULT '{}',
    state TEXT NOT NULL DEFAULT 'active',
    expires_at INTEGER NOT NULL DEFAULT 0,
    created_by INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    revision INTEGER NOT NULL DEFAULT 1
);
CREATE UNIQUE INDEX IF NOT EXISTS entries_live_name ON entries(name)
    WHERE state != 'decommissioned';
CREATE TABLE IF NOT EXISTS retired_ids (id TEXT PRIMARY KEY, retired_at INTEGER NOT NULL);
"""
_JSON_FIELDS = ("selectors", "dns_names", "capabilities", "roles", "metadata")
_COLUMNS = (
    "id", "name", "kind", "spiffe_id", "selectors", "x509_ttl", "jwt_ttl", "dns_names", "hint",
    "owner", "purpose", "capabilities", "roles", "metadata", "state", "expires_at", "created_by",
    "created_at", "updated_at", "revision",
)


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
    return text


def validate_entry(e: Entry, trust_domain: str) -> Entry:
    if not e.name or len(e.name) > MAX_NAME or any(c.isspace() and c != " " for c in e.name):
        raise InvalidRequest(f"name must be 1..{MAX_NAME} printable characters")
    if e.kind not in KINDS:
        raise InvalidRequest(f"kind must be one of {', '.join(sorted(KINDS))}, got {e.kind!r}")
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
    if e.x509_ttl < 0 or e.jwt_ttl < 0:
        raise InvalidRequest("TTLs must not be negative")
    if e.state not in STATES:
        raise InvalidRequest(f"unknown state {e.state!r}")
    if len(e.hint.encode()) > 1024:
        raise InvalidRequest("hint is limited to 1024 bytes")
    return replace(e, selectors=tuple(sorted(set(e.selectors))))


class Registry:
    """Entries of one trust domain. Use from one thread (the event loop)."""

    def __init__(self, path: Path, trust_domain: str, clock: Callable[[], float] = time.time):
        self._path = path
        self._td = trust_domain
        self._clock = clock
        self._db: sqlite3.Connection | None = None
        self._entries: dict[str, Entry] = {}
        self._index: dict[str, set[str]] = defaultdict(set)
        self._listeners: list[Callable[[], None]] = []

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(_SCHEMA)
            self._path.chmod(0o600)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open registry {self._path}: {e}") from None
        self._db = db
        for row in db.execute(f"SELECT {', '.join(_COLUMNS)} FROM entries"):  # noqa: S608
            self._remember(_from_row(row))
        log.info("registry loaded", extra={"entries": len(self._entries)})

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call `listener` after every change (the SVID cache wakes its streams from it)."""
        self._listeners.append(listener)

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

    def register(self, entry: Entry) -> Entry:
        now = int(self._clock())
        entry_id = f"agt_{ULID()}"
        spiffe_id = entry.spiffe_id or f"spiffe://{self._td}/agent/{entry_id}"
        e = validate_entry(
            replace(entry, id=entry_id, spiffe_id=spiffe_id, created_at=now, updated_at=now,
                    revision=1),
            self._td,
        )
        self._write_new(e)
        self._remember(e)
        self._changed()
        return e

    def update(self, entry_id: str, **changes: Any) -> Entry:
        old = self.get(entry_id)
        for immutable in ("id", "created_at", "created_by", "revision"):
            if immutable in changes:
                raise InvalidRequest(f"{immutable} cannot be changed")
        new = validate_entry(
            replace(old, **changes, updated_at=int(self._clock()), revision=old.revision + 1),
            self._td,
        )
        sets = ", ".join(f"{c} = ?" for c in _COLUMNS[1:])
        self._execute(f"UPDATE entries SET {sets} WHERE id = ?", (*_to_row(new)[1:], new.id))  # noqa: S608 (constant columns)
        self._forget(old)
        self._remember(new)
        self._changed()
        return new

    def delete(self, entry_id: str) -> Entry:
        old = self.get(entry_id)
        now = int(self._clock())
        self._transaction([
            ("DELETE FROM entries WHERE id = ?", (entry_id,)),
            ("INSERT OR IGNORE INTO retired_ids (id, retired_at) VALUES (?, ?)", (entry_id, now)),
        ])
        self._forget(old)
        self._changed()
        return old

    # -- internals -------------------------------------------------------------------------

    def _write_new(self, e: Entry) -> None:
        marks = ", ".join("?" for _ in _COLUMNS)
        self._execute(f"INSERT INTO entries ({', '.join(_COLUMNS)}) VALUES ({marks})", _to_row(e))  # noqa: S608 (constant columns)

    def _execute(self, sql: str, args: tuple[Any, ...]) -> None:
        self._transaction([(sql, args)])

    def _transaction(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        if self._db is None:
            raise StoreError("registry is closed")
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    self._db.execute(sql, args)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.IntegrityError as e:
            if "name" in str(e):
                raise Conflict("an active entry with that name already exists") from None
            raise Conflict(f"registry constraint failed: {e}") from None
        except sqlite3.OperationalError as e:
            raise StoreError(f"registry write failed: {e}") from None

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

    def _changed(self) -> None:
        for listener in self._listeners:
            try:
                listener()
            except Exception:
                log.exception("registry listener failed")


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
