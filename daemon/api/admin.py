"""`ensign.admin.v1.Admin`: registry and role management on the admin socket.

The socket is 0600, and every call is checked again against the caller's kernel credentials:
only root and the daemon's own uid may change who gets an identity.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grpclib.server import Stream

from ensign.daemon.api import _records as audit_records
from ensign.daemon.api._admin_convert import (
    entry_to_pb,
    pb_to_role,
    role_changes,
    role_to_pb,
    spec_to_entry,
    update_changes,
)
from ensign.daemon.audit.event import canonical
from ensign.daemon.audit.log import AuditLog
from ensign.daemon.audit.query import AuditFilter, query
from ensign.daemon.errors import CallerGone, InvalidRequest, PermissionDenied
from ensign.daemon.models import Caller
from ensign.daemon.procfs import read_status
from ensign.daemon.registry import apply as registry_apply
from ensign.daemon.registry.events import Action
from ensign.daemon.registry.grants import Grant, GrantBook
from ensign.daemon.registry.registry import ListFilter, Registry, validate_filter
from ensign.daemon.registry.roles import RoleBook
from ensign.daemon.server import bounds as message_limit
from ensign.daemon.server.peercred import PeerTracker, check_alive
from ensign.daemon.server.translate import translate
from ensign.proto import admin_pb2 as pb
from ensign.proto.admin_grpc import AdminBase

log = logging.getLogger(__name__)
MAX_REASON = 512
AUDIT_CHUNK = 500
LOG_LEVELS = ("debug", "info", "warning", "error")


class AdminApi(AdminBase):
    # Only root and the admin group reach it; `agent apply` of a whole fleet is one message.
    max_request_bytes = message_limit.ADMIN_MAX_REQUEST_BYTES

    def __init__(self, *, tracker: PeerTracker, registry: Registry, roles: RoleBook,
                 grants: GrantBook, audit_dir: Path,
                 status: Callable[[], pb.StatusResponse] = pb.StatusResponse,
                 admin_gid: int | None = None, audit: AuditLog | None = None) -> None:
        self._tracker = tracker
        self._audit = audit
        self._admin_gid = admin_gid
        self._status = status
        self._grants = grants
        self._audit_dir = audit_dir
        self._registry = registry
        self._roles = roles
        self._own_uid = os.getuid()

    async def _begin(self, stream: Stream[Any, Any]) -> tuple[Any, int]:
        request = await stream.recv_message()
        conn = self._tracker.connection_of(stream)
        if conn.caller is None:
            raise CallerGone(conn.problem or "caller unknown")
        if conn.caller.uid not in (0, self._own_uid) and not self._in_admin_group(conn.caller):
            err = PermissionDenied(
                f"uid {conn.caller.uid} may not use the admin API (root, uid {self._own_uid}"
                + (f" or members of gid {self._admin_gid})" if self._admin_gid is not None
                   else ")"))
            if self._audit is not None:
                # NOTE: grpclib keeps the RPC path private; it names the refused call.
                method = str(getattr(stream, "_method_name", "")).rsplit("/", 1)[-1]
                self._audit.record_nowait(audit_records.denied(f"admin.{method}", conn.caller,
                                                               err))
            raise err
        return request, conn.caller.uid

    def _in_admin_group(self, caller: Caller) -> bool:
        if self._admin_gid is None:
            return False
        if caller.gid == self._admin_gid:
            return True
        try:
            groups = read_status(caller.pid).groups
        except (OSError, ValueError, KeyError):
            return False
        check_alive(caller)  # the groups we read belong to the process that connected
        return self._admin_gid in groups

    # -- agents ----------------------------------------------------------------------------

    @translate
    async def RegisterAgent(self, stream: Stream[pb.RegisterAgentRequest, pb.Agent]) -> None:
        request, uid = await self._begin(stream)
        entry = self._registry.register(spec_to_entry(request.spec, uid), uid)
        await stream.send_message(entry_to_pb(entry))

    @translate
    async def ListAgents(self, stream: Stream[pb.ListAgentsRequest, pb.ListAgentsResponse]) -> None:
        r, _ = await self._begin(stream)
        flt = validate_filter(ListFilter(
            state=r.state, owner=r.owner, capability=r.capability, role=r.role, kind=r.kind,
            selector=r.selector, name_prefix=r.name_prefix))
        entries = self._registry.entries(flt)
        await stream.send_message(pb.ListAgentsResponse(agents=[entry_to_pb(e) for e in entries]))

    @translate
    async def GetAgent(self, stream: Stream[pb.GetAgentRequest, pb.Agent]) -> None:
        request, _ = await self._begin(stream)
        entry = self._registry.get(request.id)
        await stream.send_message(entry_to_pb(entry, self._registry.history(entry.id)))

    @translate
    async def UpdateAgent(self, stream: Stream[pb.UpdateAgentRequest, pb.Agent]) -> None:
        request, uid = await self._begin(stream)
        changes = update_changes(request)
        if not changes:
            raise InvalidRequest("nothing to update: give at least one field")
        await stream.send_message(entry_to_pb(self._registry.update(request.id, uid, **changes)))

    @translate
    async def DeleteAgent(
        self, stream: Stream[pb.DeleteAgentRequest, pb.DeleteAgentResponse]
    ) -> None:
        request, uid = await self._begin(stream)
        self._registry.delete(request.id, uid)
        await stream.send_message(pb.DeleteAgentResponse())

    async def _lifecycle(self, stream: Stream[pb.LifecycleRequest, pb.Agent], action: Action,
                         reason_required: bool) -> None:
        request, uid = await self._begin(stream)
        reason = request.reason.strip()
        if reason_required and not reason:
            raise InvalidRequest(f"{action} needs a reason (--reason)")
        if len(reason) > MAX_REASON:
            raise InvalidRequest(f"reason is limited to {MAX_REASON} characters")
        entry = self._registry.transition(request.id, action, f"uid:{uid}", reason)
        await stream.send_message(entry_to_pb(entry))

    @translate
    async def SuspendAgent(self, stream: Stream[pb.LifecycleRequest, pb.Agent]) -> None:
        await self._lifecycle(stream, "suspend", reason_required=True)

    @translate
    async def ResumeAgent(self, stream: Stream[pb.LifecycleRequest, pb.Agent]) -> None:
        await self._lifecycle(stream, "resume", reason_required=False)

    @translate
    async def DecommissionAgent(self, stream: Stream[pb.LifecycleRequest, pb.Agent]) -> None:
        await self._lifecycle(stream, "decommission", reason_required=True)

    @translate
    async def Apply(self, stream: Stream[pb.ApplyRequest, pb.ApplyResponse]) -> None:
        request, uid = await self._begin(stream)
        desired = [
            registry_apply.Desired(id=a.id, spec=spec_to_entry(a.spec, uid), state=a.state)
            for a in request.agents
        ]
        for d in desired:
            if d.state not in ("", "active", "suspended", "decommissioned"):
                raise InvalidRequest(f"agent {d.spec.name}: unknown state {d.state!r}")
        steps = registry_apply.apply(
            self._registry, self._roles, desired, [pb_to_role(r) for r in request.roles],
            actor_uid=uid, prune=request.prune, dry_run=request.dry_run,
        )
        await stream.send_message(pb.ApplyResponse(
            steps=[pb.PlanStep(action=s.action, target=s.target, detail=s.detail) for s in steps],
            applied=not request.dry_run,
        ))

    # -- roles -----------------------------------------------------------------------------

    @translate
    async def CreateRole(self, stream: Stream[pb.Role, pb.Role]) -> None:
        request, uid = await self._begin(stream)
        role = self._roles.create(pb_to_role(request), f"uid:{uid}")
        await stream.send_message(role_to_pb(role))

    @translate
    async def ListRoles(self, stream: Stream[pb.ListRolesRequest, pb.ListRolesResponse]) -> None:
        await self._begin(stream)
        roles = [role_to_pb(r) for _, r in sorted(self._roles.all.items())]
        await stream.send_message(pb.ListRolesResponse(roles=roles))

    @translate
    async def GetRole(self, stream: Stream[pb.GetRoleRequest, pb.Role]) -> None:
        request, _ = await self._begin(stream)
        role = self._roles.get(request.name)
        await stream.send_message(role_to_pb(role, self._registry.holders(role.name)))

    @translate
    async def UpdateRole(self, stream: Stream[pb.UpdateRoleRequest, pb.Role]) -> None:
        request, uid = await self._begin(stream)
        changes = role_changes(request)
        if not changes:
            raise InvalidRequest("nothing to update: give at least one field")
        role = self._roles.update(request.name, f"uid:{uid}", **changes)
        await stream.send_message(role_to_pb(role))

    @translate
    async def DeleteRole(self, stream: Stream[pb.DeleteRoleRequest, pb.DeleteRoleResponse]) -> None:
        request, uid = await self._begin(stream)
        self._roles.delete(request.name, f"uid:{uid}")
        await stream.send_message(pb.DeleteRoleResponse())

    # -- audit -----------------------------------------------------------------------------

    @translate
    async def QueryAudit(self, stream: Stream[pb.AuditQuery, pb.AuditRecords]) -> None:
        q, _ = await self._begin(stream)
        flt = AuditFilter(agent=q.agent, subject=q.subject, delegator=q.delegator, type=q.type,
                          result=q.result, since=q.since, until=q.until)
        records = await asyncio.to_thread(query, self._audit_dir, flt, q.limit)
        for i in range(0, len(records), AUDIT_CHUNK):
            chunk = [canonical(r).decode() for r in records[i:i + AUDIT_CHUNK]]
            await stream.send_message(pb.AuditRecords(records=chunk))

    # -- operations ------------------------------------------------------------------------

    @translate
    async def GetStatus(self, stream: Stream[pb.StatusRequest, pb.StatusResponse]) -> None:
        await self._begin(stream)
        await stream.send_message(self._status())

    @translate
    async def SetLogLevel(self, stream: Stream[pb.LogLevel, pb.LogLevel]) -> None:
        request, uid = await self._begin(stream)
        root = logging.getLogger()
        if request.level:
            if request.level not in LOG_LEVELS:
                raise InvalidRequest(f"log level must be one of {', '.join(LOG_LEVELS)}")
            root.setLevel(request.level.upper())
            log.warning("log level changed", extra={"level": request.level, "admin_uid": uid})
        await stream.send_message(pb.LogLevel(level=logging.getLevelName(root.level).lower()))

    # -- delegation grants -----------------------------------------------------------------

    @translate
    async def CreateGrant(self, stream: Stream[pb.Grant, pb.Grant]) -> None:
        request, uid = await self._begin(stream)
        self._registry.get(request.agent_id)  # the agent must exist
        grant = self._grants.create(
            Grant(id="", subject=request.subject, issuer=request.issuer,
                  agent_id=request.agent_id, scopes=tuple(request.scopes)),
            f"uid:{uid}", ttl=request.ttl_seconds)
        await stream.send_message(grant_to_pb(grant))

    @translate
    async def RevokeGrant(self, stream: Stream[pb.RevokeGrantRequest, pb.Grant]) -> None:
        request, uid = await self._begin(stream)
        grant = self._grants.revoke(request.id, f"uid:{uid}", request.reason)
        await stream.send_message(grant_to_pb(grant))

    @translate
    async def ListGrants(self, stream: Stream[pb.ListGrantsRequest, pb.ListGrantsResponse]) -> None:
        request, _ = await self._begin(stream)
        grants = self._grants.entries(request.agent_id, request.subject, request.include_revoked)
        await stream.send_message(pb.ListGrantsResponse(grants=[grant_to_pb(g) for g in grants]))


def grant_to_pb(g: Grant) -> pb.Grant:
    return pb.Grant(id=g.id, subject=g.subject, issuer=g.issuer, agent_id=g.agent_id,
                    scopes=list(g.scopes), created_at=g.created_at, expires_at=g.expires_at,
                    revoked_at=g.revoked_at, created_by=g.created_by)
