"""The SPIFFE Workload API servicer: compose what the caller's identities get, and send it.

The front (api/front.py) has checked the header and found the caller; the rules live elsewhere
(attestation, registry match, roles, SVID cache). Streams send their first message at once,
then the full state after every change, suppressing duplicates; before every update the caller
is attested again through the cache, so a stream whose process exited (a child holding the
socket) ends with UNAUTHENTICATED instead of receiving new keys, and it ends with
PermissionDenied when the caller's last identity goes away.

Federation: a caller whose entries name trust domains in `federates_with` also receives those
domains' bundles (as fetched from their bundle endpoints) in FetchX509SVID's
`federated_bundles`, in FetchX509Bundles and FetchJWTBundles, and ValidateJWTSVID accepts their
JWT-SVIDs; nobody else sees or is vouched for by a federated bundle.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import jwt
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

from ensign.daemon.api import _records
from ensign.daemon.api.front import Call, recv
from ensign.daemon.audit.event import AuditEvent
from ensign.daemon.audit.log import AuditLog
from ensign.daemon.config import Config
from ensign.daemon.errors import EnsignError, InvalidRequest, NoIdentity, TokenInvalid
from ensign.daemon.federation import FederatedBundles, TrustBundle
from ensign.daemon.issuing import (
    AudienceMismatch,
    Broadcast,
    CertificateAuthority,
    HolderInactive,
    JwtSvid,
    SvidCache,
    X509Svid,
    validate_jwt_svid,
)
from ensign.daemon.keys import PublicKey, to_pkcs8_der
from ensign.daemon.models import AttestedCaller
from ensign.daemon.registry import (
    AudienceDenied,
    Entry,
    Registry,
    RoleBook,
    jwt_ttl_cap,
    x509_ttl_cap,
)
from ensign.daemon.spiffe_id import SpiffeId
from ensign.daemon.tpm.errors import TpmUnavailable
from ensign.proto import workload_pb2 as pb

log = logging.getLogger(__name__)

MAX_AUDIENCES = 32
MAX_AUDIENCE_BYTES = 512
MAX_TOKEN_BYTES = 16 * 1024
MAX_ISSUED_EVENTS = 1024

class WorkloadApi:
    def __init__(
        self,
        *,
        config: Config,
        registry: Registry,
        roles: RoleBook,
        cache: SvidCache,
        ca: CertificateAuthority,
        audit: AuditLog,
        broadcast: Broadcast,
        clock: Callable[[], datetime],
        federation: FederatedBundles | None = None,
        jwt_keys: Callable[[], Mapping[str, PublicKey]] | None = None,
        jwks: Callable[[], bytes] | None = None,
    ) -> None:
        self._federation = federation
        self._registry = registry
        # The JWT bundle served and validated against: this node's keys, or in a fleet the
        # union of every node's published keys (fleet/keys.py).
        self._jwt_keys = jwt_keys or ca.jwt_keys
        self._jwks = jwks or ca.jwks
        self._cfg = config
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
        # Cached JWT-SVIDs whose first `svid.issued` record is durable (by id, held so the id
        # stays theirs): delivering one again need not hold the reply for its record.
        self._recorded: dict[int, JwtSvid] = {}
        # The reply for the same tokens and hints, built once (and serialized by grpclib).
        self._jwt_replies: dict[tuple[tuple[int, str], ...],
                                tuple[tuple[JwtSvid, ...], pb.JWTSVIDResponse]] = {}

    def _jwt_issued(self, attested: AttestedCaller, entry: Entry, svid: JwtSvid) -> AuditEvent:
        """The same event object for the same caller, entry and cached token: the audit log
        then reuses its encoding."""
        key = (id(attested), id(entry), id(svid))
        hit = self._issued.get(key)
        if hit is not None and hit[0] is attested and hit[1] is entry and hit[2] is svid:
            return hit[3]
        if len(self._issued) >= MAX_ISSUED_EVENTS:
            self._issued.clear()
        event = _records.jwt_issued(attested, entry, svid)
        self._issued[key] = (attested, entry, svid, event)  # held, so the ids stay theirs
        return event

    # -- X.509 -----------------------------------------------------------------------------

    async def FetchX509SVID(self, stream: Stream[pb.X509SVIDRequest, pb.X509SVIDResponse],
                            call: Call) -> None:
        await stream.recv_message()
        watched: list[str] = []
        last = b""
        version = self._broadcast.version
        try:
            while True:
                attested = await call.attested()  # again at every update: is it still there?
                entries = call.identities()
                ids = [e.id for e in entries]
                if ids != watched:
                    self._cache.watch(ids)
                    self._cache.unwatch(watched)
                    watched = ids
                response, issued = self._compose_x509(entries)
                for b in self._federated(entries):
                    response.federated_bundles[_td_id(b.trust_domain)] = b.x509_der()
                data = response.SerializeToString(deterministic=True)
                if data != last:
                    await self._audit.durable([_records.x509_issued(attested, e, svid)
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

    async def FetchX509Bundles(
        self, stream: Stream[pb.X509BundlesRequest, pb.X509BundlesResponse], call: Call
    ) -> None:
        await stream.recv_message()
        await self._stream_bundles(stream, call, lambda entries: pb.X509BundlesResponse(
            bundles={self._td_id: self._ca.x509_bundle_der(),
                     **{_td_id(b.trust_domain): b.x509_der()
                        for b in self._federated(entries)}}))

    def _federated(self, entries: Sequence[Entry]) -> list[TrustBundle]:
        """The federated bundles these entries receive (their `federates_with`, as held)."""
        if self._federation is None:
            return []
        wanted = tuple(td for e in entries for td in e.federates_with)
        return self._federation.available(wanted) if wanted else []

    async def _stream_bundles(self, stream: Stream[Any, Any], call: Call,
                              compose: Callable[[Sequence[Entry]], Any]) -> None:
        """Bundles go to callers that hold an identity (as SPIRE does), again after changes."""
        last = b""
        version = self._broadcast.version
        while True:
            await call.attested()
            response = compose(call.identities())
            data = response.SerializeToString(deterministic=True)
            if data != last:
                await stream.send_message(response)
                last = data
            version = await self._broadcast.wait(version)

    # -- JWT -------------------------------------------------------------------------------

    async def FetchJWTSVID(self, stream: Stream[pb.JWTSVIDRequest, pb.JWTSVIDResponse],
                           call: Call) -> None:
        request = await recv(stream)
        audience = call.audience = _check_audience(list(request.audience))
        wanted: SpiffeId | None = None
        if request.spiffe_id:
            wanted = SpiffeId.parse(request.spiffe_id)
        attested = await call.attested()
        entries = call.identities()
        if wanted is not None:
            entries = [e for e in entries if e.spiffe_id == str(wanted)]
            if not entries:
                raise NoIdentity(f"caller is not entitled to {wanted}")
        tokens: list[tuple[JwtSvid, str]] = []
        records: list[AuditEvent] = []
        denied: AudienceDenied | None = None
        hints: set[str] = set()  # unique within a response (Workload API 6.2.1): first keeps it
        for e in entries:
            try:
                cap = jwt_ttl_cap(e.roles, self._roles.all, audience,
                                  default_allow=self._cfg.policy.default_allow_audiences)
            except AudienceDenied as err:
                denied = err  # another identity of this caller may still be allowed
                call.entry = e
                continue
            jwt_svid = self._cache.jwt_for(e, audience, self._cfg.svid.jwt_issuer, cap)
            records.append(self._jwt_issued(attested, e, jwt_svid))
            hint = e.hint if e.hint not in hints else ""
            hints.add(hint)
            tokens.append((jwt_svid, hint))
        if not tokens and denied is not None:
            raise denied
        recorded = self._recorded
        if not (all(recorded.get(id(t)) is t for t, _ in tokens) and self._audit.deferred(records)):
            # A token's first release: its record is on disk before it leaves (fail closed).
            await self._audit.durable(records)
            if len(recorded) + len(tokens) > MAX_ISSUED_EVENTS:
                recorded.clear()
            for t, _ in tokens:
                recorded[id(t)] = t
        await stream.send_message(self._jwt_reply(tokens))

    def _jwt_reply(self, tokens: list[tuple[JwtSvid, str]]) -> pb.JWTSVIDResponse:
        key = tuple((id(t), hint) for t, hint in tokens)
        hit = self._jwt_replies.get(key)
        if hit is not None and all(a is b for a, (b, _) in zip(hit[0], tokens, strict=True)):
            return hit[1]
        if len(self._jwt_replies) >= MAX_ISSUED_EVENTS:
            self._jwt_replies.clear()
        reply = pb.JWTSVIDResponse(svids=[
            pb.JWTSVID(spiffe_id=t.spiffe_id, svid=t.token, hint=hint) for t, hint in tokens])
        self._jwt_replies[key] = (tuple(t for t, _ in tokens), reply)  # held: ids stay theirs
        return reply

    async def FetchJWTBundles(
        self, stream: Stream[pb.JWTBundlesRequest, pb.JWTBundlesResponse], call: Call
    ) -> None:
        await stream.recv_message()
        # JWT-SVID keys only: the delegated-token keys are never in a JWT bundle (§6.2.2).
        await self._stream_bundles(stream, call, lambda entries: pb.JWTBundlesResponse(
            bundles={self._td_id: self._jwks(),
                     **{_td_id(b.trust_domain): b.jwks() for b in self._federated(entries)}}))

    async def ValidateJWTSVID(
        self, stream: Stream[pb.ValidateJWTSVIDRequest, pb.ValidateJWTSVIDResponse], call: Call
    ) -> None:
        request = await recv(stream)
        if not request.audience:
            raise InvalidRequest("audience must be specified")
        if len(request.audience.encode()) > MAX_AUDIENCE_BYTES:
            raise InvalidRequest(f"audience values are limited to {MAX_AUDIENCE_BYTES} bytes")
        if not request.svid:
            raise InvalidRequest("svid must be specified")
        if len(request.svid) > MAX_TOKEN_BYTES:
            raise InvalidRequest(f"svid longer than {MAX_TOKEN_BYTES} bytes")
        # A validating service need not hold an identity (as with SPIRE); it is attested and
        # every answer is audited, naming whose token it checked.
        attested = await call.attested()
        call.audience = (request.audience,)
        entries = _identities_or_none(call)
        validator = tuple(e.spiffe_id for e in entries)
        try:
            td, keys = self._authorities_for(request.svid, entries)
            sub, claims = validate_jwt_svid(request.svid, request.audience, keys, td,
                                            self._clock())
            self._check_holder(td, claims)
        except (AudienceMismatch, HolderInactive) as err:  # genuine: its agent is named
            self._audit.record_nowait(_records.validated(
                attested, err.claims, request.audience, validator, err))
            call.recorded = True
            raise
        self._audit.record_nowait(_records.validated(attested, claims, request.audience,
                                                     validator))
        response = pb.ValidateJWTSVIDResponse(spiffe_id=str(sub))
        response.claims.update(claims)
        await stream.send_message(response)

    def _check_holder(self, trust_domain: str, claims: dict[str, Any]) -> None:
        """A JWT-SVID of ours names its agent; once that agent is suspended, decommissioned or
        deleted, this node no longer vouches for its tokens (as introspection says inactive).
        In a fleet the registry is the fleet's copy: a token minted on another node is refused
        here once its agent is suspended anywhere."""
        if trust_domain != self._cfg.trust_domain:
            return
        entry = self._registry.lookup.get(str(claims.get("agent_id", "")))
        if entry is None or not entry.is_live(self._clock().timestamp()):
            state = entry.state if entry is not None else "deleted"
            raise HolderInactive(f"the token's agent is {state}", claims)

    def _authorities_for(self, token: str,
                         entries: Sequence[Entry]) -> tuple[str, Mapping[str, Any]]:
        """The trust domain a JWT-SVID claims (its `sub`) and the keys that may have signed it:
        ours, or a federated domain's when the caller federates with it."""
        td = _claimed_trust_domain(token) or self._cfg.trust_domain
        if td == self._cfg.trust_domain:
            return td, self._jwt_keys()
        for b in self._federated(entries):
            if b.trust_domain == td:
                return td, b.jwt_authorities
        raise TokenInvalid(f"token subject is in trust domain {td}, which the caller does "
                           "not federate with (or whose bundle is not available)")

    # -- WIT (not supported; the standard requires Unimplemented) ----------------------------

    async def FetchWITSVID(self, stream: Stream[pb.WITSVIDRequest, pb.WITSVIDResponse],
                           call: Call) -> None:
        raise GRPCError(Status.UNIMPLEMENTED, "fetching WIT-SVIDs is not implemented")

    async def FetchWITBundles(
        self, stream: Stream[pb.WITBundlesRequest, pb.WITBundlesResponse], call: Call
    ) -> None:
        raise GRPCError(Status.UNIMPLEMENTED, "fetching WIT bundles is not implemented")


def _td_id(trust_domain: str) -> str:
    return f"spiffe://{trust_domain}"


def _claimed_trust_domain(token: str) -> str:
    """The trust domain of the unverified `sub`; "" when it names none (validation says why)."""
    try:
        sub = jwt.decode(token, options={"verify_signature": False}).get("sub")
        return SpiffeId.parse(str(sub)).trust_domain if isinstance(sub, str) else ""
    except (jwt.PyJWTError, EnsignError):
        return ""


def _identities_or_none(call: Call) -> list[Entry]:
    """The caller's identities, or none: a validator need not hold one."""
    try:
        return call.identities()
    except (NoIdentity, TpmUnavailable):
        return []


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
