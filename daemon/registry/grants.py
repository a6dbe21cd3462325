"""Standing delegation grants: a human allowed an agent to act for them, within scopes.

A grant stands in for `may_act` in the human's token. Revoking one stops further exchanges at
once; tokens already issued run out by their (short) TTL.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import replace

from ulid import ULID

from ensign.daemon.errors import InvalidRequest, InvalidTransition, NotFound
from ensign.daemon.registry.events import ChangeEvent, EventHub
from ensign.daemon.registry.model import Grant
from ensign.daemon.registry.store import PutGrant, RegistryStore
from ensign.daemon.units import MAX_TTL_SECONDS


class GrantBook:
    def __init__(self, store: RegistryStore, events: EventHub,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._events = events
        self._clock = clock
        self._grants: dict[str, Grant] = {}

    async def load(self) -> None:
        self._grants = {g.id: g for g in await self._store.grants()}

    async def create(self, grant: Grant, actor: str, ttl: int = 0) -> Grant:
        if not grant.subject or not grant.issuer or not grant.agent_id:
            raise InvalidRequest("a grant needs --subject, --issuer and --agent")
        if not grant.scopes or any(not s or " " in s for s in grant.scopes):
            raise InvalidRequest("a grant needs at least one scope (no spaces)")
        if not 0 <= ttl <= MAX_TTL_SECONDS:
            raise InvalidRequest(f"ttl must be between 0 and {MAX_TTL_SECONDS} seconds (3650 days)")
        now = int(self._clock())
        g = replace(grant, id=f"grt_{ULID()}", created_at=now,
                    expires_at=now + ttl if ttl else 0, revoked_at=0, created_by=actor,
                    scopes=tuple(dict.fromkeys(grant.scopes)))
        await self._store.write([PutGrant(g, new=True)])
        self._grants.setdefault(g.id, g)
        self._events.emit(ChangeEvent("grant_create", g.id, actor, None, g.as_dict(), at=now))
        return g

    async def revoke(self, grant_id: str, actor: str, reason: str) -> Grant:
        old = self.get(grant_id)
        if old.revoked_at:
            raise InvalidTransition(f"grant {grant_id} is already revoked")
        now = int(self._clock())
        new = replace(old, revoked_at=now)
        await self._store.write([PutGrant(new)])
        self._grants[grant_id] = new
        self._events.emit(ChangeEvent("grant_revoke", grant_id, actor, old.as_dict(),
                                      new.as_dict(), reason, at=now))
        return new

    def apply_remote(self, grants: Iterable[Grant]) -> int:
        """Take grants as the shared database holds them now (fleet); emit what differs. A
        grant only moves forward: created, then revoked."""
        changed = 0
        for g in grants:
            held = self._grants.get(g.id)
            if held == g or (held is not None and held.revoked_at and not g.revoked_at):
                continue
            self._grants[g.id] = g
            self._events.emit(ChangeEvent(
                "grant_create" if held is None else "grant_revoke", g.id, "fleet",
                held.as_dict() if held else None, g.as_dict(), at=int(self._clock()),
                origin="fleet"))
            changed += 1
        return changed

    def get(self, grant_id: str) -> Grant:
        try:
            return self._grants[grant_id]
        except KeyError:
            raise NotFound(f"no grant with id {grant_id!r}") from None

    def entries(self, agent_id: str = "", subject: str = "",
             include_revoked: bool = False) -> list[Grant]:
        now = self._clock()
        return sorted(
            (g for g in self._grants.values()
             if (not agent_id or g.agent_id == agent_id)
             and (not subject or g.subject == subject)
             and (include_revoked or g.is_active(now))),
            key=lambda g: g.id)

    def find(self, subject: str, issuer: str, agent_id: str) -> Grant | None:
        """The newest active grant from this human (at this IdP) to this agent."""
        now = self._clock()
        found = [g for g in self._grants.values()
                 if g.subject == subject and g.issuer == issuer and g.agent_id == agent_id
                 and g.is_active(now)]
        return max(found, key=lambda g: g.id) if found else None
