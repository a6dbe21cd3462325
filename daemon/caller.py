"""Identifying the caller of an RPC on the Workload API socket: header, kernel peer, attestors."""

from __future__ import annotations

from typing import Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

from .attestation import AttestationPipeline
from .errors import CallerGone
from .models import AttestedCaller
from .peercred import PeerTracker

SECURITY_HEADER = "workload.spiffe.io"


def check_security_header(stream: Stream[Any, Any]) -> None:
    """Exactly one `workload.spiffe.io: true`, as the Workload API requires of every request."""
    values = stream.metadata.getall(SECURITY_HEADER, []) if stream.metadata else []
    if values != ["true"]:
        raise GRPCError(Status.INVALID_ARGUMENT, "security header missing from request")


async def attest_stream(stream: Stream[Any, Any], tracker: PeerTracker,
                        pipeline: AttestationPipeline) -> AttestedCaller:
    check_security_header(stream)
    conn = tracker.connection_of(stream)
    if conn.caller is None:
        raise CallerGone(conn.problem or "caller unknown")
    return await pipeline.attest(conn.caller)
