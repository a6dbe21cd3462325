"""Conversions between the admin API's messages and the registry's records. Pure."""

from __future__ import annotations

from typing import Any

from ensign.daemon.registry import Entry, Role, StateChange
from ensign.proto import admin_pb2 as pb


def entry_to_pb(e: Entry, history: list[StateChange] | None = None) -> pb.Agent:
    return pb.Agent(
        id=e.id, name=e.name, kind=e.kind, spiffe_id=e.spiffe_id, selectors=list(e.selectors),
        x509_ttl_seconds=e.x509_ttl, jwt_ttl_seconds=e.jwt_ttl, dns_names=list(e.dns_names),
        hint=e.hint, created_at=e.created_at, updated_at=e.updated_at, revision=e.revision,
        owner=e.owner, purpose=e.purpose, capabilities=list(e.capabilities),
        roles=list(e.roles), metadata=dict(e.metadata), state=e.state, expires_at=e.expires_at,
        created_by=e.created_by, federates_with=list(e.federates_with),
        history=[pb.StateChange(at=h.at, from_state=h.from_state, to_state=h.to_state,
                                reason=h.reason, actor=h.actor) for h in history or []],
    )


def spec_to_entry(spec: pb.AgentSpec, created_by: int = 0) -> Entry:
    return Entry(
        id="", name=spec.name, kind=spec.kind or "agent", spiffe_id=spec.spiffe_id,
        selectors=tuple(spec.selectors), x509_ttl=spec.x509_ttl_seconds,
        jwt_ttl=spec.jwt_ttl_seconds, dns_names=tuple(spec.dns_names), hint=spec.hint,
        owner=spec.owner, purpose=spec.purpose, capabilities=tuple(spec.capabilities),
        roles=tuple(spec.roles), metadata=dict(spec.metadata), expires_at=spec.expires_at,
        created_by=created_by, federates_with=tuple(spec.federates_with),
    )


def update_changes(req: pb.UpdateAgentRequest) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    for field, attr in (("name", "name"), ("spiffe_id", "spiffe_id"), ("hint", "hint"),
                        ("owner", "owner"), ("purpose", "purpose"),
                        ("x509_ttl_seconds", "x509_ttl"), ("jwt_ttl_seconds", "jwt_ttl"),
                        ("expires_at", "expires_at"), ("kind", "kind")):
        if req.HasField(field):
            changes[attr] = getattr(req, field)
    for field in ("selectors", "dns_names", "capabilities", "roles", "federates_with"):
        if req.HasField(field):
            changes[field] = tuple(getattr(req, field).values)
    if req.HasField("metadata"):
        changes["metadata"] = dict(req.metadata.values)
    return changes


def role_to_pb(r: Role, holders: list[str] | None = None) -> pb.Role:
    return pb.Role(
        name=r.name, audiences=list(r.audiences), scopes=list(r.scopes),
        max_ttl_seconds=r.max_ttl, may_act_for_users=r.may_act_for_users,
        may_redelegate=r.may_redelegate, created_at=r.created_at, updated_at=r.updated_at,
        revision=r.revision, holders=holders or [], may_introspect=r.may_introspect,
    )


def pb_to_role(m: pb.Role) -> Role:
    return Role(name=m.name, audiences=tuple(m.audiences), scopes=tuple(m.scopes),
                max_ttl=m.max_ttl_seconds, may_act_for_users=m.may_act_for_users,
                may_redelegate=m.may_redelegate, may_introspect=m.may_introspect)


def role_changes(req: pb.UpdateRoleRequest) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if req.HasField("audiences"):
        changes["audiences"] = tuple(req.audiences.values)
    if req.HasField("scopes"):
        changes["scopes"] = tuple(req.scopes.values)
    for field, attr in (("max_ttl_seconds", "max_ttl"), ("may_act_for_users", "may_act_for_users"),
                        ("may_redelegate", "may_redelegate"), ("may_introspect", "may_introspect")):
        if req.HasField(field):
            changes[attr] = getattr(req, field)
    return changes
