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
from ensign.daemon.registry.events import ChangeEvent, EventHub
from ensign.daemon.registry.policy import Role, validate_role
from ensign.daemon.registry.store import DeleteRole, PutRole, RegistryStore


class RoleBook:
    """Roles in the store, cached in memory. `holders(name)` lists the agents holding a role."""

    def __init__(self, store: RegistryStore, events: EventHub,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._events = events
        self._clock = clock
        self._roles: dict[str, Role] = {}
        self.holders: Callable[[str], list[str]] = lambda name: []

    def load(self) -> None:
        self._roles = {r.name: r for r in self._store.roles()}

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

    def create(self, role: Role, actor: str) -> Role:
        now = int(self._clock())
        role = validate_role(replace(role, created_at=now, updated_at=now, revision=1))
        self._store.write([PutRole(role, new=True)])
        self._roles[role.name] = role
        self._events.emit(ChangeEvent("role_create", role.name, actor, None, role.as_dict(),
                                      at=now))
        return role

    def update(self, name: str, actor: str, **changes: Any) -> Role:
        old = self.get(name)
        if "name" in changes and changes["name"] != name:
            raise InvalidRequest("a role cannot be renamed; create a new one")
        now = int(self._clock())
        new = validate_role(replace(old, **changes, updated_at=now, revision=old.revision + 1))
        self._store.write([PutRole(new)])
        self._roles[name] = new
        self._events.emit(ChangeEvent("role_update", name, actor, old.as_dict(), new.as_dict(),
                                      at=now))
        return new

    def delete(self, name: str, actor: str) -> Role:
        old = self.get(name)
        holders = self.holders(name)
        if holders:
            shown = ", ".join(holders[:10]) + (" ..." if len(holders) > 10 else "")
            raise FailedPrecondition(f"role {name} is held by {len(holders)} agent(s): {shown}")
        self._store.write([DeleteRole(name)])
        del self._roles[name]
        self._events.emit(ChangeEvent("role_delete", name, actor, old.as_dict(), None,
                                      at=int(self._clock())))
        return old
