"""The role book: roles kept in memory over the registry store; every change an event.

`holders(name)` lists the agents holding a role (set by the Registry), so a held role is never
deleted from under its agents.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from ensign.daemon.errors import FailedPrecondition, InvalidRequest, NotFound
from ensign.daemon.registry.events import Action, ChangeEvent, EventHub
from ensign.daemon.registry.policy import Role, validate_role
from ensign.daemon.registry.store import DeleteRole, PutRole, RegistryStore

#: (action, before, after) of one role change prepared for a bulk write
RoleChange = tuple[Action, Role | None, Role]


class RoleBook:
    """Roles in the store, cached in memory. `holders(name)` lists the agents holding a role."""

    def __init__(self, store: RegistryStore, events: EventHub,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._events = events
        self._clock = clock
        self._roles: dict[str, Role] = {}
        self.holders: Callable[[str], list[str]] = lambda name: []

    async def load(self) -> None:
        self._roles = {r.name: r for r in await self._store.roles()}

    @property
    def all(self) -> Mapping[str, Role]:
        return self._roles

    def get(self, name: str) -> Role:
        try:
            return self._roles[name]
        except KeyError:
            raise NotFound(f"no role named {name!r}") from None

    def check_exist(self, names: Iterable[str]) -> None:
        unknown = [n for n in names if n not in self._roles]
        if unknown:
            raise InvalidRequest(f"unknown role(s): {', '.join(unknown)}")

    def prepare_create(self, role: Role) -> Role:
        now = int(self._clock())
        return validate_role(replace(role, created_at=now, updated_at=now, revision=1))

    def prepare_update(self, name: str, **changes: Any) -> tuple[Role, Role]:
        old = self.get(name)
        if "name" in changes and changes["name"] != name:
            raise InvalidRequest("a role cannot be renamed; create a new one")
        now = int(self._clock())
        return old, validate_role(replace(old, **changes, updated_at=now,
                                          revision=old.revision + 1))

    async def create(self, role: Role, actor: str) -> Role:
        role = self.prepare_create(role)
        await self._store.write([PutRole(role, new=True)])
        self.accepted([("role_create", None, role)], actor)
        return role

    async def update(self, name: str, actor: str, **changes: Any) -> Role:
        old, new = self.prepare_update(name, **changes)
        await self._store.write([PutRole(new)])
        self.accepted([("role_update", old, new)], actor)
        return new

    async def delete(self, name: str, actor: str) -> Role:
        old = self.get(name)
        holders = self.holders(name)
        if holders:
            shown = ", ".join(holders[:10]) + (" ..." if len(holders) > 10 else "")
            raise FailedPrecondition(f"role {name} is held by {len(holders)} agent(s): {shown}")
        await self._store.write([DeleteRole(name)])
        self._roles.pop(name, None)
        self._emit("role_delete", name, actor, old, None)
        return old

    def accepted(self, changes: Iterable[RoleChange], actor: str) -> None:
        """Prepared role writes are committed: update memory (unless a later write of the role
        is held already) and emit."""
        for action, before, after in changes:
            held = self._roles.get(after.name)
            if held is None or not _newer(held, after):
                self._roles[after.name] = after
            self._emit(action, after.name, actor, before, after)

    def apply_remote(self, roles: Iterable[Role], deleted: Iterable[str]) -> int:
        """Take roles as the shared database holds them now (fleet); emit what differs."""
        changed = 0
        for name in deleted:
            old = self._roles.pop(name, None)
            if old is not None:
                self._emit("role_delete", name, "fleet", old, None, origin="fleet")
                changed += 1
        for role in roles:
            held = self._roles.get(role.name)
            if held == role or (held is not None and _newer(held, role)):
                continue
            self._roles[role.name] = role
            self._emit("role_create" if held is None else "role_update", role.name, "fleet",
                       held, role, origin="fleet")
            changed += 1
        return changed

    def _emit(self, action: Action, name: str, actor: str, before: Role | None,
              after: Role | None, origin: str = "") -> None:
        self._events.emit(ChangeEvent(
            action, name, actor, before.as_dict() if before else None,
            after.as_dict() if after else None, at=int(self._clock()), origin=origin))


def _newer(held: Role, incoming: Role) -> bool:
    return (held.created_at, held.revision) > (incoming.created_at, incoming.revision)
