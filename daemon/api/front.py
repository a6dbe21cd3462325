"""The one front every servicer sits behind: header → caller → attestation → identities → audit.

A servicer method receives the stream and a `Call`: the caller the kernel named for the
connection, already past the security header, the per-uid limits and (on the admin socket) the
uid check, all before the request message is read. `await call.attested()` attests it (cached,
with an `attestation` audit record when fresh) and `call.identities()` resolves the registry
entries it holds, TPM node selectors included. Every refusal of every method is one
`request.denied` audit record, written here, unless the servicer wrote a richer record of its
own (`call.recorded`). No servicer checks a header, reads credentials or attests by itself.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, TypeVar

from grpclib.server import Stream

from ensign.daemon.api import _records
from ensign.daemon.audit.log import AuditLog
from ensign.daemon.errors import AuditUnavailable, CallerGone, EnsignError, InvalidRequest
from ensign.daemon.identity.pipeline import AttestationPipeline
from ensign.daemon.identity.resolve import Resolver
from ensign.daemon.models import AttestedCaller, Caller
from ensign.daemon.registry import Entry
from ensign.daemon.server import Connection, PeerTracker, RateLimited, Service, translated

SECURITY_HEADER = "workload.spiffe.io"
Req = TypeVar("Req")


@dataclass(frozen=True, slots=True)
class Policy:
    """What the front checks for one service."""

    header: bool = True  # `workload.spiffe.io: true` required (Envoy's SDS sends none)
    audit: str = "all"  # which refusals become audit records: "all" | "auth" (admin) | "none"
    #: raises PermissionDenied unless the caller may use the service (the admin API)
    authorize: Callable[[Caller], None] | None = None
    max_request_bytes: int | None = None  # over the socket's bound (the admin API)
    prefix: str = ""  # of the method name in refusal records ("admin.")


WORKLOAD = Policy()


class Call:
    """One request's caller, and what it had established if it is refused (its audit record)."""

    __slots__ = ("_front", "audience", "caller", "entry", "method", "recorded", "seen")

    def __init__(self, front: Front, method: str, caller: Caller) -> None:
        self._front = front
        self.method = method
        self.caller = caller
        self.seen: AttestedCaller | None = None
        self.entry: Entry | None = None
        self.audience: tuple[str, ...] = ()
        self.recorded = False  # the servicer wrote this refusal's record itself

    async def attested(self) -> AttestedCaller:
        """The caller's selectors and evidence: from the cache while its process image is the
        same, else attested anew. Raises CallerGone once the pinned process has exited."""
        self.seen = await self._front.attest(self.caller)
        return self.seen

    def identities(self) -> list[Entry]:
        """The live entries the attested caller holds; NoIdentity when none."""
        assert self.seen is not None, "attested() first"
        return self._front.resolver.resolve(self.seen)


class Front:
    def __init__(self, *, tracker: PeerTracker, pipeline: AttestationPipeline,
                 resolver: Resolver, audit: AuditLog) -> None:
        self.tracker = tracker
        self.pipeline = pipeline
        self.resolver = resolver
        self.audit = audit

    # -- one request -----------------------------------------------------------------------

    def begin(self, stream: Stream[Any, Any], method: str, policy: Policy) -> Call:
        conn = self.tracker.connection_of(stream)
        if policy.header:
            check_security_header(stream)
        if conn.caller is None:
            raise CallerGone(conn.problem or "caller unknown")
        check_limits(self.tracker, conn)
        if policy.authorize is not None:
            policy.authorize(conn.caller)
        return Call(self, method, conn.caller)

    async def attest(self, caller: Caller) -> AttestedCaller:
        hit = self.pipeline.cached(caller)  # the usual case: no await
        if hit is not None:
            return hit
        attested = await self.pipeline.attest(caller)
        if attested.fresh:
            self.audit.record_nowait(_records.attestation(attested))
        return attested

    def refused(self, stream: Stream[Any, Any], method: str, call: Call | None,
                err: EnsignError) -> None:
        if isinstance(err, AuditUnavailable) or (call is not None and call.recorded):
            return
        caller = call.caller if call is not None else self.tracker.connection_of(stream).caller
        self.audit.record_nowait(_records.denied(
            method, caller, err, call.seen if call else None, call.entry if call else None,
            call.audience if call else ()))

    # -- binding servicers -----------------------------------------------------------------

    def serve(self, base: type[Any], servicer: object, policy: Policy = WORKLOAD) -> Service:
        """The servicer's methods, `(stream, call)` each, behind this front, as the generated
        `base` maps them onto the wire; errors translated once for the whole service."""
        names = sorted(base.__abstractmethods__)
        guarded = SimpleNamespace(**{
            n: self._guard(n, getattr(servicer, n), policy) for n in names})
        return translated(base.__mapping__(guarded),
                          max_request_bytes=policy.max_request_bytes)

    def _guard(self, method: str, func: Callable[[Stream[Any, Any], Call],
                                                  Coroutine[Any, Any, None]],
               policy: Policy) -> Callable[[Stream[Any, Any]], Coroutine[Any, Any, None]]:
        async def guarded(stream: Stream[Any, Any]) -> None:
            call: Call | None = None
            try:
                call = self.begin(stream, method, policy)
                await func(stream, call)
            except EnsignError as err:
                if policy.audit == "all" or (policy.audit == "auth" and call is None):
                    self.refused(stream, policy.prefix + method, call, err)
                raise

        return guarded


async def recv(stream: Stream[Req, Any]) -> Req:
    """The request message; a stream that ends without one is a bad request."""
    message = await stream.recv_message()
    if message is None:
        raise InvalidRequest("request message missing")
    return message


def check_security_header(stream: Stream[Any, Any]) -> None:
    """Exactly one `workload.spiffe.io: true`, as the Workload API requires of every request."""
    values = stream.metadata.getall(SECURITY_HEADER, []) if stream.metadata else []
    if values != ["true"]:
        raise InvalidRequest("security header missing from request")


def check_limits(tracker: PeerTracker, conn: Connection) -> None:
    limits, caller = tracker.limits, conn.caller
    if limits is None or caller is None:
        return
    if conn.over_limit:
        raise RateLimited(f"uid {caller.uid} has too many connections open "
                          f"({limits.connections(caller.uid)}); close some and retry")
    if not limits.allow(caller.uid):
        raise RateLimited(f"uid {caller.uid} is over its request rate; retry with backoff")
