"""Token introspection (RFC 7662): is this delegated token active right now, for this caller?

Active means: signed by a delegated-token key of this node, issued by us, unexpired, every
agent in its actor chain still registered and live (not suspended, decommissioned or expired),
and the grant it was issued under (if any) not revoked. All of that is read from the registry in
memory, so a suspension or revocation shows at the next introspection. A caller learns about a
token only when one of its roles that may introspect allows the token's audience (RFC 7662 §4:
the resource server may only ask about tokens meant for it); anything else is `active: false`
with no other member.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from ensign.daemon.delegation.signing import DelegationKeys
from ensign.daemon.delegation.tokens import verify_delegated
from ensign.daemon.errors import EnsignError, PermissionDenied
from ensign.daemon.registry import Entry, GrantBook, Registry, Role

INACTIVE: dict[str, Any] = {"active": False}
_COPIED = ("scope", "client_id", "sub", "aud", "iss", "exp", "iat", "jti", "act", "cnf")


def introspecting_roles(caller: Entry, roles: Mapping[str, Role]) -> list[Role]:
    """The caller's roles that may introspect; PermissionDenied when there are none."""
    held = [roles[r] for r in caller.roles if r in roles and roles[r].may_introspect]
    if not held:
        raise PermissionDenied(f"{caller.spiffe_id} ({caller.id}) holds no role that may "
                               "introspect tokens (role --may-introspect)")
    return held


class Introspector:
    def __init__(self, *, keys: DelegationKeys, registry: Registry, grants: GrantBook,
                 issuer: str, clock: Callable[[], datetime]) -> None:
        self._keys = keys
        self._registry = registry
        self._grants = grants
        self._issuer = issuer
        self._clock = clock

    def introspect(self, token: str, allowed: list[Role]) -> dict[str, Any]:
        now = self._clock()
        try:
            t = verify_delegated(token, None, self._keys.verification_keys(), now=now,
                                 issuer=self._issuer)
        except EnsignError:
            return dict(INACTIVE)
        if not any(r.allows(aud) for r in allowed for aud in t.audience):
            return dict(INACTIVE)
        if not self._chain_live(t.claims, now.timestamp()):
            return dict(INACTIVE)
        grant_id = (t.claims.get("dlg") or {}).get("grant") \
            if isinstance(t.claims.get("dlg"), dict) else None
        if grant_id:
            try:
                if not self._grants.get(str(grant_id)).is_active(now.timestamp()):
                    return dict(INACTIVE)
            except EnsignError:
                return dict(INACTIVE)
        out: dict[str, Any] = {"active": True, "token_type": "Bearer"}
        out.update({k: t.claims[k] for k in _COPIED if k in t.claims})
        return out

    def _chain_live(self, claims: dict[str, Any], now: float) -> bool:
        """Every agent that acted on the way (current and prior actors) is still live."""
        act = claims.get("act")
        lookup = self._registry.lookup
        while isinstance(act, dict):
            entry = lookup.get(str(act.get("agent_id", "")))
            if entry is None or entry.spiffe_id != act.get("sub") or not entry.is_live(now):
                return False
            act = act.get("act")
        current = lookup.get(str(claims.get("client_id", "")))
        return current is not None and current.is_live(now)
