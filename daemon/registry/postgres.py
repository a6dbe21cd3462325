"""The registry on PostgreSQL (a fleet's shared database): reads as this node's role, writes as
the admin role, each write one transaction that moves the registry version by one.

Every admin write takes the one `registry_head` row's lock and bumps its version, so versions are
handed out in commit order: a node that applied everything up to version N and reads what has a
version above N misses nothing. Rows carry the version that last wrote them; deletions leave a
row in `retired_ids` (entries) or `role_tombstones` (roles). The node's copy in memory is kept by
the fleet's listener (`ensign.daemon.fleet`), which calls `changes_since()`.

An update names the revision it replaces: a write made from a copy that another node has moved on
from is refused (Conflict) instead of overwriting that node's change. The schema itself is the
fleet's (`ensign fleet init`); this module only reads and writes rows.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ensign.daemon.errors import (
    Conflict,
    DatabaseUnavailable,
    NotFound,
    PermissionDenied,
    StoreError,
)
from ensign.daemon.registry.model import Entry, Grant, StateChange
from ensign.daemon.registry.policy import Role
from ensign.daemon.registry.sqlite import (
    ENTRY_COLUMNS,
    GRANT_COLUMNS,
    ROLE_COLUMNS,
    entry_from_row,
    entry_row,
    grant_from_row,
    grant_row,
    role_from_row,
    role_row,
)
from ensign.daemon.registry.store import (
    DeleteEntry,
    DeleteRole,
    PutEntry,
    PutGrant,
    PutRole,
    RecordState,
    Write,
)

log = logging.getLogger(__name__)

#: The channel every registry write notifies (payload: the new version).
REGISTRY_CHANNEL = "ensign_registry"


def describe(url: str) -> str:
    """The database a URL names, safe to print: user@host:port/dbname, no credentials or paths."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        parts = urllib.parse.urlsplit(url)
        return f"{parts.hostname or '?'}{parts.path}"
    host = str(info.get("host") or "localhost")
    if host.startswith("/"):
        host = "unix socket"
    port = info.get("port") or "5432"
    user = f"{info['user']}@" if info.get("user") else ""
    return f"postgresql://{user}{host}:{port}/{info.get('dbname') or ''}"


def one_line(e: BaseException) -> str:
    """A psycopg error as one line: libpq's messages span lines (FATAL, DETAIL, HINT)."""
    text = " ".join(str(e).split())
    return text.removeprefix("connection failed: ") or type(e).__name__


def unavailable(url: str, e: BaseException) -> DatabaseUnavailable:
    reason = ("no connection could be made in time" if isinstance(e, PoolTimeout)
              else one_line(e))
    return DatabaseUnavailable(f"fleet database {describe(url)} unavailable: {reason}")


@dataclass
class Changes:
    """What the registry looks like above a version: rows written since, and deletions."""

    version: int
    entries: list[Entry] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)
    roles: list[Role] = field(default_factory=list)
    deleted_roles: list[str] = field(default_factory=list)
    grants: list[Grant] = field(default_factory=list)


class PgStore:
    """`RegistryStore` on the fleet's PostgreSQL. Reads use this node's role (`url`); writes
    use the admin role (`admin_url`), and are refused when this node has none."""

    def __init__(self, url: str, admin_url: str, node: str, timeout: float = 5.0) -> None:
        self.url = url
        self.admin_url = admin_url
        self.node = node
        self.timeout = timeout
        self.version = 0  # of the snapshot open() read
        #: Set by the fleet's listener while the database is unreachable: writes fail at once
        #: with this reason instead of waiting for a connection.
        self.down: str | None = None
        self._snapshot: Changes | None = None
        self.pool = self._pool(url, "ensign-node", 4)
        self._admin = self._pool(admin_url, "ensign-admin", 2) if admin_url else None

    def _pool(self, url: str, name: str, size: int) -> AsyncConnectionPool:
        return AsyncConnectionPool(
            url, min_size=0, max_size=size, open=False, name=name, timeout=self.timeout,
            kwargs={"connect_timeout": max(1, int(self.timeout)), "autocommit": True},
            check=AsyncConnectionPool.check_connection)

    @asynccontextmanager
    async def connection(self, admin: bool = False) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection as this node's role (or the admin role); errors of reach become
        DatabaseUnavailable naming the database."""
        pool = self._admin if admin else self.pool
        url = self.admin_url if admin else self.url
        assert pool is not None
        try:
            async with pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, PoolTimeout) as e:
            raise unavailable(url, e) from None

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        await self.pool.open(wait=False)
        if self._admin is not None:
            await self._admin.open(wait=False)
        self._snapshot = await self.changes_since(0)
        self.version = self._snapshot.version

    async def close(self) -> None:
        await self.pool.close()
        if self._admin is not None:
            await self._admin.close()

    # -- reads -----------------------------------------------------------------------------

    async def entries(self) -> list[Entry]:
        return self._snap().entries

    async def roles(self) -> list[Role]:
        return self._snap().roles

    async def grants(self) -> list[Grant]:
        return self._snap().grants

    def _snap(self) -> Changes:
        if self._snapshot is None:
            raise StoreError("registry is not open")
        return self._snapshot

    async def history(self, entry_id: str) -> list[StateChange]:
        if self.down is not None:
            raise DatabaseUnavailable(f"fleet database {describe(self.url)} unavailable: "
                                      f"{self.down}")
        async with self.connection() as conn:
            cur = await conn.execute(
                "SELECT at, from_state, to_state, reason, actor FROM state_history "
                "WHERE entry_id = %s ORDER BY seq", (entry_id,))
            return [StateChange(*r) for r in await cur.fetchall()]

    async def changes_since(self, version: int) -> Changes:
        """Everything written above `version`, read in one consistent snapshot."""
        async with self.connection() as conn, conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            cur = await conn.execute("SELECT version FROM registry_head WHERE id = 1")
            row = await cur.fetchone()
            out = Changes(version=int(row[0]) if row else 0)
            if out.version <= version:
                return out

            async def rows(sql: str) -> list[tuple[Any, ...]]:
                return await (await conn.execute(sql, (version,))).fetchall()

            out.entries = [entry_from_row(r) for r in await rows(
                f"SELECT {', '.join(ENTRY_COLUMNS)} FROM entries WHERE version > %s")]  # noqa: S608
            out.retired = [r[0] for r in await rows(
                "SELECT id FROM retired_ids WHERE version > %s")]
            out.roles = [role_from_row(r) for r in await rows(
                f"SELECT {', '.join(ROLE_COLUMNS)} FROM roles WHERE version > %s")]  # noqa: S608
            out.deleted_roles = [r[0] for r in await rows(
                "SELECT name FROM role_tombstones WHERE version > %s ORDER BY version")]
            out.grants = [grant_from_row(r) for r in await rows(
                f"SELECT {', '.join(GRANT_COLUMNS)} FROM grants WHERE version > %s")]  # noqa: S608
            return out

    # -- writes ----------------------------------------------------------------------------

    async def write(self, writes: Sequence[Write]) -> None:
        if not writes:
            return
        if self._admin is None:
            raise PermissionDenied(
                f"node {self.node} has no fleet admin credentials ([fleet] admin_database_url): "
                "registry changes are made on a node that has them")
        if self.down is not None:
            raise DatabaseUnavailable(
                f"fleet database {describe(self.admin_url)} unavailable: {self.down}")
        try:
            async with self.connection(admin=True) as conn, conn.transaction():
                cur = await conn.execute(
                    "UPDATE registry_head SET version = version + 1 WHERE id = 1 "
                    "RETURNING version")
                row = await cur.fetchone()
                if row is None:
                    raise StoreError("the fleet database has no registry head: run "
                                     "`ensign fleet init`")
                version = int(row[0])
                for w in writes:
                    await self._apply(conn, version, w)
                await conn.execute("SELECT pg_notify(%s, %s)", (REGISTRY_CHANNEL, str(version)))
        except pg_errors.UniqueViolation as e:
            what = e.diag.constraint_name or ""
            if "entries_live_name" in what:
                raise Conflict("an active entry with that name already exists") from None
            if "roles_pkey" in what:
                raise Conflict("a role with that name already exists") from None
            raise Conflict(f"registry constraint failed: {one_line(e)}") from None
        except pg_errors.InsufficientPrivilege:
            raise PermissionDenied(
                f"the database role of {describe(self.admin_url)} may not write the registry: "
                "registry writes need a member of ensign_admin") from None
        except psycopg.OperationalError as e:
            raise unavailable(self.admin_url, e) from None
        except psycopg.Error as e:
            raise StoreError(f"registry write failed: {one_line(e)}") from None

    async def _apply(self, conn: psycopg.AsyncConnection[Any], version: int, w: Write) -> None:
        async def run(sql: str, args: tuple[Any, ...]) -> int:
            cur = await conn.execute(sql, args)
            return cur.rowcount

        match w:
            case PutEntry(entry=e, new=True):
                await _insert(run, "entries", ENTRY_COLUMNS, entry_row(e), version)
            case PutEntry(entry=e):
                n = await _update(run, "entries", ENTRY_COLUMNS, entry_row(e), version,
                                  "id", "revision", e.revision - 1)
                if n != 1:
                    raise Conflict(f"agent {e.id} was changed on another node (or removed): "
                                   "show it again and retry")
            case DeleteEntry(entry_id=i, at=at):
                if await run("DELETE FROM entries WHERE id = %s", (i,)) != 1:
                    raise NotFound(f"no entry with id {i!r}")
                await run("INSERT INTO retired_ids (id, retired_at, version) VALUES (%s, %s, %s) "
                          "ON CONFLICT (id) DO NOTHING", (i, at, version))
            case RecordState():
                await run("INSERT INTO state_history (entry_id, at, from_state, to_state, reason, "
                          "actor, node) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                          (w.entry_id, w.at, w.from_state, w.to_state, w.reason, w.actor,
                           self.node))
            case PutRole(role=r, new=True):
                await _insert(run, "roles", ROLE_COLUMNS, role_row(r), version)
            case PutRole(role=r):
                n = await _update(run, "roles", ROLE_COLUMNS, role_row(r), version, "name",
                                  "revision", r.revision - 1)
                if n != 1:
                    raise Conflict(f"role {r.name} was changed on another node (or removed): "
                                   "show it again and retry")
            case DeleteRole(name=name):
                if await run("DELETE FROM roles WHERE name = %s", (name,)) != 1:
                    raise NotFound(f"no role named {name!r}")
                await run("INSERT INTO role_tombstones (name, version) VALUES (%s, %s)",
                          (name, version))
            case PutGrant(grant=g, new=True):
                await _insert(run, "grants", GRANT_COLUMNS, grant_row(g), version)
            case PutGrant(grant=g):  # the one change a grant sees: its revocation
                n = await _update(run, "grants", GRANT_COLUMNS, grant_row(g), version, "id",
                                  "revoked_at", 0)
                if n != 1:
                    raise Conflict(f"grant {g.id} was already revoked on another node")
            case _:
                raise TypeError(f"unknown registry write {w!r}")


async def _insert(run: Any, table: str, columns: Sequence[str], row: tuple[Any, ...],
                  version: int) -> None:
    marks = ", ".join("%s" for _ in range(len(columns) + 1))
    await run(f"INSERT INTO {table} ({', '.join(columns)}, version) "  # noqa: S608
              f"VALUES ({marks})", (*row, version))


async def _update(run: Any, table: str, columns: Sequence[str], row: tuple[Any, ...],
                  version: int, key: str, guard: str, expected: Any) -> int:
    """Replace a row only if `guard` still holds `expected` (what the writer last saw)."""
    sets = ", ".join(f"{c} = %s" for c in columns[1:])
    n: int = await run(f"UPDATE {table} SET {sets}, version = %s "  # noqa: S608
                       f"WHERE {key} = %s AND {guard} = %s",
                       (*row[1:], version, row[0], expected))
    return n
