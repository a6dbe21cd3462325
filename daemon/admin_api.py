"""`ensign.admin.v1.Admin`: registry management on the admin socket.

The socket is 0600, and every call is checked again against the caller's kernel credentials:
only root and the daemon's own uid may change who gets an identity.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from grpclib.server import Stream

from ensign.proto import admin_pb2 as pb
from ensign.proto.admin_grpc import AdminBase

from .errors import CallerGone, InvalidRequest, PermissionDenied
from .grpc_errors import translate
from .peercred import PeerTracker
from .registry import Entry, ListFilter, Registry

log = logging.getLogger(__name__)


def entry_to_pb(e: Entry) -> pb.Agent:
    return pb.Agent(
        id=e.id, name=e.name, kind=e.kind, spiffe_id=e.spiffe_id, selectors=list(e.selectors),
        x509_ttl_seconds=e.x509_ttl, jwt_ttl_seconds=e.jwt_ttl, dns_names=list(e.dns_names),
        hint=e.hint, created_at=e.created_at, updated_at=e.updated_at, revision=e.revision,
        owner=e.owner, purpose=e.purpose, capabilities=list(e.capabilities),
        roles=list(e.roles), metadata=dict(e.metadata), state=e.state, expires_at=e.expires_at,
        created_by=e.created_by,
    )


def spec_to_entry(spec: pb.AgentSpec, created_by: int) -> Entry:
    return Entry(
        id="", name=spec.name, kind=spec.kind or "agent", spiffe_id=spec.spiffe_id,
        selectors=tuple(spec.selectors), x509_ttl=spec.x509_ttl_seconds,
        jwt_ttl=spec.jwt_ttl_seconds, dns_names=tuple(spec.dns_names), hint=spec.hint,
        owner=spec.owner, purpose=spec.purpose, capabilities=tuple(spec.capabilities),
        roles=tuple(spec.roles), metadata=dict(spec.metadata), expires_at=spec.expires_at,
        created_by=created_by,
    )


def update_changes(req: pb.UpdateAgentRequest) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    for field, attr in (("name", "name"), ("spiffe_id", "spiffe_id"), ("hint", "hint"),
                        ("owner", "owner"), ("purpose", "purpose"),
                        ("x509_ttl_seconds", "x509_ttl"), ("jwt_ttl_seconds", "jwt_ttl"),
                        ("expires_at", "expires_at")):
        if req.HasField(field):
            changes[attr] = getattr(req, field)
    for field in ("selectors", "dns_names", "capabilities", "roles"):
        if req.HasField(field):
            changes[field] = tuple(getattr(req, field).values)
    return changes


class AdminApi(AdminBase):
    def __init__(self, *, tracker: PeerTracker, registry: Registry) -> None:
        self._tracker = tracker
        self._registry = registry
        self._own_uid = os.getuid()

    def _admin_uid(self, stream: Stream[Any, Any]) -> int:
        conn = self._tracker.connection_of(stream)
        if conn.caller is None:
            raise CallerGone(conn.problem or "caller unknown")
        if conn.caller.uid not in (0, self._own_uid):
            raise PermissionDenied(
                f"uid {conn.caller.uid} may not use the admin API (root or uid {self._own_uid})"
            )
        return conn.caller.uid

    @translate
    async def RegisterAgent(self, stream: Stream[pb.RegisterAgentRequest, pb.Agent]) -> None:
        request = await stream.recv_message()
        assert request is not None
        uid = self._admin_uid(stream)
        entry = self._registry.register(spec_to_entry(request.spec, uid))
        log.info("entry registered", extra={"entry": entry.id, "admin_uid": uid})
        await stream.send_message(entry_to_pb(entry))

    @translate
    async def ListAgents(self, stream: Stream[pb.ListAgentsRequest, pb.ListAgentsResponse]) -> None:
        request = await stream.recv_message()
        assert request is not None
        self._admin_uid(stream)
        flt = ListFilter(
            state=request.state, owner=request.owner, capability=request.capability,
            role=request.role, kind=request.kind, selector=request.selector,
            name_prefix=request.name_prefix,
        )
        entries = self._registry.entries(flt)
        await stream.send_message(pb.ListAgentsResponse(agents=[entry_to_pb(e) for e in entries]))

    @translate
    async def GetAgent(self, stream: Stream[pb.GetAgentRequest, pb.Agent]) -> None:
        request = await stream.recv_message()
        assert request is not None
        self._admin_uid(stream)
        await stream.send_message(entry_to_pb(self._registry.get(request.id)))

    @translate
    async def UpdateAgent(self, stream: Stream[pb.UpdateAgentRequest, pb.Agent]) -> None:
        request = await stream.recv_message()
        assert request is not None
        uid = self._admin_uid(stream)
        changes = update_changes(request)
        if not changes:
            raise InvalidRequest("nothing to update: give at least one field")
        entry = self._registry.update(request.id, **changes)
        log.info("entry updated", extra={"entry": entry.id, "admin_uid": uid,
                                         "fields": sorted(changes)})
        await stream.send_message(entry_to_pb(entry))

    @translate
    async def DeleteAgent(
        self, stream: Stream[pb.DeleteAgentRequest, pb.DeleteAgentResponse]
    ) -> None:
        request = await stream.recv_message()
        assert request is not None
        uid = self._admin_uid(stream)
        self._registry.delete(request.id)
        log.info("entry deleted", extra={"entry": request.id, "admin_uid": uid})
        await stream.send_message(pb.DeleteAgentResponse())
