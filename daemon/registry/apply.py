"""Declarative registry: make the entries match a desired list, as one transaction.

Agents are matched by id when the file gives one (ids cannot be chosen: it must exist), else by
name among entries that are not decommissioned. Agents missing from the file are left alone
unless `prune` is set, in which case they are decommissioned. Running the same file twice is a
no-op the second time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from ensign.daemon.errors import InvalidRequest, InvalidTransition
from ensign.daemon.registry.events import Action
from ensign.daemon.registry.model import TRANSITIONS, BulkChange, Entry
from ensign.daemon.registry.policy import Role, validate_role
from ensign.daemon.registry.registry import Registry
from ensign.daemon.registry.roles import RoleBook, RoleChange
from ensign.daemon.registry.store import PutEntry, PutRole, RecordState, Write

COMPARED = ("name", "kind", "selectors", "x509_ttl", "jwt_ttl", "dns_names", "hint", "owner",
            "purpose", "capabilities", "roles", "metadata", "expires_at", "federates_with")


@dataclass(frozen=True, slots=True)
class Desired:
    id: str
    spec: Entry  # id empty; spiffe_id empty means "default" (keep the existing one)
    state: str  # "" means active
    # Seconds after the agent's registration it expires (a file's `expires_at = "30d"`):
    # relative to registration, not to now, so applying the same file again changes nothing.
    expires_after: int = 0


@dataclass(frozen=True, slots=True)
class Step:
    action: str
    target: str
    detail: str


def _diff(old: Entry, spec: Entry) -> dict[str, Any]:
    changes = {}
    for f in COMPARED:
        want = getattr(spec, f)
        if f in ("selectors", "federates_with"):
            want = tuple(sorted(set(want)))
        if getattr(old, f) != want:
            changes[f] = want
    if spec.spiffe_id and spec.spiffe_id != old.spiffe_id:
        changes["spiffe_id"] = spec.spiffe_id
    return changes


def _action_for(current: str, wanted: str) -> Action | None:
    if wanted == current:
        return None
    for (frm, action), to in TRANSITIONS.items():
        if frm == current and to == wanted and action != "expire":
            return action  # type: ignore[return-value]
    raise InvalidTransition(f"cannot go from {current} to {wanted}")


async def apply(
    registry: Registry,
    roles: RoleBook,
    agents: Sequence[Desired],
    desired_roles: Sequence[Role],
    *,
    actor_uid: int,
    prune: bool,
    dry_run: bool,
) -> list[Step]:
    actor = f"uid:{actor_uid}"
    steps: list[Step] = []
    # (1) Roles: plan only; they are written just before the agents, after every check passed.
    role_writes: list[tuple[Role, dict[str, Any] | None]] = []
    for role in desired_roles:
        validate_role(role)
        existing = roles.all.get(role.name)
        if existing is None:
            steps.append(Step("role_create", role.name, ", ".join(role.audiences)))
            role_writes.append((role, None))
        else:
            fields = ("audiences", "scopes", "max_ttl", "may_act_for_users", "may_redelegate",
                      "may_introspect")
            delta = {f: getattr(role, f) for f in fields
                     if getattr(role, f) != getattr(existing, f)}
            if delta:
                steps.append(Step("role_update", role.name, ", ".join(sorted(delta))))
                role_writes.append((role, delta))
    planned = {r.name for r in desired_roles}
    # (2) Agents: compute every change first, so a bad line changes nothing.
    live_by_name = {e.name: e for e in registry.entries() if e.state != "decommissioned"}
    seen: set[str] = set()
    writes: list[Write] = []
    changes: list[BulkChange] = []
    now = int(time.time())
    names = [d.spec.name for d in agents]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise InvalidRequest(f"names appear more than once: {', '.join(sorted(dupes))}")
    for d in agents:
        wanted = d.state or "active"
        if d.id:
            current: Entry | None = registry.get(d.id)
        else:
            current = live_by_name.get(d.spec.name)
        spec = d.spec
        if d.expires_after:
            born = current.created_at if current is not None else now
            spec = replace(spec, expires_at=born + d.expires_after)
        if current is None:
            if wanted == "decommissioned":
                continue
            new = registry.prepare_register(spec, actor_uid, planned)
            steps.append(Step("create", spec.name, ", ".join(new.selectors)))
            writes += [PutEntry(new, new=True),
                       RecordState(new.id, now, "", "active", "apply", actor)]
            changes.append(("register", new.id, actor, None, new, "apply"))
            current = new
            seen.add(new.id)
            prior = new
        else:
            seen.add(current.id)
            prior = current
            diff = _diff(current, spec) if current.state != "decommissioned" else {}
            if diff:
                old, new = registry.prepare_update(current.id, planned, **diff)
                steps.append(Step("update", current.id, ", ".join(sorted(diff))))
                writes.append(PutEntry(new))
                changes.append(("update", current.id, actor, old, new, "apply"))
                prior = new
        action = _action_for(prior.state, wanted)
        if action is not None:
            moved = replace(prior, state=wanted, updated_at=now, revision=prior.revision + 1)
            steps.append(Step(action, prior.id, f"{prior.state} -> {wanted}"))
            writes += [PutEntry(moved),
                       RecordState(prior.id, now, prior.state, wanted, "apply", actor)]
            changes.append((action, prior.id, actor, prior, moved, "apply"))
    # (3) Prune: live agents the file does not mention.
    if prune:
        for e in registry.entries():
            if e.id not in seen and e.state != "decommissioned":
                moved = replace(e, state="decommissioned", updated_at=now, revision=e.revision + 1)
                steps.append(Step("decommission", e.id, "not in the file (--prune)"))
                writes += [PutEntry(moved), RecordState(
                    e.id, now, e.state, "decommissioned", "pruned by apply", actor)]
                changes.append(("decommission", e.id, actor, e, moved, "pruned by apply"))
    if dry_run:
        return steps
    role_puts: list[Write] = []
    role_changes: list[RoleChange] = []
    for role, role_delta in role_writes:
        if role_delta is None:
            new_role = roles.prepare_create(role)
            role_puts.append(PutRole(new_role, new=True))
            role_changes.append(("role_create", None, new_role))
        else:
            old_role, new_role = roles.prepare_update(role.name, **role_delta)
            role_puts.append(PutRole(new_role))
            role_changes.append(("role_update", old_role, new_role))
    if role_puts or writes:
        await registry.write([*role_puts, *writes])  # roles and agents: one transaction
        roles.accepted(role_changes, actor)
        registry.accepted(changes)
    return steps
