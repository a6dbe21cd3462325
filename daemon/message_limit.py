"""A bound on one request message, checked against its length prefix before the body is read.

grpclib reads a message's 4-byte length prefix and then buffers that many bytes, granting the
peer more HTTP/2 flow-control window as it goes: one request on the world-writable Workload API
socket could make the daemon hold up to 4 GiB. grpclib has no option for a maximum, so its
`recv_message` is replaced by this one, which refuses an oversized message with
RESOURCE_EXHAUSTED as soon as the prefix arrives, before the body is buffered.

The bound is `[limits] max_request_bytes` for every service on the Workload API socket. The
admin API, which only root and the admin group reach, raises it for its own requests
(`agent apply` of a large fleet is one message) through `ADMIN_MAX_REQUEST_BYTES`.
"""

from __future__ import annotations

import contextvars
import struct
from typing import Any

import grpclib.server
from grpclib.const import Status
from grpclib.exceptions import GRPCError

DEFAULT_MAX_REQUEST_BYTES = 1024 * 1024
ADMIN_MAX_REQUEST_BYTES = 256 * 1024 * 1024

_PREFIX = struct.Struct(">?I")  # compressed flag, message length
_workload_limit = DEFAULT_MAX_REQUEST_BYTES
# Set per request (each runs in a task of its own) by handlers that accept larger messages.
request_limit: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "ensign_request_limit", default=None)


def configure(max_request_bytes: int) -> None:
    global _workload_limit
    _workload_limit = max_request_bytes


def current_limit() -> int:
    override = request_limit.get()
    return _workload_limit if override is None else override


async def recv_message(stream: Any, codec: Any, message_type: Any) -> Any:
    """grpclib.stream.recv_message with the bound applied to the length prefix."""
    meta = await stream.recv_data(_PREFIX.size)
    if not meta:
        return None
    compressed, length = _PREFIX.unpack(meta)
    if compressed:
        raise GRPCError(Status.UNIMPLEMENTED, "compressed request messages are not supported")
    limit = current_limit()
    if length > limit:
        raise GRPCError(Status.RESOURCE_EXHAUSTED,
                        f"request message of {length} bytes is over the {limit}-byte limit")
    body = await stream.recv_data(length)
    if len(body) != length:
        raise GRPCError(Status.INVALID_ARGUMENT, "request message cut short")
    return codec.decode(body, message_type)


def install() -> None:
    """Make grpclib's server streams use `recv_message` (idempotent)."""
    grpclib.server.recv_message = recv_message  # type: ignore[attr-defined]
