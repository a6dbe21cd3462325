"""The SPIFFE Workload API servicer: check the header, attest the caller, compose, send.

The rules live elsewhere (attestation, registry match, SVID cache); this module only wires
them to the wire format. Streams send their first message at once, then the full state after
every change, suppressing duplicates, and end with PermissionDenied when the caller's last
identity goes away.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

from ensign.daemon.api import _records as audit_records
from ensign.daemon.api.front import check_limits, check_security_header
from ensign.daemon.audit.event import AuditEvent
from ensign.daemon.audit.log import AuditLog
from ensign.daemon.config import Config
from ensign.daemon.errors import (
    AuditUnavailable,
    CallerGone,
    EnsignError,
    InvalidRequest,
    NoIdentity,
)
from ensign.daemon.identity.pipeline import AttestationPipeline
from ensign.daemon.issuing.ca import CertificateAuthority
from ensign.daemon.issuing.cache import Broadcast, SvidCache
from ensign.daemon.issuing.svid import JwtSvid, X509Svid, validate_jwt_svid
from ensign.daemon.keys import to_pkcs8_der
from ensign.daemon.models import AttestedCaller, Caller
from ensign.daemon.registry.registry import Entry, Registry
from ensign.daemon.registry.roles import AudienceDenied, RoleBook, jwt_ttl_cap, x509_ttl_cap
from ensign.daemon.server.peercred import PeerTracker
from ensign.daemon.server.translate import translate
from ensign.daemon.spiffe_id import SpiffeId
from ensign.proto import workload_pb2 as pb
from ensign.proto.workload_grpc import SpiffeWorkloadAPIBase

log = logging.getLogger(__name__)

SECURITY_HEADER = "workload.spiffe.io"
MAX_AUDIENCES = 32
MAX_AUDIENCE_BYTES = 512
MAX_TOKEN_BYTES = 16 * 1024
MAX_ISSUED_EVENTS = 1024


class WorkloadApi(SpiffeWorkloadAPIBase):
    def __init__(
        self,
        *,
        config: Config,
        tracker: PeerTracker,
        pipeline: AttestationPipeline,
        registry: Registry,
        roles: RoleBook,
        cache: SvidCache,
        ca: CertificateAuthority,
        audit: AuditLog,
        broadcast: Broadcast,
        clock: Any,
        node: Any = None,
        on_validated: Callable[[str, str], None] | None = None,
    ) -> None:
        self._node = node  # TpmService: node selectors, current at every match
        self._on_validated = on_validated  # (jti, subject): replay detection
        self._cfg = config
        self._tracker = tracker
        self._pipeline = pipeline
        self._registry = registry
        self._roles = roles
        self._cache = cache
        self._audit = audit
        self._ca = ca
        self._broadcast = broadcast
        self._clock = clock
        self._td_id = str(SpiffeId.for_trust_domain(config.trust_domain))
        self._issued: dict[tuple[int, int, int],
                           tuple[AttestedCaller, Entry, JwtSvid, AuditEvent]] = {}
        # entry id -> (svid, bundle, hint, message): serializing the key and chain once per SVID.
        # Served only while the cache still hands out that very SVID; bounded like _issued.
        self._x509_messages: dict[str, tuple[X509Svid, bytes, str, pb.X509SVID]] = {}

    # -- caller ----------------------------------------------------------------------------

    async def _attest(self, stream: Stream[Any, Any]) -> AttestedCaller:
        caller = self._caller(stream)
        return self._pipeline.cached(caller) or await self._attest_anew(caller)

    def _caller(self, stream: Stream[Any, Any]) -> Caller:
        check_security_header(stream)  # an EnsignError: refusals reach the audit trail
        conn = self._tracker.connection_of(stream)
        if conn.caller is None:
            raise CallerGone(conn.problem or "caller unknown")
        check_limits(self._tracker, conn)  # [limits]: per-uid connections and request rate
        return conn.caller

    async def _attest_anew(self, caller: Caller) -> AttestedCaller:
        attested = await self._pipeline.attest(caller)
        if attested.fresh:
            self._audit.record_nowait(audit_records.attestation(attested))
        return attested

    @contextlib.asynccontextmanager
    async def _audited(self, stream: Stream[Any, Any], method: str) -> AsyncIterator[_Seen]:
        """Record every refusal of this request in the audit trail, then let it propagate."""
        seen = _Seen()
        try:
            yield seen
        except EnsignError as err:
            self._refused(stream, method, seen, err)
            raise

    def _refused(self, stream: Stream[Any, Any], method: str, seen: _Seen,
                 err: EnsignError) -> None:
        if not isinstance(err, AuditUnavailable):
            caller = self._tracker.connection_of(stream).caller
            self._audit.record_nowait(audit_records.denied(
                method, caller, err, seen.attested, seen.entry, seen.audience))

    async def _durably(self, events: list[AuditEvent]) -> None:
        """Wait until every record is on disk: only then may the credentials be released."""
        await self._audit.durable(events)

    def _jwt_issued(self, attested: AttestedCaller, entry: Entry, svid: JwtSvid) -> AuditEvent:
        """The same event object for the same caller, entry and cached token: the audit log
        then reuses its encoding."""
        key = (id(attested), id(entry), id(svid))
        hit = self._issued.get(key)
        if hit is not None and hit[0] is attested and hit[1] is entry and hit[2] is svid:
            return hit[3]
        if len(self._issued) >= MAX_ISSUED_EVENTS:
            self._issued.clear()
        event = audit_records.jwt_issued(attested, entry, svid)
        self._issued[key] = (attested, entry, svid, event)  # held, so the ids stay theirs
        return event

    def _identities(self, attested: AttestedCaller) -> list[Entry]:
        selectors = attested.selectors
        if self._node is not None:
            selectors = frozenset(s for s in selectors if not s.startswith("tpm:"))
            selectors |= self._node.node_selectors()
        entries = self._registry.match(selectors)
        if not entries and self._node is not None and not self._node.available:
            from ensign.attestors.tpm import matches_with_tpm
            from ensign.daemon.tpm.errors import TpmUnavailable
            if matches_with_tpm(self._registry.active_selector_sets(), selectors):
                raise TpmUnavailable(f"TPM unavailable: {self._node.problem}")
        if not entries:
            raise NoIdentity(f"no entry matches pid {attested.caller.pid} "
                             f"selectors {sorted(attested.selectors)}")
        return entries

    # -- X.509 -----------------------------------------------------------------------------

    @translate
    async def FetchX509SVID(self, stream: Stream[pb.X509SVIDRequest, pb.X509SVIDResponse]) -> None:
        await stream.recv_message()
        async with self._audited(stream, "FetchX509SVID") as seen:
            await self._stream_x509(stream, seen)

    async def _stream_x509(
        self, stream: Stream[pb.X509SVIDRequest, pb.X509SVIDResponse], seen: _Seen
    ) -> None:
        attested = seen.attested = await self._attest(stream)
        watched: list[str] = []
        last = b""
        version = self._broadcast.version
        try:
            while True:
                entries = self._identities(attested)
                ids = [e.id for e in entries]
                if ids != watched:
                    self._cache.watch(ids)
                    self._cache.unwatch(watched)
                    watched = ids
                response, issued = self._compose_x509(entries)
                data = response.SerializeToString(deterministic=True)
                if data != last:
                    await self._durably([audit_records.x509_issued(attested, e, svid)
                                         for e, svid in issued])
                    await stream.send_message(response)
                    last = data
                version = await self._broadcast.wait(version)
        finally:
            self._cache.unwatch(watched)

    def _compose_x509(
        self, entries: Sequence[Entry]
    ) -> tuple[pb.X509SVIDResponse, list[tuple[Entry, X509Svid]]]:
        bundle = self._ca.x509_bundle_der()
        svids = []
        issued = []
        for e in entries:
            svid = self._cache.x509_for(e, x509_ttl_cap(e.roles, self._roles.all))
            issued.append((e, svid))
            svids.append(self._x509_message(e, svid, bundle))
        return pb.X509SVIDResponse(svids=_unique_hints(svids)), issued

    def _x509_message(self, entry: Entry, svid: X509Svid, bundle: bytes) -> pb.X509SVID:
        hit = self._x509_messages.get(entry.id)
        if hit is not None and hit[0] is svid and hit[1] is bundle and hit[2] == entry.hint:
            return hit[3]
        if len(self._x509_messages) >= MAX_ISSUED_EVENTS:
            self._x509_messages.clear()
        message = pb.X509SVID(spiffe_id=svid.spiffe_id, x509_svid=svid.chain_der(),
                              x509_svid_key=to_pkcs8_der(svid.key), bundle=bundle,
                              hint=entry.hint)
        self._x509_messages[entry.id] = (svid, bundle, entry.hint, message)
        return message

    @translate
    async def FetchX509Bundles(
        self, stream: Stream[pb.X509BundlesRequest, pb.X509BundlesResponse]
    ) -> None:
        await stream.recv_message()
        async with self._audited(stream, "FetchX509Bundles"):
            await self._stream_bundles(stream, lambda: pb.X509BundlesResponse(
                bundles={self._td_id: self._ca.x509_bundle_der()}))

    async def _stream_bundles(self, stream: Stream[Any, Any], compose: Callable[[], Any]) -> None:
        """Bundles go to callers that hold an identity (as SPIRE does), again after changes."""
        attested = await self._attest(stream)
        last = b""
        version = self._broadcast.version
        while True:
            self._identities(attested)
            response = compose()
            data = response.SerializeToString(deterministic=True)
            if data != last:
                await stream.send_message(response)
                last = data
            version = await self._broadcast.wait(version)

    # -- JWT -------------------------------------------------------------------------------

    @translate
    async def FetchJWTSVID(self, stream: Stream[pb.JWTSVIDRequest, pb.JWTSVIDResponse]) -> None:
        request = await stream.recv_message()
        assert request is not None
        seen = _Seen()  # the hot path: what _audited does, without a context manager
        try:
            await self._fetch_jwt(stream, request, seen)
        except EnsignError as err:
            self._refused(stream, "FetchJWTSVID", seen, err)
            raise

    async def _fetch_jwt(
        self,
        stream: Stream[pb.JWTSVIDRequest, pb.JWTSVIDResponse],
        request: pb.JWTSVIDRequest,
        seen: _Seen,
    ) -> None:
        audience = seen.audience = _check_audience(list(request.audience))
        wanted: SpiffeId | None = None
        if request.spiffe_id:
            wanted = SpiffeId.parse(request.spiffe_id)
        caller = self._caller(stream)  # the cache hit without awaiting: the usual case
        attested = self._pipeline.cached(caller) or await self._attest_anew(caller)
        seen.attested = attested
        entries = self._identities(attested)
        if wanted is not None:
            entries = [e for e in entries if e.spiffe_id == str(wanted)]
            if not entries:
                raise NoIdentity(f"caller is not entitled to {wanted}")
        svids = []
        records: list[AuditEvent] = []
        denied: AudienceDenied | None = None
        for e in entries:
            try:
                cap = jwt_ttl_cap(e.roles, self._roles.all, audience,
                                  default_allow=self._cfg.policy.default_allow_audiences)
            except AudienceDenied as err:
                denied = err  # another identity of this caller may still be allowed
                seen.entry = e
                continue
            jwt_svid = self._cache.jwt_for(e, audience, self._cfg.svid.jwt_issuer, cap)
            records.append(self._jwt_issued(attested, e, jwt_svid))
            svids.append(pb.JWTSVID(spiffe_id=jwt_svid.spiffe_id, svid=jwt_svid.token, hint=e.hint))
        if not svids and denied is not None:
            raise denied
        await self._audit.durable(records)  # on disk before the tokens leave: fail closed
        await stream.send_message(pb.JWTSVIDResponse(svids=svids))

    @translate
    async def FetchJWTBundles(
        self, stream: Stream[pb.JWTBundlesRequest, pb.JWTBundlesResponse]
    ) -> None:
        await stream.recv_message()
        async with self._audited(stream, "FetchJWTBundles"):
            await self._stream_bundles(stream, lambda: pb.JWTBundlesResponse(
                bundles={self._td_id: self._ca.jwks()}))

    @translate
    async def ValidateJWTSVID(
        self, stream: Stream[pb.ValidateJWTSVIDRequest, pb.ValidateJWTSVIDResponse]
    ) -> None:
        request = await stream.recv_message()
        assert request is not None
        async with self._audited(stream, "ValidateJWTSVID"):
            await self._validate(stream, request)

    async def _validate(
        self,
        stream: Stream[pb.ValidateJWTSVIDRequest, pb.ValidateJWTSVIDResponse],
        request: pb.ValidateJWTSVIDRequest,
    ) -> None:
        if not request.audience:
            raise InvalidRequest("audience must be specified")
        if not request.svid:
            raise InvalidRequest("svid must be specified")
        if len(request.svid) > MAX_TOKEN_BYTES:
            raise InvalidRequest(f"svid longer than {MAX_TOKEN_BYTES} bytes")
        attested = await self._attest(stream)
        self._identities(attested)
        now: datetime = self._clock()
        sub, claims = validate_jwt_svid(
            request.svid, request.audience, self._ca.jwt_keys(), self._cfg.trust_domain, now
        )
        if self._on_validated is not None:
            self._on_validated(str(claims.get("jti", "")), str(sub))
        response = pb.ValidateJWTSVIDResponse(spiffe_id=str(sub))
        response.claims.update(claims)
        await stream.send_message(response)

    # -- WIT (not supported; the standard requires Unimplemented) ----------------------------

    async def FetchWITSVID(self, stream: Stream[pb.WITSVIDRequest, pb.WITSVIDResponse]) -> None:
        raise GRPCError(Status.UNIMPLEMENTED, "fetching WIT-SVIDs is not implemented")

    async def FetchWITBundles(
        self, stream: Stream[pb.WITBundlesRequest, pb.WITBundlesResponse]
    ) -> None:
        raise GRPCError(Status.UNIMPLEMENTED, "fetching WIT bundles is not implemented")


@dataclass(slots=True)
class _Seen:
    """What a request had established when it was refused (for its audit record)."""

    attested: AttestedCaller | None = None
    entry: Entry | None = None
    audience: tuple[str, ...] = ()


def _check_audience(audience: list[str]) -> tuple[str, ...]:
    if not audience:
        raise InvalidRequest("audience must be specified")
    if len(audience) > MAX_AUDIENCES:
        raise InvalidRequest(f"at most {MAX_AUDIENCES} audiences per request, got {len(audience)}")
    for a in audience:
        if not a.strip():
            raise InvalidRequest("audience values must not be empty")
        if len(a.encode()) > MAX_AUDIENCE_BYTES:
            raise InvalidRequest(f"audience values are limited to {MAX_AUDIENCE_BYTES} bytes")
    return tuple(audience)


def _unique_hints(svids: list[pb.X509SVID]) -> list[pb.X509SVID]:
    """Hints must be unique within a response (Workload API §5.2.1): keep the first holder."""
    seen: set[str] = set()
    out = []
    for s in svids:
        if s.hint in seen:
            s = pb.X509SVID(spiffe_id=s.spiffe_id, x509_svid=s.x509_svid,
                            x509_svid_key=s.x509_svid_key, bundle=s.bundle)  # cached: not edited
        elif s.hint:
            seen.add(s.hint)
        out.append(s)
    return out
