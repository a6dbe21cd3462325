"""Identifying the caller of an RPC on the Workload API socket: header, kernel peer, attestors."""

from __future__ import annotations

from typing import Any

from grpclib.server import Stream

from ensign.daemon.errors import CallerGone, InvalidRequest
from ensign.daemon.identity.pipeline import AttestationPipeline
from ensign.daemon.models import AttestedCaller
from ensign.daemon.server.limits import RateLimited
from ensign.daemon.server.peercred import Connection, PeerTracker

SECURITY_HEADER = "workload.spiffe.io"


def check_security_header(stream: Stream[Any, Any]) -> None:
    """Exactly one `workload.spiffe.io: true`, as the Workload API requires of every request."""
    values = stream.metadata.getall(SECURITY_HEADER, []) if stream.metadata else []
    if values != ["true"]:
        # An EnsignError (not a bare GRPCError) so the refusal reaches the audit trail.
        raise InvalidRequest("security header missing from request")


async def attest_stream(stream: Stream[Any, Any], tracker: PeerTracker,
                        pipeline: AttestationPipeline) -> AttestedCaller:
    check_security_header(stream)
    conn = tracker.connection_of(stream)
    if conn.caller is None:
        raise CallerGone(conn.problem or "caller unknown")
    check_limits(tracker, conn)
    return await pipeline.attest(conn.caller)


def check_limits(tracker: PeerTracker, conn: Connection) -> None:
    limits, caller = tracker.limits, conn.caller
    if limits is None or caller is None:
        return
    if conn.over_limit:
        raise RateLimited(f"uid {caller.uid} has too many connections open "
                          f"({limits.connections(caller.uid)}); close some and retry")
    if not limits.allow(caller.uid):
        raise RateLimited(f"uid {caller.uid} is over its request rate; retry with backoff")
