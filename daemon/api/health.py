"""`grpc.health.v1.Health` on the Workload API socket, saying why when not serving.

SERVING means the daemon can issue right now. When it cannot (the audit log is not writable,
the daemon is draining), Check answers NOT_SERVING and names the reason in the trailing
metadata key `ensign-reason`, which `ensign healthcheck` prints. A node that issues but is
degraded (its fleet database is unreachable: it serves from its copy of the registry and
refuses registry writes) answers SERVING and says why in `ensign-notice`.
"""

from __future__ import annotations

from collections.abc import Callable

from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_grpc import HealthBase
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from grpclib.server import Stream

REASON_KEY = "ensign-reason"
NOTICE_KEY = "ensign-notice"
KNOWN_SERVICES = ("", "SpiffeWorkloadAPI")


class HealthService(HealthBase):
    def __init__(self, problem: Callable[[], str | None],
                 notice: Callable[[], str | None] = lambda: None) -> None:
        self._problem = problem
        self._notice = notice

    async def Check(self, stream: Stream[HealthCheckRequest, HealthCheckResponse]) -> None:
        request = await stream.recv_message()
        assert request is not None
        if request.service not in KNOWN_SERVICES:
            raise GRPCError(Status.NOT_FOUND, f"unknown service {request.service!r}")
        problem = self._problem()
        status = HealthCheckResponse.NOT_SERVING if problem else HealthCheckResponse.SERVING
        await stream.send_initial_metadata()
        await stream.send_message(HealthCheckResponse(status=status))
        trailers = {REASON_KEY: problem} if problem else {}
        notice = self._notice()
        if notice:
            trailers[NOTICE_KEY] = notice
        await stream.send_trailing_metadata(metadata=trailers or None)

    async def Watch(self, stream: Stream[HealthCheckRequest, HealthCheckResponse]) -> None:
        raise GRPCError(Status.UNIMPLEMENTED, "Watch is not implemented; poll Check")
