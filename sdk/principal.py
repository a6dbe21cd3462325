"""Who a request acts as, once its token verified: the human, the chain of agents, the scopes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

TokenKind = Literal["delegated", "jwt-svid"]


class Unauthorized(Exception):
    """The request's token is missing or not acceptable (HTTP 401, RFC 6750 invalid_token)."""


class KeysUnavailable(Exception):
    """The keys to verify the token could not be obtained (HTTP 503): the issuer or the local
    Workload API cannot be reached and nothing is cached yet."""


class InsufficientScope(Exception):
    """The token does not carry a scope the operation needs (HTTP 403, insufficient_scope)."""

    def __init__(self, missing: tuple[str, ...]) -> None:
        super().__init__(f"missing scope(s): {' '.join(missing)}")
        self.missing = missing


@dataclass(frozen=True, slots=True)
class Principal:
    """The verified token's parties. For a delegated token (RFC 8693): `human` is `sub` and
    `chain` the actors, the current one first (RFC 8693 §4.1: authorize on the top-level claims
    and the current actor; prior actors are informational). For a JWT-SVID the workload acts for
    itself: `human` is None and the chain is its own SPIFFE ID."""

    kind: TokenKind
    subject: str                 # the token's sub: a human, or the workload's SPIFFE ID
    chain: tuple[str, ...]       # SPIFFE IDs of the acting agents, the current one first
    agent_id: str                # the current agent's registry id (client_id / agent_id)
    scopes: frozenset[str]
    audience: tuple[str, ...]
    expires_at: int
    jti: str
    cert_bound: bool = False     # cnf x5t#S256 matched this request's client certificate
    claims: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def human(self) -> str | None:
        return self.subject if self.kind == "delegated" else None

    @property
    def agent(self) -> str:
        """The current actor's SPIFFE ID."""
        return self.chain[0]

    def has_scope(self, *scopes: str) -> bool:
        return all(s in self.scopes for s in scopes)

    def require_scope(self, *scopes: str) -> None:
        missing = tuple(s for s in scopes if s not in self.scopes)
        if missing:
            raise InsufficientScope(missing)


def actor_chain(act: Any, limit: int = 16) -> tuple[str, ...]:
    """RFC 8693 `act`, nested once per hop, as SPIFFE IDs (or subs), current actor first."""
    chain: list[str] = []
    while isinstance(act, dict):
        sub = act.get("sub")
        if not isinstance(sub, str) or not sub:
            raise Unauthorized("act claim without a sub")
        chain.append(sub)
        if len(chain) > limit:
            raise Unauthorized("act chain too deep")
        act = act.get("act")
    if not chain:
        raise Unauthorized("delegated token without an act claim")
    return tuple(chain)


def scopes_of(claims: Mapping[str, Any]) -> frozenset[str]:
    scope = claims.get("scope", claims.get("scp", ""))
    if isinstance(scope, str):
        return frozenset(scope.split())
    if isinstance(scope, list) and all(isinstance(s, str) for s in scope):
        return frozenset(scope)
    raise Unauthorized("scope claim is neither a string nor a list of strings")
