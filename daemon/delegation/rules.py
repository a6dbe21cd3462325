"""The exchange rules: may this agent act for this delegator, and with what? Pure: no I/O.

Two kinds of subject token:
  * a human's token from a trusted IdP: the human consented when the token's `may_act` names
    the agent, or a standing grant exists; the agent's roles must allow acting for users;
  * another agent's delegated token (a chain): its current actor must be a different, active
    agent whose roles allow re-delegation, and the chain must stay within `max_chain_depth`.
Granted scopes = requested ∩ the delegator's (token's or grant's) ∩ the agent's roles'. Asking
for more is refused, never silently narrowed, unless the request allows narrowing. A token bound
to the agent's certificate (`cnf`) never outlives that certificate.

Every refusal names the OAuth error (RFC 6749 §5.2, RFC 8693 §2.2.2) the HTTPS token endpoint
answers with; the gRPC service answers PERMISSION_DENIED with the same description.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from ensign.daemon.delegation.tokens import DelegatedToken, new_jti
from ensign.daemon.errors import PermissionDenied
from ensign.daemon.registry import Entry, Grant, Role

OAuthError = Literal["invalid_request", "invalid_grant", "invalid_target", "invalid_scope",
                     "unauthorized_client"]


class DelegationDenied(PermissionDenied):
    public_message = "delegation refused"

    def __init__(self, message: str, error: OAuthError = "invalid_grant") -> None:
        super().__init__(message)
        self.oauth_error: OAuthError = error


@dataclass(frozen=True, slots=True)
class Request:
    audience: str
    scopes: tuple[str, ...]
    ttl: timedelta | None
    allow_narrowing: bool


@dataclass(frozen=True, slots=True)
class Delegator:
    """Who delegates, as established from the subject token."""

    subject: str
    issuer: str
    scopes: tuple[str, ...]
    expires_at: int
    may_act: Any = None  # the human token's may_act claim
    previous: DelegatedToken | None = None  # set for agent-to-agent chains


@dataclass(frozen=True, slots=True)
class Decision:
    claims: dict[str, Any]
    scopes: tuple[str, ...]
    expires_in: int
    actors: tuple[str, ...]
    grant_id: str = ""
    roles: tuple[str, ...] = field(default_factory=tuple)


def may_act_names(may_act: Any, agent: Entry, issuers: Collection[str]) -> bool:
    """RFC 8693 §4.4: does `may_act` (an object, or a list of them) name this agent?

    A party is named by `sub` within `iss` (§4.1): a member naming another issuer does not name
    our agent, whatever its `sub`. The SPIFFE ID names its trust domain, so `iss` may be left
    out with it; the bare agent id is only ours when `iss` says so.
    """
    items = may_act if isinstance(may_act, list) else [may_act]
    for m in items:
        if not isinstance(m, dict):
            continue
        iss = m.get("iss")
        if iss is not None and iss not in issuers:
            continue
        if m.get("sub") == agent.spiffe_id or (iss is not None and m.get("sub") == agent.id):
            return True
    return False


def _scopes_of(roles: Iterable[Role]) -> set[str]:
    return {s for r in roles for s in r.scopes}


def decide(
    *,
    agent: Entry,
    roles: Mapping[str, Role],
    delegator: Delegator,
    grant: Grant | None,
    request: Request,
    issuer: str,
    cnf_thumbprint: str,
    cnf_not_after: datetime | None = None,
    max_ttl: timedelta,
    max_chain_depth: int,
    now: datetime,
    registry_lookup: Mapping[str, Entry],
    issuer_names: Collection[str] = (),
) -> Decision:
    held = [roles[r] for r in agent.roles if r in roles]
    acting = [r for r in held if r.may_act_for_users]
    if not acting:
        raise DelegationDenied(f"agent {agent.id} holds no role that may act for users "
                               "(role --may-act-for-users)", "unauthorized_client")
    # (1) Consent, or a valid chain.
    prior_act: dict[str, Any] | None = None
    dlg: dict[str, Any] = {"roles": [r.name for r in acting]}
    base_scopes = set(delegator.scopes)
    previous = delegator.previous
    if previous is not None:
        actor_id = previous.claims.get("client_id", "")
        actor = registry_lookup.get(str(actor_id))
        if actor is None or actor.spiffe_id != previous.actors[0]:
            raise DelegationDenied("the subject token's actor is not a registered agent")
        if actor.id == agent.id:
            raise DelegationDenied("an agent cannot re-delegate to itself")
        if not actor.is_live(now.timestamp()):
            raise DelegationDenied(f"the delegating agent {actor.id} is {actor.state}")
        if not any(roles[r].may_redelegate for r in actor.roles if r in roles):
            raise DelegationDenied(f"agent {actor.id} may not re-delegate "
                                   "(role --may-redelegate)")
        if previous.depth + 1 > max_chain_depth:
            raise DelegationDenied(f"delegation chain would be {previous.depth + 1} deep; "
                                   f"the limit is {max_chain_depth}")
        if request.audience not in previous.audience and agent.spiffe_id not in previous.audience:
            raise DelegationDenied(f"audience {request.audience!r} is wider than the subject "
                                   f"token's {list(previous.audience)}", "invalid_target")
        prior_act = previous.claims["act"]
        dlg = {**previous.claims.get("dlg", {}), "roles": [r.name for r in acting]}
    elif may_act_names(delegator.may_act, agent, issuer_names or (issuer,)):
        dlg["may_act"] = True
    elif grant is not None:
        dlg["grant"] = grant.id
        base_scopes = set(grant.scopes) if not delegator.scopes \
            else set(grant.scopes) & set(delegator.scopes)
    else:
        raise DelegationDenied(f"{delegator.subject} has not allowed agent {agent.id} to act "
                               "for them: not named in may_act, and no grant")
    # (2) Audience: some role that may act for users must allow it.
    granting = [r for r in acting if r.allows(request.audience)]
    if not granting:
        raise DelegationDenied(f"audience {request.audience!r} is not allowed by the agent's "
                               f"roles ({', '.join(r.name for r in acting)})", "invalid_target")
    # (3) Scopes: requested ∩ delegator's ∩ roles'.
    allowed = base_scopes & _scopes_of(granting)
    requested = set(request.scopes) or allowed
    granted = tuple(sorted(requested & allowed))
    missing = sorted(requested - allowed)
    if missing and not request.allow_narrowing:
        raise DelegationDenied(f"scope(s) {', '.join(missing)} not allowed: not held by the "
                               "delegator or not in the agent's roles", "invalid_scope")
    if not granted:
        raise DelegationDenied("no scope left to grant", "invalid_scope")
    # (4) Lifetime: config, request, roles, and never past the delegator's token.
    caps = [max_ttl] + ([request.ttl] if request.ttl else [])
    role_caps = [r.max_ttl for r in granting]
    if 0 not in role_caps:
        caps.append(timedelta(seconds=max(role_caps)))
    exp = min(int((now + min(caps)).timestamp()), delegator.expires_at)
    if cnf_not_after is not None:  # bound to the certificate: useless once it expired
        exp = min(exp, int(cnf_not_after.timestamp()))
    expires_in = exp - int(now.timestamp())
    if expires_in <= 0:
        raise DelegationDenied("the subject token (or the agent's certificate) expires too "
                               "soon to delegate")
    act: dict[str, Any] = {"sub": agent.spiffe_id, "agent_id": agent.id, "iss": issuer,
                           "sub_profile": "ai_agent"}
    if prior_act is not None:
        act["act"] = prior_act
    claims: dict[str, Any] = {
        "iss": issuer, "sub": delegator.subject, "aud": request.audience,
        "iat": int(now.timestamp()), "exp": exp, "jti": new_jti(),
        "scope": " ".join(granted), "client_id": agent.id, "act": act,
        "cnf": {"x5t#S256": cnf_thumbprint}, "dlg": dlg,
    }
    if delegator.issuer:
        claims["sub_iss"] = delegator.issuer
    actors = (agent.spiffe_id, *(previous.actors if previous else ()))
    return Decision(claims=claims, scopes=granted, expires_in=expires_in, actors=actors,
                    grant_id=grant.id if grant and "grant" in dlg else "",
                    roles=tuple(r.name for r in granting))
