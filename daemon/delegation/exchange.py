"""Token exchange (RFC 8693) as one procedure, whatever the transport: gRPC on the Workload API
socket, and the HTTPS token endpoint for OAuth clients. The rules are in `rules.decide` (pure);
this module finds the delegator, the grant and the agent's certificate, mints the token with the
delegated-token key set and writes the audit record. Every exchange, granted or refused, is a
`token.exchanged` record in the acting agent's trail with the human (or first delegator) as
delegator and the presenter (the local process, or the mTLS peer) as the transport saw it; a
token leaves only once its record is durable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives.serialization import Encoding

from ensign.daemon.audit.event import AuditEvent
from ensign.daemon.audit.log import AuditLog
from ensign.daemon.audit.records import process_of
from ensign.daemon.config import Config
from ensign.daemon.delegation import tokens
from ensign.daemon.delegation.idp import TrustedIssuers
from ensign.daemon.delegation.rules import Decision, DelegationDenied, Delegator, Request, decide
from ensign.daemon.delegation.signing import DelegationKeys
from ensign.daemon.errors import EnsignError, InvalidRequest
from ensign.daemon.issuing import SvidCache
from ensign.daemon.models import AttestedCaller
from ensign.daemon.registry import Entry, GrantBook, Registry, RoleBook
from ensign.daemon.text import escape
from ensign.daemon.units import MAX_TTL_SECONDS

MAX_TOKEN_BYTES = 16 * 1024
SUBJECT_TOKEN_TYPES = ("", "urn:ietf:params:oauth:token-type:jwt",
                       "urn:ietf:params:oauth:token-type:access_token",
                       "urn:ietf:params:oauth:token-type:id_token")


def our_issuer(config: Config) -> str:
    """`iss` of delegated tokens: the HTTPS endpoint's issuer URL when configured (resource
    servers discover the keys from it), else the JWT issuer, else the trust domain."""
    return config.http.issuer or config.svid.jwt_issuer or f"spiffe://{config.trust_domain}"


def issuer_names(config: Config) -> frozenset[str]:
    """Every name this node's agents are known under as `iss` (may_act, act.iss)."""
    return frozenset(n for n in (our_issuer(config), config.svid.jwt_issuer,
                                 f"spiffe://{config.trust_domain}") if n)


@dataclass(frozen=True, slots=True)
class Presenter:
    """Who presented the exchange, as its transport established it.

    gRPC: the local process (`attested`), whose agent's current X.509-SVID binds the token.
    HTTPS: the mTLS peer, whose presented certificate binds the token (`cnf`) and bounds its
    lifetime.
    """

    attested: AttestedCaller | None = None
    address: str = ""
    cert_der: bytes = b""
    cert_not_after: datetime | None = None
    transport: str = "grpc"

    @classmethod
    def local(cls, attested: AttestedCaller) -> Presenter:
        return cls(attested=attested)

    @classmethod
    def mtls(cls, address: str, cert_der: bytes, not_after: datetime) -> Presenter:
        return cls(address=address, cert_der=cert_der, cert_not_after=not_after,
                   transport="https")

    def details(self) -> dict[str, Any]:
        if self.attested is not None:
            return {"transport": self.transport}
        return {"transport": self.transport,
                "peer": {"address": self.address, "x5t#S256": tokens.x5t_s256(self.cert_der)}}


@dataclass(frozen=True, slots=True)
class ExchangeRequest:
    """An exchange as the agent asked for it, before any check."""

    subject_token: str
    subject_token_type: str
    audience: str
    scopes: tuple[str, ...]
    requested_ttl_seconds: int = 0
    allow_narrowing: bool = False


@dataclass(frozen=True, slots=True)
class Issued:
    access_token: str
    expires_in: int
    scopes: tuple[str, ...]
    issued_token_type: str = tokens.ISSUED_TOKEN_TYPE
    token_type: str = "Bearer"


class TokenExchange:
    def __init__(self, *, config: Config, registry: Registry, roles: RoleBook,
                 grants: GrantBook, issuers: TrustedIssuers, cache: SvidCache,
                 keys: DelegationKeys, audit: AuditLog,
                 clock: Callable[[], datetime]) -> None:
        self._cfg = config
        self._registry = registry
        self._roles = roles
        self._grants = grants
        self._issuers = issuers
        self._cache = cache
        self._keys = keys
        self._audit = audit
        self._clock = clock
        self.issuer = our_issuer(config)
        self._issuer_names = issuer_names(config)

    async def exchange(self, agent: Entry, presenter: Presenter,
                       request: ExchangeRequest) -> Issued:
        """Decide, mint and record; raises (after recording the refusal) when refused."""
        delegator: Delegator | None = None
        try:
            if not self._cfg.delegation.enabled:
                raise DelegationDenied("delegation is disabled on this node ([delegation] "
                                       "enabled)", "unauthorized_client")
            req = _checked(request)
            delegator = self._delegator(request.subject_token)
            grant = (self._grants.find(delegator.subject, delegator.issuer, agent.id)
                     if delegator.previous is None else None)
            if presenter.cert_der:
                cert_der, not_after = presenter.cert_der, presenter.cert_not_after
            else:
                svid = self._cache.x509_for(agent)
                cert_der, not_after = svid.cert.public_bytes(Encoding.DER), svid.not_after
            decision = decide(
                agent=agent, roles=self._roles.all, delegator=delegator, grant=grant,
                request=req, issuer=self.issuer, cnf_thumbprint=tokens.x5t_s256(cert_der),
                cnf_not_after=not_after, max_ttl=self._cfg.delegation.token_ttl,
                max_chain_depth=self._cfg.delegation.max_chain_depth, now=self._clock(),
                registry_lookup=self._registry.lookup, issuer_names=self._issuer_names,
            )
        except EnsignError as err:
            self._audit.record_nowait(self._record(presenter, agent, delegator, None, err,
                                                   request.audience))
            raise
        token = tokens.mint(self._keys.signing(), decision.claims)
        await self._audit.record(self._record(presenter, agent, delegator, decision, None,
                                              request.audience))
        return Issued(access_token=token, expires_in=decision.expires_in,
                      scopes=decision.scopes)

    def _delegator(self, token: str) -> Delegator:
        now = self._clock()
        try:
            header = jwt.get_unverified_header(token)
            iss = jwt.decode(token, options={"verify_signature": False}).get("iss")
        except jwt.PyJWTError as e:
            raise DelegationDenied(f"subject token is malformed: {e}",
                                   "invalid_request") from None
        if tokens.is_delegated_type(header.get("typ")) and iss == self.issuer:
            # Only the delegated-token keys: a JWT-SVID key never vouches for a delegated token.
            try:
                prev = tokens.verify_delegated(token, None, self._keys.verification_keys(),
                                               now=now, issuer=self.issuer)
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

    def _record(self, presenter: Presenter, agent: Entry, delegator: Delegator | None,
                decision: Decision | None, err: EnsignError | None, audience: str) -> AuditEvent:
        details: dict[str, Any] = presenter.details()
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
            process=(process_of(presenter.attested.caller, presenter.attested)
                     if presenter.attested is not None else None),
            # An IdP's `sub` is JSON: "\udcff" in it is a lone surrogate, which cannot be written.
            delegator=escape(delegator.subject) if delegator else "",
            audience=(audience,) if audience else (),
            scopes=decision.scopes if decision else (), details=details,
        )


def _checked(r: ExchangeRequest) -> Request:
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
    return Request(audience=r.audience, scopes=r.scopes, ttl=ttl,
                   allow_narrowing=r.allow_narrowing)
