"""`ensign.delegation.v1.Delegation/ExchangeToken`: a thin servicer; the rules are in delegation.py.

The caller is attested like any Workload API caller and must be an active agent. Every
exchange, granted or refused, is an audit record in the acting agent's trail, with the human
(or first delegator) as delegator; a granted token is released only once its record is durable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives.serialization import Encoding
from grpclib.server import Stream

from ensign.proto import delegation_pb2 as pb
from ensign.proto.delegation_grpc import DelegationBase

from . import audit_records, tokens
from .attestation import AttestationPipeline
from .audit_event import AuditEvent
from .audit_log import AuditLog
from .ca import CertificateAuthority
from .cache import SvidCache
from .caller import attest_stream
from .config import Config
from .delegation import Decision, DelegationDenied, Delegator, Request, decide
from .errors import EnsignError, InvalidRequest
from .grants import GrantBook
from .grpc_errors import translate
from .idp import TrustedIssuers
from .models import AttestedCaller
from .peercred import PeerTracker
from .registry import Entry, Registry
from .roles import RoleBook
from .text import escape
from .units import MAX_TTL_SECONDS

log = logging.getLogger(__name__)
MAX_TOKEN_BYTES = 16 * 1024
SUBJECT_TOKEN_TYPES = ("", "urn:ietf:params:oauth:token-type:jwt",
                       "urn:ietf:params:oauth:token-type:access_token",
                       "urn:ietf:params:oauth:token-type:id_token")


def our_issuer(config: Config) -> str:
    return config.svid.jwt_issuer or f"spiffe://{config.trust_domain}"


class DelegationApi(DelegationBase):
    def __init__(self, *, config: Config, tracker: PeerTracker, pipeline: AttestationPipeline,
                 registry: Registry, roles: RoleBook, grants: GrantBook, issuers: TrustedIssuers,
                 cache: SvidCache, ca: CertificateAuthority, audit: AuditLog,
                 clock: Callable[[], datetime]) -> None:
        self._cfg = config
        self._tracker = tracker
        self._pipeline = pipeline
        self._registry = registry
        self._roles = roles
        self._grants = grants
        self._issuers = issuers
        self._cache = cache
        self._ca = ca
        self._audit = audit
        self._clock = clock
        self._issuer = our_issuer(config)

    @translate
    async def ExchangeToken(
        self, stream: Stream[pb.ExchangeTokenRequest, pb.ExchangeTokenResponse]
    ) -> None:
        request = await stream.recv_message()
        assert request is not None
        attested = await attest_stream(stream, self._tracker, self._pipeline)
        agent = self._agent(attested, stream)
        delegator: Delegator | None = None
        try:
            if not self._cfg.delegation.enabled:
                raise DelegationDenied("delegation is disabled on this node ([delegation] enabled)")
            req = self._request(request)
            delegator = self._delegator(request.subject_token)
            grant = (self._grants.find(delegator.subject, delegator.issuer, agent.id)
                     if delegator.previous is None else None)
            svid = self._cache.x509_for(agent)
            decision = decide(
                agent=agent, roles=self._roles.all, delegator=delegator, grant=grant,
                request=req, issuer=self._issuer,
                cnf_thumbprint=tokens.x5t_s256(svid.cert.public_bytes(Encoding.DER)),
                max_ttl=self._cfg.delegation.token_ttl,
                max_chain_depth=self._cfg.delegation.max_chain_depth, now=self._clock(),
                registry_lookup={e.id: e for e in self._registry.entries()},
            )
        except EnsignError as err:
            self._audit.record_nowait(self._record(attested, agent, delegator, None, err,
                                                   request.audience))
            raise
        token = tokens.mint(self._ca.current().signing(), decision.claims)
        await self._audit.record(self._record(attested, agent, delegator, decision, None,
                                              request.audience))
        await stream.send_message(pb.ExchangeTokenResponse(
            access_token=token, issued_token_type=tokens.ISSUED_TOKEN_TYPE, token_type="Bearer",
            expires_in=decision.expires_in, scopes=list(decision.scopes)))

    def _agent(self, attested: AttestedCaller, stream: Any) -> Entry:
        entries = [e for e in self._registry.match(attested.selectors) if e.kind == "agent"]
        if not entries:
            err = DelegationDenied(f"caller (pid {attested.caller.pid}) is not a registered, "
                                   "active agent")
            self._audit.record_nowait(audit_records.denied("ExchangeToken", attested.caller, err,
                                                           attested))
            raise err
        return entries[0]

    def _request(self, r: pb.ExchangeTokenRequest) -> Request:
        if not r.subject_token:
            raise InvalidRequest("subject_token must be given")
        if len(r.subject_token) > MAX_TOKEN_BYTES:
            raise InvalidRequest(f"subject_token longer than {MAX_TOKEN_BYTES} bytes")
        if r.subject_token_type not in SUBJECT_TOKEN_TYPES:
            raise InvalidRequest(f"unsupported subject_token_type {r.subject_token_type!r}")
        if not r.audience.strip():
            raise InvalidRequest("audience must be specified")
        if any(not s or " " in s for s in r.scopes):
            raise InvalidRequest("scopes must be non-empty and contain no spaces")
        if not 0 <= r.requested_ttl_seconds <= MAX_TTL_SECONDS:
            raise InvalidRequest(f"requested TTL must be between 0 and {MAX_TTL_SECONDS} "
                                 "seconds (3650 days)")
        ttl = timedelta(seconds=r.requested_ttl_seconds) if r.requested_ttl_seconds else None
        return Request(audience=r.audience, scopes=tuple(r.scopes), ttl=ttl,
                       allow_narrowing=r.allow_narrowing)

    def _delegator(self, token: str) -> Delegator:
        now = self._clock()
        try:
            header = jwt.get_unverified_header(token)
            iss = jwt.decode(token, options={"verify_signature": False}).get("iss")
        except jwt.PyJWTError as e:
            raise DelegationDenied(f"subject token is malformed: {e}") from None
        if header.get("typ") == tokens.TOKEN_TYPE and iss == self._issuer:
            try:
                prev = tokens.verify_delegated(token, None, self._ca.jwt_keys(), now=now,
                                               issuer=self._issuer)
            except EnsignError as e:
                raise DelegationDenied(f"subject token (delegated) rejected: {e}") from None
            return Delegator(subject=prev.subject, issuer=str(prev.claims.get("sub_iss", "")),
                             scopes=prev.scopes, expires_at=prev.expires_at, previous=prev)
        human = self._issuers.validate(token, now)
        scope = human.claims.get("scope", human.claims.get("scp")) or ""
        if isinstance(scope, str):
            scopes = tuple(scope.split())
        elif isinstance(scope, list) and all(isinstance(s, str) for s in scope):
            scopes = tuple(scope)
        else:
            raise DelegationDenied("subject token's scope claim is neither a string nor a list")
        return Delegator(subject=human.subject, issuer=human.issuer, scopes=scopes,
                         expires_at=int(human.claims["exp"]), may_act=human.claims.get("may_act"))

    def _record(self, attested: AttestedCaller, agent: Entry, delegator: Delegator | None,
                decision: Decision | None, err: EnsignError | None, audience: str) -> AuditEvent:
        details: dict[str, Any] = {}
        if delegator is not None and delegator.previous is not None:
            details["previous_actors"] = list(delegator.previous.actors)
        if decision is not None:
            details.update(jti=decision.claims["jti"], act=list(decision.actors),
                           grant=decision.grant_id, expires_in=decision.expires_in)
        return AuditEvent(
            type="token.exchanged", result="success" if err is None else "denied",
            reason=err.diagnostics()[:1024] if err else "", agent_id=agent.id,
            spiffe_id=agent.spiffe_id, entry_id=agent.id,
            roles=decision.roles if decision else agent.roles,
            process=audit_records.process_of(attested.caller, attested),
            # An IdP's `sub` is JSON: "\udcff" in it is a lone surrogate, which cannot be written.
            delegator=escape(delegator.subject) if delegator else "",
            audience=(audience,) if audience else (),
            scopes=decision.scopes if decision else (), details=details,
        )
