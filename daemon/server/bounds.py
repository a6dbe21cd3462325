"""The bounds grpclib and h2 lack, installed by the server when it starts (`install()`).

1. A bound on one request message, checked against its length prefix before the body is read.

grpclib reads a message's 4-byte length prefix and then buffers that many bytes, granting the
peer more HTTP/2 flow-control window as it goes: one request on the world-writable Workload API
socket could make the daemon hold up to 4 GiB. grpclib has no option for a maximum, so its
`recv_message` is replaced by this one, which refuses an oversized message with
RESOURCE_EXHAUSTED as soon as the prefix arrives, before the body is buffered.

The bound is `[limits] max_request_bytes` for every service on the Workload API socket. The
admin API, which only root and the admin group reach, raises it for its own requests
(`agent apply` of a large fleet is one message) through `ADMIN_MAX_REQUEST_BYTES`.

Many callers each sending a large message slowly would still add up, so large messages (over
`LARGE`) share a budget while they are being received, `[limits] max_pending_request_bytes`:
one that does not fit is refused at once (RESOURCE_EXHAUSTED, retry later), and small ones,
which every Workload API call is, never wait on it.

2. h2 remembers how each closed stream ended, up to 65,536 per connection, to answer late
frames precisely. A client that keeps one connection and makes many calls (every SPIFFE client
does) grew the daemon by ~150 bytes per call until that bound, several MiB per connection: a
local caller could spend the daemon's memory. A late frame on a forgotten stream is answered
with a stream error instead, which is all a peer needs. grpclib builds its H2Connection itself,
so the bound is set on the class (this process serves nothing else over HTTP/2).
"""

from __future__ import annotations

import contextvars
import struct
from typing import Any

import grpclib.server
import h2.connection
from google.protobuf.message import DecodeError

from ensign.daemon.errors import InvalidRequest, RequestTooLarge

DEFAULT_MAX_REQUEST_BYTES = 1024 * 1024
DEFAULT_MAX_PENDING_BYTES = 64 * 1024 * 1024
ADMIN_MAX_REQUEST_BYTES = 256 * 1024 * 1024
LARGE = 64 * 1024
CLOSED_STREAMS_REMEMBERED = 256

_PREFIX = struct.Struct(">?I")  # compressed flag, message length
_workload_limit = DEFAULT_MAX_REQUEST_BYTES
_pending_budget = DEFAULT_MAX_PENDING_BYTES
_pending = 0  # bytes of large Workload-socket messages being received now (event loop only)
# Set per request (each runs in a task of its own) by handlers that accept larger messages.
request_limit: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "ensign_request_limit", default=None)


def configure(max_request_bytes: int, max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES) -> None:
    global _workload_limit, _pending_budget
    _workload_limit, _pending_budget = max_request_bytes, max_pending_bytes


def pending_bytes() -> int:
    return _pending


async def recv_message(stream: Any, codec: Any, message_type: Any) -> Any:
    """grpclib.stream.recv_message with the bound applied to the length prefix."""
    meta = await stream.recv_data(_PREFIX.size)
    if not meta:
        return None
    compressed, length = _PREFIX.unpack(meta)
    if compressed:
        raise InvalidRequest("compressed request messages are not supported")
    override = request_limit.get()
    limit = _workload_limit if override is None else override
    if length > limit:
        raise RequestTooLarge(f"request message of {length} bytes is over the {limit}-byte limit")
    if length <= LARGE or override is not None:  # the admin's requests are not budgeted
        body = await _read(stream, length)
    else:
        body = await _budgeted(stream, length)
    try:
        return codec.decode(body, message_type)
    except DecodeError:  # an EnsignError, so the refusal reaches the audit trail
        raise InvalidRequest("malformed request message") from None


async def _read(stream: Any, length: int) -> bytes:
    try:
        body: bytes = await stream.recv_data(length)
    except AssertionError:  # grpclib's way of saying the stream ended before the message did
        body = b""
    if len(body) != length:
        raise InvalidRequest("request message cut short")
    return body


async def _budgeted(stream: Any, length: int) -> bytes:
    global _pending
    if _pending + length > _pending_budget:
        raise RequestTooLarge("too many large requests are being received; retry later")
    _pending += length
    try:  # released however the read ends: done, cut short, or cancelled with the connection
        return await _read(stream, length)
    finally:
        _pending -= length


def install() -> None:
    """Bound request messages and h2's per-connection memory (idempotent)."""
    grpclib.server.recv_message = recv_message  # type: ignore[attr-defined]
    h2.connection.H2Connection.MAX_CLOSED_STREAMS = CLOSED_STREAMS_REMEMBERED
