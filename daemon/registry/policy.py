"""Roles: what an agent may ask for, and the rules that apply them. Pure: no storage, no I/O.

A role names the audiences its holders may get JWT-SVIDs for (an entry ending in `*` is a
prefix wildcard), the scopes they may be delegated, the longest token lifetime, and whether
they may act for users or re-delegate.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from typing import Any

from ensign.daemon.errors import InvalidRequest, PermissionDenied
from ensign.daemon.units import MAX_TTL_SECONDS

ROLE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
MAX_AUDIENCES_PER_ROLE = 256


@dataclass(frozen=True, slots=True)
class Role:
    name: str
    audiences: tuple[str, ...]
    scopes: tuple[str, ...] = ()
    max_ttl: int = 0  # seconds; 0 = no cap beyond the daemon's
    may_act_for_users: bool = False
    may_redelegate: bool = False
    may_introspect: bool = False  # may ask the HTTPS endpoint whether a token is active
    created_at: int = 0
    updated_at: int = 0
    revision: int = 1

    def allows(self, audience: str) -> bool:
        return any(audience_matches(p, audience) for p in self.audiences)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["audiences"], d["scopes"] = list(self.audiences), list(self.scopes)
        return d


def audience_matches(pattern: str, audience: str) -> bool:
    if pattern.endswith("*"):
        return audience.startswith(pattern[:-1])
    return audience == pattern


def validate_role(role: Role) -> Role:
    if not ROLE_NAME.match(role.name):
        raise InvalidRequest(
            f"invalid role name {role.name!r}: lowercase letters, digits, '.', '_', '-' (max 64)"
        )
    if not role.audiences:
        raise InvalidRequest(f"role {role.name}: give at least one audience")
    if len(role.audiences) > MAX_AUDIENCES_PER_ROLE:
        raise InvalidRequest(f"role {role.name}: at most {MAX_AUDIENCES_PER_ROLE} audiences")
    for a in role.audiences:
        if not a.strip() or "*" in a[:-1] or len(a) > 512:
            raise InvalidRequest(
                f"role {role.name}: invalid audience {a!r} ('*' only as the last character)"
            )
    for s in role.scopes:
        if not s or any(c.isspace() for c in s) or len(s) > 256:
            raise InvalidRequest(f"role {role.name}: invalid scope {s!r} (no spaces)")
    if not 0 <= role.max_ttl <= MAX_TTL_SECONDS:
        raise InvalidRequest(f"role {role.name}: max_ttl must be between 0 and "
                             f"{MAX_TTL_SECONDS} seconds (3650 days)")
    return replace(role, audiences=tuple(dict.fromkeys(role.audiences)),
                   scopes=tuple(dict.fromkeys(role.scopes)))


class AudienceDenied(PermissionDenied):
    public_message = "audience not allowed"


def jwt_ttl_cap(
    agent_roles: Iterable[str],
    roles: Mapping[str, Role],
    audiences: Iterable[str],
    *,
    default_allow: bool,
) -> timedelta | None:
    """Check that the agent's roles allow every audience; return the TTL cap (None: no cap).

    Each audience must be allowed by at least one of the agent's roles. Its lifetime is capped by
    the most generous role that allows it, and the token by the tightest of those caps.
    """
    held = [roles[r] for r in agent_roles if r in roles]
    if not held:
        if default_allow:
            return None
        raise AudienceDenied(
            "agent has no roles and the policy denies audiences by default "
            "([policy] default_allow_audiences = false)"
        )
    cap: int | None = None
    for audience in audiences:
        best: int | None = None  # the most generous cap of the roles allowing it; 0: none
        for r in held:
            if audience in r.audiences or r.allows(audience):  # exact first: the usual case
                if r.max_ttl == 0:
                    best = 0
                    break
                best = r.max_ttl if best is None else max(best, r.max_ttl)
        if best is None:
            raise AudienceDenied(f"audience {audience!r} is not allowed by the agent's roles "
                                 f"({', '.join(r.name for r in held)})")
        if best:
            cap = best if cap is None else min(cap, best)
    return None if cap is None else timedelta(seconds=cap)


def x509_ttl_cap(agent_roles: Iterable[str], roles: Mapping[str, Role]) -> timedelta | None:
    """An X.509-SVID lives no longer than the most generous of the agent's roles allows."""
    caps = [roles[r].max_ttl for r in agent_roles if r in roles]
    if not caps or 0 in caps:
        return None
    return timedelta(seconds=max(caps))
