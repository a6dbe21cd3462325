"""One node's part in a fleet: its checks at start, its row, its published keys, the listener
that keeps its copy of the registry current, the heartbeat and the audit shipper.

Nothing on the issuing path waits on the database: the registry is served from memory, the JWT
bundle from the last keys read, the audit trail from the local log. When the database goes
away the listener says so (health, `ensign status`), registry writes are refused at once, and
when it returns the listener reconnects, LISTENs again and reads every change above the version
it holds, so nothing made meanwhile is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

import psycopg

from ensign.daemon.audit import PUBLIC_KEY, AuditLog
from ensign.daemon.config import Config, node_name
from ensign.daemon.delegation import DelegationKeys
from ensign.daemon.errors import ConfigError
from ensign.daemon.fleet import keys as fleet_keys
from ensign.daemon.fleet.schema import ADMIN_ROLE, NODE_ROLE, check_version, connect
from ensign.daemon.fleet.schema import current_version as schema_version
from ensign.daemon.fleet.ship import Shipper, issuance
from ensign.daemon.issuing import CertificateAuthority
from ensign.daemon.registry import GrantBook, Registry, RoleBook
from ensign.daemon.registry.postgres import REGISTRY_CHANNEL, PgStore, describe, one_line

log = logging.getLogger(__name__)

RETRY_MAX = 5.0  # seconds between reconnection attempts at most


def _software() -> str:
    try:
        return f"ensign {metadata.version('ensign')}"
    except metadata.PackageNotFoundError:
        return "ensign"


class Fleet:
    def __init__(self, config: Config, store: PgStore, registry: Registry, roles: RoleBook,
                 grants: GrantBook, ca: CertificateAuthority, delegation: DelegationKeys,
                 audit: AuditLog, clock: Callable[[], datetime],
                 on_change: Callable[[], None]) -> None:
        self._cfg = config.fleet
        self.node = node_name(config)
        self.store = store
        self._registry, self._roles, self._grants = registry, roles, grants
        self._ca = ca
        self._delegation = delegation
        self._audit = audit
        self._on_change = on_change
        self.keys = fleet_keys.FleetKeys(ca, self.node, clock)
        self.shipper = Shipper(audit.dir, self.node, lambda: audit.seq, store.connection)
        self.applied = 0  # the registry version this node's copy holds
        self.down: str | None = "not connected yet"
        self.down_since: float | None = None
        self._published: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
        self._owners: dict[str, str] = {}  # kid -> node, the other nodes' published keys
        self._sync_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._interval = self._cfg.heartbeat_interval.total_seconds()
        self._timeout = self._cfg.connect_timeout.total_seconds()

    # -- start: refuse bad input before anything is written ----------------------------------

    async def check(self) -> None:
        """Reach the database with each configured role and check the schema and what the role
        may do. Any failure is a ConfigError (exit 78) naming the database; nothing is written."""
        for url, group in ((self._cfg.database_url, NODE_ROLE),
                           (self._cfg.admin_database_url, ADMIN_ROLE)):
            if not url:
                continue
            conn = await connect(url, self._timeout, autocommit=True)
            try:
                check_version(await schema_version(conn), url)
                cur = await conn.execute(
                    "SELECT current_user, rolsuper OR rolbypassrls, "
                    "pg_has_role(current_user, %s, 'member') FROM pg_roles "
                    "WHERE rolname = current_user", (group,))
                row = await cur.fetchone()
            except psycopg.Error as e:
                raise ConfigError(f"fleet database {describe(url)}: {one_line(e)}") from None
            finally:
                await conn.close()
            user, bypass, member = row if row else ("?", False, False)
            if bypass:
                continue
            if group == NODE_ROLE and (user != self.node or not member):
                raise ConfigError(
                    f"fleet database {describe(url)}: role {user!r} cannot act as node "
                    f"{self.node!r}: a node's login role is named after the node (node_name) "
                    f"and is a member of {NODE_ROLE} (`ensign fleet init --node {self.node}`)")
            if group == ADMIN_ROLE and not member:
                raise ConfigError(
                    f"fleet database {describe(url)}: role {user!r} in admin_database_url is not "
                    f"a member of {ADMIN_ROLE} (`ensign fleet init --admin {user}`)")

    async def start(self) -> None:
        """After the registry is loaded, the audit log open and the CA ready: announce this node,
        publish its keys, read the others', then keep all of it current in the background."""
        self.applied = self.store.version
        async with self.store.connection() as conn:
            chain_ok = await self._register(conn)
            await self._publish(conn)
            self._take_keys(await fleet_keys.load(conn))
        self._mark_up()
        self._spawn(self._listen(), "fleet-listener")
        self._spawn(self._heartbeat(), "fleet-heartbeat")
        if chain_ok:
            self._spawn(self.shipper.run(), "fleet-audit-shipper")

    async def _register(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        """Insert or refresh this node's row; False when the trail shipped under this node name
        is another chain (a new data dir under an old name): that one is not overwritten."""
        try:
            public_pem = (self._audit.dir / PUBLIC_KEY).read_text()
        except OSError:
            public_pem = ""
        cur = await conn.execute(
            "INSERT INTO nodes (name, started_at, heartbeat_at, software, registry_version, "
            "audit_chain, audit_public_key, audit_seq) VALUES (%s, now(), now(), %s, %s, %s, %s, "
            "%s) ON CONFLICT (name) DO UPDATE SET started_at = now(), heartbeat_at = now(), "
            "software = excluded.software, registry_version = excluded.registry_version, "
            "audit_seq = excluded.audit_seq, problem = '', "
            "audit_chain = CASE WHEN nodes.audit_shipped = 0 THEN excluded.audit_chain "
            "ELSE nodes.audit_chain END, "
            "audit_public_key = CASE WHEN nodes.audit_shipped = 0 "
            "THEN excluded.audit_public_key ELSE nodes.audit_public_key END "
            "RETURNING audit_chain",
            (self.node, _software(), self.applied, self._audit.chain, public_pem,
             self._audit.seq))
        row = await cur.fetchone()
        if row is not None and row[0] != self._audit.chain:
            self.shipper.problem = (
                f"audit shipping off: node {self.node} shipped another audit chain ({row[0]}); "
                "this data dir's chain is not shipped (give this node another node_name)")
            log.error("audit shipping off", extra={"reason": self.shipper.problem})
            return False
        return True

    def _own_kids(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return (tuple(a.jwt_kid for a in self._ca.authorities()),
                tuple(k.kid for k in self._delegation.published()))

    async def _publish(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """This node's JWT-SVID keys and its delegated-token keys, each under its own use."""
        own = fleet_keys.own_keys(self._ca, self.node)
        await fleet_keys.publish(conn, self.node, own, fleet_keys.JWT_SVID)
        delegation = fleet_keys.own_delegation_keys(self._delegation, self.node)
        await fleet_keys.publish(conn, self.node, delegation, fleet_keys.DELEGATION)
        self._published = (tuple(k.kid for k in own), tuple(k.kid for k in delegation))

    def _take_keys(self, published: list[fleet_keys.PublishedKey]) -> None:
        """The other nodes' keys: JWT-SVID keys into the bundle (streams told when it changed),
        delegation keys into the delegated-token key set."""
        self._owners = {k.kid: k.node for k in published if k.node != self.node}
        self._delegation.set_others(fleet_keys.others_of(published, self.node,
                                                         fleet_keys.DELEGATION))
        if self.keys.set_remote(published):
            self._on_change()

    def key_owner(self, kid: str) -> str:
        """The other node whose published key `kid` is (JWT-SVID or delegated-token key); ""
        for this node's own keys and unknown ones."""
        return self._owners.get(kid, "")

    async def issuance(self, node: str, jti: str) -> dict[str, Any] | None:
        """`node`'s issuance record of `jti` as shipped (its attribution fields only); None when
        not (yet) there; raises when the database cannot be asked."""
        async with self.store.connection() as conn:
            return await issuance(conn, node, jti)

    def _spawn(self, coro: Any, name: str) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(coro, name=name))

    async def stop(self) -> None:
        """Stop listening; ship what the log holds now (its last records), briefly."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self.down is None and self.shipper.problem is None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.shipper.ship_once(), self._timeout)

    # -- the copy of the registry ----------------------------------------------------------

    async def resync(self) -> int:
        """Apply every change above the version held. Returns the version held after."""
        async with self._sync_lock:
            changes = await self.store.changes_since(self.applied)
            if changes.version > self.applied:
                # One loop step, no await between: no request sees half a change.
                self._roles.apply_remote(changes.roles, changes.deleted_roles)
                self._registry.apply_remote(changes.entries, changes.retired)
                self._grants.apply_remote(changes.grants)
                self.applied = changes.version
            return self.applied

    async def _listen(self) -> None:
        backoff = 0.1
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._cfg.database_url, autocommit=True,
                    connect_timeout=max(1, int(self._timeout)))
                async with conn:
                    await conn.execute(f"LISTEN {REGISTRY_CHANNEL}")
                    await conn.execute(f"LISTEN {fleet_keys.KEYS_CHANNEL}")
                    await self.resync()  # what changed while we were not listening
                    await self._reload_keys()
                    self._mark_up()
                    backoff = 0.1
                    while True:
                        async for n in conn.notifies(timeout=self._interval):
                            if n.channel == REGISTRY_CHANNEL:
                                await self.resync()
                            else:
                                await self._reload_keys()
                        await conn.execute("SELECT 1")  # still there?
                        await self.resync()  # a safety net: cheap when nothing is new
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._mark_down(one_line(e))
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RETRY_MAX)

    async def _reload_keys(self) -> None:
        async with self.store.connection() as conn:
            published = await fleet_keys.load(conn)
        self._take_keys(published)

    def _mark_down(self, reason: str) -> None:
        if self.down is None:
            self.down_since = time.time()
            log.error("fleet database unreachable: serving from the local copy, registry "
                      "writes refused", extra={"database": describe(self._cfg.database_url),
                                               "reason": reason})
        self.down = reason
        self.store.down = reason

    def _mark_up(self) -> None:
        if self.down is not None and self.down_since is not None:
            log.info("fleet database reachable again", extra={
                "database": describe(self._cfg.database_url), "registry_version": self.applied})
        self.down, self.down_since, self.store.down = None, None, None

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                async with self.store.connection() as conn:
                    await conn.execute(
                        "UPDATE nodes SET heartbeat_at = now(), registry_version = %s, "
                        "audit_seq = %s, problem = %s WHERE name = %s",
                        (self.applied, self._audit.seq, self.shipper.problem or "", self.node))
                    if self._own_kids() != self._published:
                        await self._publish(conn)
                    published = await fleet_keys.load(conn)
                self._take_keys(published)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.debug("fleet heartbeat failed", extra={"reason": str(e)})

    # -- what operators read ---------------------------------------------------------------

    def notice(self) -> str | None:
        """Why this node is degraded though it issues (None: all well)."""
        if self.down is not None:
            since = datetime.fromtimestamp(self.down_since or time.time(), UTC)
            return (f"fleet database {describe(self._cfg.database_url)} unreachable since "
                    f"{since.isoformat(timespec='seconds')} ({self.down}): serving from the "
                    f"local copy of the registry (version {self.applied}); registry writes are "
                    "refused until it returns")
        return self.shipper.problem

    def status(self) -> dict[str, str]:
        return {
            "node": self.node,
            "database": describe(self._cfg.database_url),
            "connected": "yes" if self.down is None else f"no: {self.down}",
            "registry_version": str(self.applied),
            "audit_shipped": str(self.shipper.shipped),
            "registry_writes": "yes" if self._cfg.admin_database_url else "no (no admin role)",
            "jwt_keys": ", ".join(sorted(self.keys.jwt_keys())),
            "delegation_keys": ", ".join(sorted(self._delegation.verification_keys())),
        }
