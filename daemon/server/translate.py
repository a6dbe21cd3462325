"""Where an exception becomes a gRPC status: applied once to every method of a service.

`translated()` wraps a service's handlers (grpclib's `__mapping__()`); `Service` is what the
server then serves. Workloads see the status and a short message; details that would help an
attacker map the node (paths, selectors) go to the log instead. Errors about the request itself
carry their detail, since the caller needs it to fix the request. A refused call also names its
error class in the trailing metadata key `ensign-error`, so the CLI exits with the same code as
for the same error raised locally (see ensign.daemon.errors).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from google.protobuf.message import DecodeError
from grpclib.const import Handler, Status
from grpclib.exceptions import GRPCError

from ensign.daemon.errors import ERROR_KEY, EnsignError
from ensign.daemon.observe import metrics
from ensign.daemon.server import bounds

log = logging.getLogger(__name__)

HandlerFunc = Callable[[Any], Coroutine[Any, Any, None]]


class Service:
    """Handlers as grpclib serves them: it asks every service for `__mapping__()`."""

    def __init__(self, mapping: Mapping[str, Handler]) -> None:
        self._mapping = dict(mapping)

    def __mapping__(self) -> dict[str, Handler]:
        return self._mapping


def translated(mapping: Mapping[str, Handler], *,
               max_request_bytes: int | None = None) -> Service:
    """Every handler of one service, with errors translated and calls measured.

    `max_request_bytes` raises the socket's bound on request messages for this service (the
    admin API, which only root and the admin group reach)."""
    return Service({path: h._replace(func=_translating(path, h.func, max_request_bytes))
                    for path, h in mapping.items()})


def _translating(path: str, func: HandlerFunc, limit: int | None) -> HandlerFunc:
    name = path.rsplit("/", 1)[-1]
    inflight = metrics.inflight(name)
    seconds = metrics.RPC_SECONDS.labels(name)

    async def handler(stream: Any) -> None:
        status = "OK"
        started = time.perf_counter()
        inflight.n += 1
        if limit is not None:
            bounds.request_limit.set(limit)  # this request's task only
        try:
            await func(stream)
        except GRPCError as e:
            status = e.status.name
            raise
        except DecodeError:
            status = "INVALID_ARGUMENT"
            raise GRPCError(Status.INVALID_ARGUMENT, "malformed request message") from None
        except EnsignError as e:
            status = e.grpc_status.name
            await _refuse(stream, name, e)
        except (asyncio.CancelledError, GeneratorExit):
            status = "CANCELLED"
            raise
        except Exception:
            status = "INTERNAL"
            log.exception("internal error", extra={"method": name})
            raise GRPCError(Status.INTERNAL, "internal error") from None
        finally:
            inflight.n -= 1
            metrics.rpc_counter(name, status).inc()
            seconds.observe(time.perf_counter() - started)

    handler.__name__ = name
    return handler


def public_message(e: EnsignError) -> str:
    """What a caller may read: the detail for errors about its own request, else the class's
    fixed message."""
    return str(e) if e.detailed and str(e) else e.public_message


async def _refuse(stream: Any, method: str, e: EnsignError) -> None:
    message = public_message(e)
    log.info("request refused", extra={
        "method": method, "status": e.grpc_status.name, "reason": e.diagnostics()})
    try:
        await stream.send_trailing_metadata(status=e.grpc_status, status_message=message,
                                            metadata={ERROR_KEY: type(e).__name__})
    except Exception:  # trailers sent already, or the peer is gone: grpclib ends the stream
        raise GRPCError(e.grpc_status, message) from None
