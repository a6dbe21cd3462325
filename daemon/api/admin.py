"""`ensign.admin.v1.Admin`: registry, roles, grants, audit and operations on the admin socket.

The socket is 0600 (0660 with the admin group), and the front checks every call again against
the caller's kernel credentials with `authorize`, before the request message is read: only
root, the daemon's own uid and the admin group may change who gets an identity.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

from grpclib.server import Stream

from ensign.daemon import registry as registry_apply
from ensign.daemon.api._admin_convert import (
    entry_to_pb,
    pb_to_role,
    role_changes,
    role_to_pb,
    spec_to_entry,
    update_changes,
)
from ensign.daemon.api.front import Call, recv
from ensign.daemon.audit import (
    CHECKPOINTS,
    PUBLIC_KEY,
    AuditEvent,
    AuditFilter,
    AuditLog,
    canonical,
    check_drop,
    plan,
    query,
    remove,
)
from ensign.daemon.errors import (
    DatabaseUnavailable,
    FailedPrecondition,
    InvalidData,
    InvalidRequest,
    PermissionDenied,
)
from ensign.daemon.identity import check_alive
from ensign.daemon.models import Caller
from ensign.daemon.procfs import read_status
from ensign.daemon.registry import (
    Action,
    Grant,
    GrantBook,
    ListFilter,
    Registry,
    RoleBook,
    validate_filter,
)
from ensign.daemon.units import MAX_TTL_SECONDS
from ensign.proto import admin_pb2 as pb

log = logging.getLogger(__name__)
MAX_REASON = 512
AUDIT_CHUNK = 500
ARCHIVE_CHUNK = 1 << 20
LOG_LEVELS = ("debug", "info", "warning", "error")


class AdminApi:
    def __init__(self, *, registry: Registry, roles: RoleBook, grants: GrantBook,
                 audit: AuditLog, status: Callable[[], pb.StatusResponse] = pb.StatusResponse,
                 admin_gid: int | None = None, delegation_enabled: bool = True) -> None:
        self._delegation_enabled = delegation_enabled
        self._admin_gid = admin_gid
        self._status = status
        self._grants = grants
        self._audit = audit
        self._audit_dir = audit.dir
        self._registry = registry
        self._roles = roles
        self._own_uid = os.getuid()

    def authorize(self, caller: Caller) -> None:
        """Root, the daemon's own uid, or the admin group: checked before a request is read."""
        if caller.uid in (0, self._own_uid) or self._in_admin_group(caller):
            return
        raise PermissionDenied(
            f"uid {caller.uid} may not use the admin API (root, uid {self._own_uid}"
            + (f" or members of gid {self._admin_gid})" if self._admin_gid is not None else ")"))

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

    async def RegisterAgent(
        self, stream: Stream[pb.RegisterAgentRequest, pb.Agent], call: Call
    ) -> None:
        request = await recv(stream)
        uid = call.caller.uid
        entry = await self._registry.register(spec_to_entry(request.spec, uid), uid)
        await stream.send_message(entry_to_pb(entry))

    async def ListAgents(
        self, stream: Stream[pb.ListAgentsRequest, pb.ListAgentsResponse], call: Call
    ) -> None:
        r = await recv(stream)
        flt = validate_filter(ListFilter(
            state=r.state, owner=r.owner, capability=r.capability, role=r.role, kind=r.kind,
            selector=r.selector, name_prefix=r.name_prefix))
        entries = self._registry.entries(flt)
        await stream.send_message(pb.ListAgentsResponse(agents=[entry_to_pb(e) for e in entries]))

    async def GetAgent(self, stream: Stream[pb.GetAgentRequest, pb.Agent], call: Call) -> None:
        request = await recv(stream)
        entry = self._registry.get(request.id)
        try:
            history = await self._registry.history(entry.id)
        except DatabaseUnavailable as e:  # the entry is served from the copy; its history
            log.warning("agent history unavailable", extra={"reason": e.diagnostics()})
            history = []  # lives in the fleet database only
        await stream.send_message(entry_to_pb(entry, history))

    async def UpdateAgent(
        self, stream: Stream[pb.UpdateAgentRequest, pb.Agent], call: Call
    ) -> None:
        request = await recv(stream)
        uid = call.caller.uid
        changes = update_changes(request)
        if not changes:
            raise InvalidRequest("nothing to update: give at least one field")
        await stream.send_message(entry_to_pb(await self._registry.update(request.id, uid,
                                                                       **changes)))

    async def DeleteAgent(
        self, stream: Stream[pb.DeleteAgentRequest, pb.DeleteAgentResponse], call: Call
    ) -> None:
        request = await recv(stream)
        uid = call.caller.uid
        await self._registry.delete(request.id, uid)
        await stream.send_message(pb.DeleteAgentResponse())

    async def _lifecycle(self, stream: Stream[pb.LifecycleRequest, pb.Agent], call: Call,
                         action: Action, reason_required: bool) -> None:
        request = await recv(stream)
        uid = call.caller.uid
        reason = request.reason.strip()
        if reason_required and not reason:
            raise InvalidRequest(f"{action} needs a reason (--reason)")
        if len(reason) > MAX_REASON:
            raise InvalidRequest(f"reason is limited to {MAX_REASON} characters")
        entry = await self._registry.transition(request.id, action, f"uid:{uid}", reason)
        await stream.send_message(entry_to_pb(entry))

    async def SuspendAgent(self, stream: Stream[pb.LifecycleRequest, pb.Agent], call: Call) -> None:
        await self._lifecycle(stream, call, "suspend", reason_required=True)

    async def ResumeAgent(self, stream: Stream[pb.LifecycleRequest, pb.Agent], call: Call) -> None:
        await self._lifecycle(stream, call, "resume", reason_required=False)

    async def DecommissionAgent(
        self, stream: Stream[pb.LifecycleRequest, pb.Agent], call: Call
    ) -> None:
        await self._lifecycle(stream, call, "decommission", reason_required=True)

    async def Apply(self, stream: Stream[pb.ApplyRequest, pb.ApplyResponse], call: Call) -> None:
        request = await recv(stream)
        uid = call.caller.uid
        desired = [
            registry_apply.Desired(id=a.id, spec=spec_to_entry(a.spec, uid), state=a.state,
                                   expires_after=a.spec.expires_after_seconds)
            for a in request.agents
        ]
        for d in desired:
            if d.state not in ("", "active", "suspended", "decommissioned"):
                raise InvalidData(f"agent {d.spec.name}: unknown state {d.state!r}")
            if not 0 <= d.expires_after <= MAX_TTL_SECONDS:
                raise InvalidData(f"agent {d.spec.name}: expires_at must be within 3650 days")
        try:
            steps = await registry_apply.apply(
                self._registry, self._roles, desired, [pb_to_role(r) for r in request.roles],
                actor_uid=uid, prune=request.prune, dry_run=request.dry_run,
            )
        except InvalidRequest as e:
            # The file's content, not the command line: a data error (exit 65).
            raise e if isinstance(e, InvalidData) else InvalidData(str(e)) from None
        await stream.send_message(pb.ApplyResponse(
            steps=[pb.PlanStep(action=s.action, target=s.target, detail=s.detail) for s in steps],
            applied=not request.dry_run,
        ))

    # -- roles -----------------------------------------------------------------------------

    async def CreateRole(self, stream: Stream[pb.Role, pb.Role], call: Call) -> None:
        request = await recv(stream)
        uid = call.caller.uid
        role = await self._roles.create(pb_to_role(request), f"uid:{uid}")
        await stream.send_message(role_to_pb(role))

    async def ListRoles(
        self, stream: Stream[pb.ListRolesRequest, pb.ListRolesResponse], call: Call
    ) -> None:
        await recv(stream)
        roles = [role_to_pb(r) for _, r in sorted(self._roles.all.items())]
        await stream.send_message(pb.ListRolesResponse(roles=roles))

    async def GetRole(self, stream: Stream[pb.GetRoleRequest, pb.Role], call: Call) -> None:
        request = await recv(stream)
        role = self._roles.get(request.name)
        await stream.send_message(role_to_pb(role, self._registry.holders(role.name)))

    async def UpdateRole(self, stream: Stream[pb.UpdateRoleRequest, pb.Role], call: Call) -> None:
        request = await recv(stream)
        uid = call.caller.uid
        changes = role_changes(request)
        if not changes:
            raise InvalidRequest("nothing to update: give at least one field")
        role = await self._roles.update(request.name, f"uid:{uid}", **changes)
        await stream.send_message(role_to_pb(role))

    async def DeleteRole(
        self, stream: Stream[pb.DeleteRoleRequest, pb.DeleteRoleResponse], call: Call
    ) -> None:
        request = await recv(stream)
        uid = call.caller.uid
        await self._roles.delete(request.name, f"uid:{uid}")
        await stream.send_message(pb.DeleteRoleResponse())

    # -- audit -----------------------------------------------------------------------------

    async def QueryAudit(self, stream: Stream[pb.AuditQuery, pb.AuditRecords], call: Call) -> None:
        q = await recv(stream)
        flt = AuditFilter(agent=q.agent, subject=q.subject, delegator=q.delegator, type=q.type,
                          result=q.result, since=q.since, until=q.until)
        records = await asyncio.to_thread(query, self._audit_dir, flt, q.limit)
        for i in range(0, len(records), AUDIT_CHUNK):
            chunk = [canonical(r).decode() for r in records[i:i + AUDIT_CHUNK]]
            await stream.send_message(pb.AuditRecords(records=chunk))

    async def ExportAuditArchive(
        self, stream: Stream[pb.ExportAuditArchiveRequest, pb.ArchiveChunk], call: Call
    ) -> None:
        request = await recv(stream)
        if request.keep < 1:
            raise InvalidRequest("keep must be at least 1: the newest segment is the open one")
        p = await asyncio.to_thread(plan, self._audit_dir, request.keep)
        if not p.segments:
            return
        await stream.send_message(pb.ArchiveChunk(name=PUBLIC_KEY, data=p.public_key, end=True))
        for path in p.segments:  # closed segments: they no longer change
            try:
                f = open(path, "rb")  # noqa: ASYNC230, SIM115 (read off the loop below)
            except FileNotFoundError:
                raise FailedPrecondition(f"{path.name} was archived meanwhile by another "
                                         "command: run it again") from None
            with f:
                while True:
                    data = await asyncio.to_thread(f.read, ARCHIVE_CHUNK)
                    end = len(data) < ARCHIVE_CHUNK
                    await stream.send_message(pb.ArchiveChunk(name=path.name, data=data, end=end))
                    if end:
                        break
        await stream.send_message(pb.ArchiveChunk(name=CHECKPOINTS, data=p.checkpoints, end=True))

    async def DropArchivedAudit(
        self, stream: Stream[pb.DropArchivedAuditRequest, pb.DropArchivedAuditResponse],
        call: Call,
    ) -> None:
        request = await recv(stream)
        proofs = {s.name: s.sha256 for s in request.segments}
        if len(proofs) != len(request.segments):
            raise InvalidRequest("a segment is named twice")
        # Hashed off the writer thread (closed segments do not change); removed on it, where
        # the chain's head is found again after a failed write.
        await asyncio.to_thread(check_drop, self._audit_dir, proofs, "")
        removed = await self._audit.with_segments(lambda open_segment: remove(
            self._audit_dir, check_drop(self._audit_dir, proofs, open_segment, hashes=False)))
        await self._audit.record(AuditEvent(
            type="audit.archived", actor=f"uid:{call.caller.uid}",
            details={"segments": removed}))
        await stream.send_message(pb.DropArchivedAuditResponse(removed=removed))

    # -- operations ------------------------------------------------------------------------

    async def GetStatus(
        self, stream: Stream[pb.StatusRequest, pb.StatusResponse], call: Call
    ) -> None:
        await recv(stream)
        await stream.send_message(self._status())

    async def SetLogLevel(self, stream: Stream[pb.LogLevel, pb.LogLevel], call: Call) -> None:
        request = await recv(stream)
        uid = call.caller.uid
        root = logging.getLogger()
        if request.level:
            if request.level not in LOG_LEVELS:
                raise InvalidRequest(f"log level must be one of {', '.join(LOG_LEVELS)}")
            root.setLevel(request.level.upper())
            log.warning("log level changed", extra={"level": request.level, "admin_uid": uid})
        await stream.send_message(pb.LogLevel(level=logging.getLevelName(root.level).lower()))

    # -- delegation grants -----------------------------------------------------------------

    async def CreateGrant(self, stream: Stream[pb.Grant, pb.Grant], call: Call) -> None:
        request = await recv(stream)
        uid = call.caller.uid
        if not self._delegation_enabled:
            raise FailedPrecondition("delegation is disabled on this node ([delegation] enabled "
                                     "= false): a grant could never be used")
        agent = self._registry.get(request.agent_id)  # the agent must exist
        if agent.state == "decommissioned":
            raise FailedPrecondition(f"agent {agent.id} is decommissioned: it can never act "
                                     "for anyone again")
        grant = await self._grants.create(
            Grant(id="", subject=request.subject, issuer=request.issuer,
                  agent_id=request.agent_id, scopes=tuple(request.scopes)),
            f"uid:{uid}", ttl=request.ttl_seconds)
        await stream.send_message(grant_to_pb(grant))

    async def RevokeGrant(
        self, stream: Stream[pb.RevokeGrantRequest, pb.Grant], call: Call
    ) -> None:
        request = await recv(stream)
        uid = call.caller.uid
        grant = await self._grants.revoke(request.id, f"uid:{uid}", request.reason)
        await stream.send_message(grant_to_pb(grant))

    async def ListGrants(
        self, stream: Stream[pb.ListGrantsRequest, pb.ListGrantsResponse], call: Call
    ) -> None:
        request = await recv(stream)
        grants = self._grants.entries(request.agent_id, request.subject, request.include_revoked)
        await stream.send_message(pb.ListGrantsResponse(grants=[grant_to_pb(g) for g in grants]))


def grant_to_pb(g: Grant) -> pb.Grant:
    return pb.Grant(id=g.id, subject=g.subject, issuer=g.issuer, agent_id=g.agent_id,
                    scopes=list(g.scopes), created_at=g.created_at, expires_at=g.expires_at,
                    revoked_at=g.revoked_at, created_by=g.created_by)
