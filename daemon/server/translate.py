"""Where EnsignError becomes a gRPC status: one decorator for every servicer method.

Workloads see the status and a short message; details that would help an attacker map the
node (paths, selectors) go to the log instead. Errors about the request itself carry their
detail, since the caller needs it to fix the request.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from google.protobuf.message import DecodeError
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from ensign.daemon.errors import (
    AuditUnavailable,
    Conflict,
    EnsignError,
    InvalidRequest,
    InvalidTransition,
    NotFound,
    PermissionDenied,
    TokenInvalid,
)
from ensign.daemon.observe import metrics
from ensign.daemon.server import bounds as message_limit
from ensign.daemon.server.limits import RateLimited

log = logging.getLogger(__name__)

_DETAILED = (
    RateLimited, AuditUnavailable, InvalidRequest, TokenInvalid, NotFound, Conflict,
    PermissionDenied, InvalidTransition,
)
S = TypeVar("S")


def translate(
    method: Callable[[S, Any], Coroutine[Any, Any, None]],
) -> Callable[[S, Any], Coroutine[Any, Any, None]]:
    name = method.__name__
    inflight = metrics.INFLIGHT.labels(name)
    seconds = metrics.RPC_SECONDS.labels(name)

    @functools.wraps(method)
    async def wrapper(self: S, stream: Any) -> None:
        status = "OK"
        started = time.perf_counter()
        inflight.inc()
        # A servicer may accept larger requests than the Workload API socket's bound (admin).
        limit = getattr(self, "max_request_bytes", None)
        if limit is not None:
            message_limit.request_limit.set(limit)  # this request's task only
        try:
            await _run(self, stream)
        except GRPCError as e:
            status = e.status.name
            raise
        except BaseException:
            status = "CANCELLED"
            raise
        finally:
            inflight.dec()
            metrics.rpc_counter(name, status).inc()
            seconds.observe(time.perf_counter() - started)

    async def _run(self: S, stream: Any) -> None:
        try:
            await method(self, stream)
        except GRPCError:
            raise
        except DecodeError:
            raise GRPCError(Status.INVALID_ARGUMENT, "malformed request message") from None
        except EnsignError as e:
            message = str(e) if isinstance(e, _DETAILED) and str(e) else e.public_message
            log.info("request refused", extra={
                "method": method.__name__, "status": e.grpc_status.name, "reason": e.diagnostics()})
            raise GRPCError(e.grpc_status, message) from None
        except Exception:
            log.exception("internal error", extra={"method": method.__name__})
            raise GRPCError(Status.INTERNAL, "internal error") from None

    return wrapper
