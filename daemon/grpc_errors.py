"""Where EnsignError becomes a gRPC status: one decorator for every servicer method.

Workloads see the status and a short message; details that would help an attacker map the
node (paths, selectors) go to the log instead. Errors about the request itself carry their
detail, since the caller needs it to fix the request.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from google.protobuf.message import DecodeError
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from .errors import (
    AuditUnavailable,
    Conflict,
    EnsignError,
    InvalidRequest,
    InvalidTransition,
    NotFound,
    PermissionDenied,
    TokenInvalid,
)

log = logging.getLogger(__name__)

_DETAILED = (
    AuditUnavailable, InvalidRequest, TokenInvalid, NotFound, Conflict, PermissionDenied,
    InvalidTransition,
)
S = TypeVar("S")


def translate(
    method: Callable[[S, Any], Coroutine[Any, Any, None]],
) -> Callable[[S, Any], Coroutine[Any, Any, None]]:
    @functools.wraps(method)
    async def wrapper(self: S, stream: Any) -> None:
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
