"""Which token an action was done with: one this trust domain issued, or not, and why.

A delegated token (`typ` at+jwt) is verified against the delegated-token keys only, a JWT-SVID
against this trust domain's JWT-SVID keys only (the one verifier of each, `verify_delegated` and
`validate_jwt_svid`), without an audience (the reporter is the resource server, whatever the
token names) and without refusing an expired token: an action reported with it is still
someone's, and the record says it was expired. Anything else (malformed, forged, signed by a key
that is not ours, issued by another trust domain) is `verified=False` with the reason. Never
raises for any input.

In a fleet the keys are every node's published ones, and `key_owner` names the other node whose
key signed a verified token.

Results are cached by the token's SHA-256 (a busy resource server reports many actions with one
token); `expires_at` is compared with the clock at each use, not cached.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

import jwt

from ensign.daemon.delegation import is_delegated_type, verify_delegated
from ensign.daemon.errors import EnsignError
from ensign.daemon.issuing import validate_jwt_svid
from ensign.daemon.keys import PublicKey
from ensign.daemon.spiffe_id import SpiffeId

Kind = Literal["delegated", "jwt-svid", "unknown"]
MAX_CACHED = 4096


@dataclass(frozen=True, slots=True)
class Checked:
    """What the token is. Only `verified` results name a jti and a subject Ensign vouches for."""

    kind: Kind
    verified: bool
    reason: str = ""       # why it is not verified
    jti: str = ""
    subject: str = ""      # verified: the JWT-SVID's sub, or the delegated token's current actor
    expires_at: int = 0
    issued_at: int = 0     # verified: its iat (0 when absent)
    fingerprint: str = ""  # SHA-256 of the token (hex, 32 characters): the token is never kept
    node: str = ""         # verified, in a fleet: the other node whose key signed it


class TokenCheck:
    def __init__(self, *, trust_domain: str, issuer_names: Collection[str],
                 delegation_keys: Callable[[], Mapping[str, PublicKey]],
                 jwt_keys: Callable[[], Mapping[str, PublicKey]],
                 clock: Callable[[], datetime],
                 key_owner: Callable[[str], str] | None = None) -> None:
        self._td = trust_domain
        self._issuers = frozenset(issuer_names)
        self._delegation_keys = delegation_keys
        self._jwt_keys = jwt_keys
        self._clock = clock
        self._key_owner = key_owner
        self._cache: OrderedDict[bytes, Checked] = OrderedDict()

    def check(self, token: str) -> Checked:
        digest = hashlib.sha256(token.encode()).digest()
        hit = self._cache.get(digest)
        if hit is not None:
            self._cache.move_to_end(digest)
            return hit
        try:
            result = self._check(token, digest.hex()[:32])
        except Exception as e:  # hostile input: never a crash, always a recorded reason
            result = Checked("unknown", False, f"token could not be checked: {type(e).__name__}",
                             fingerprint=digest.hex()[:32])
        self._cache[digest] = result
        if len(self._cache) > MAX_CACHED:
            self._cache.popitem(last=False)
        return result

    def _check(self, token: str, fingerprint: str) -> Checked:
        if not token:
            return Checked("unknown", False, "no token given")
        try:
            header = jwt.get_unverified_header(token)
            claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as e:
            return Checked("unknown", False, f"malformed token: {str(e)[:200]}",
                           fingerprint=fingerprint)
        if is_delegated_type(header.get("typ")):
            checked = self._delegated(token, claims, fingerprint)
        else:
            checked = self._jwt_svid(token, claims, fingerprint)
        kid = header.get("kid")
        if checked.verified and self._key_owner is not None and isinstance(kid, str):
            checked = replace(checked, node=self._key_owner(kid))
        return checked

    def _delegated(self, token: str, claims: dict[str, Any], fingerprint: str) -> Checked:
        try:
            t = verify_delegated(token, None, self._delegation_keys(), now=self._clock(),
                                 check_expiry=False)
        except EnsignError as e:
            iss = claims.get("iss")
            if isinstance(iss, str) and iss not in self._issuers:
                reason = (f"delegated token issued by {iss[:200]!r}, not by this trust domain "
                          f"({e})")
            else:
                reason = f"delegated token does not verify against this trust domain's keys: {e}"
            return Checked("delegated", False, reason[:512], fingerprint=fingerprint)
        return Checked("delegated", True, jti=_jti(t.claims), subject=t.actors[0],
                       expires_at=t.expires_at, issued_at=_iat(t.claims),
                       fingerprint=fingerprint)

    def _jwt_svid(self, token: str, claims: dict[str, Any], fingerprint: str) -> Checked:
        td = _trust_domain(claims.get("sub"))
        if td and td != self._td:
            return Checked("jwt-svid", False, f"JWT-SVID of another trust domain ({td[:255]}), "
                           f"not issued by {self._td}", fingerprint=fingerprint)
        try:
            sub, verified = validate_jwt_svid(token, None, self._jwt_keys(), self._td,
                                              self._clock(), check_expiry=False)
        except EnsignError as e:
            return Checked("jwt-svid" if td else "unknown", False,
                           f"not a token of this trust domain: {e}"[:512],
                           fingerprint=fingerprint)
        return Checked("jwt-svid", True, jti=_jti(verified), subject=str(sub),
                       expires_at=int(verified["exp"]), issued_at=_iat(verified),
                       fingerprint=fingerprint)


def _jti(claims: dict[str, Any]) -> str:
    jti = claims.get("jti")
    return jti[:128] if isinstance(jti, str) else ""


def _iat(claims: dict[str, Any]) -> int:
    iat = claims.get("iat")
    return iat if isinstance(iat, int) and not isinstance(iat, bool) else 0  # ours are ints


def _trust_domain(sub: Any) -> str:
    if not isinstance(sub, str):
        return ""
    try:
        return SpiffeId.parse(sub).trust_domain
    except EnsignError:
        return ""
