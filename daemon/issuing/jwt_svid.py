"""JWT-SVIDs: minting, the one validator, and the JWT bundle, per the SPIFFE JWT-SVID standard.

`validate_jwt_svid` is the only place a JWT-SVID is checked (ValidateJWTSVID, `ensign token
verify`): algorithm from the standard's list, a `kid` in the bundle, audience, expiry, and a
`sub` that is a SPIFFE ID in the trust domain. Pure.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from ensign.daemon import keys
from ensign.daemon.errors import TokenInvalid
from ensign.daemon.issuing.svid import SigningAuthority
from ensign.daemon.spiffe_id import SpiffeId

#: Algorithms JWT-SVID validators must accept (JWT-SVID.md §3); everything else is refused.
JWT_SVID_ALGORITHMS = (
    "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512",
)


class AudienceMismatch(TokenInvalid):
    """A genuine token of this trust domain (signature and expiry hold) presented for an
    audience it does not name: its claims say whose it is (anomaly detection, audit)."""

    def __init__(self, message: str, claims: dict[str, Any]) -> None:
        super().__init__(message)
        self.claims = claims


class HolderInactive(TokenInvalid):
    """A genuine, unexpired token of this trust domain whose agent is no longer live
    (suspended, decommissioned, deleted): this node no longer vouches for it."""

    def __init__(self, message: str, claims: dict[str, Any]) -> None:
        super().__init__(message)
        self.claims = claims


@dataclass(frozen=True, slots=True)
class JwtSvid:
    spiffe_id: str
    jti: str
    token: str
    audience: tuple[str, ...]
    issued_at: datetime
    expiry: datetime


def mint_jwt_svid(
    *,
    authority: SigningAuthority,
    spiffe_id: SpiffeId,
    audience: tuple[str, ...],
    ttl: timedelta,
    now: datetime,
    issuer: str | None = None,
    extra_claims: Mapping[str, Any] | None = None,
) -> JwtSvid:
    if not audience:
        raise ValueError("a JWT-SVID needs at least one audience")
    expiry = min(now + ttl, authority.cert.not_valid_after_utc)
    claims: dict[str, Any] = {
        **(extra_claims or {}),
        "sub": str(spiffe_id),
        "aud": list(audience),
        "exp": int(expiry.timestamp()),
        "iat": int(now.timestamp()),
        "jti": secrets.token_urlsafe(16),
    }
    if issuer:
        claims["iss"] = issuer
    token = jwt.encode(
        claims,
        authority.jwt_key,
        algorithm=keys.jws_algorithm(authority.jwt_key),
        headers={"kid": authority.jwt_kid, "typ": "JWT"},
    )
    return JwtSvid(
        spiffe_id=str(spiffe_id),
        jti=claims["jti"],
        token=token,
        audience=audience,
        issued_at=now,
        expiry=datetime.fromtimestamp(claims["exp"], tz=now.tzinfo),
    )


def validate_jwt_svid(
    token: str,
    audience: str,
    authorities: Mapping[str, keys.PublicKey],
    trust_domain: str,
    now: datetime,
) -> tuple[SpiffeId, dict[str, Any]]:
    """Check a JWT-SVID per JWT-SVID.md; return its SPIFFE ID and claims or raise TokenInvalid."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as e:
        raise TokenInvalid(f"malformed token: {e}") from None
    alg = header.get("alg")
    if alg not in JWT_SVID_ALGORITHMS:
        raise TokenInvalid(f"unsupported token algorithm {alg!r}")
    typ = header.get("typ")
    if typ is not None and typ not in ("JWT", "JOSE"):
        raise TokenInvalid(f"token type {typ!r} is not JWT or JOSE")
    kid = header.get("kid")
    if not kid:
        raise TokenInvalid("token header missing key id")
    key = authorities.get(kid)
    if key is None:
        raise TokenInvalid(f"key id {kid!r} not found in the trust bundle")
    if keys.jws_algorithm(key)[:2] != alg[:2]:
        raise TokenInvalid(f"token algorithm {alg} does not match its key")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[alg],
            audience=audience,
            options={"require": ["exp", "sub", "aud"], "verify_iat": False},
            leeway=0,
        )
    except jwt.ExpiredSignatureError:
        raise TokenInvalid("token has expired") from None
    except jwt.InvalidAudienceError:
        message = f"token audience does not include {audience!r}"
        try:  # PyJWT checks the signature and expiry before the audience: the claims are ours
            claims = jwt.decode(token, key, algorithms=[alg], leeway=0,
                                options={"verify_aud": False, "verify_iat": False})
        except jwt.PyJWTError:
            raise TokenInvalid(message) from None
        raise AudienceMismatch(message, claims) from None
    except jwt.PyJWTError as e:
        raise TokenInvalid(f"token is not valid: {e}") from None
    try:
        sub = SpiffeId.parse(str(claims["sub"]))
    except Exception:
        raise TokenInvalid("token subject is not a SPIFFE ID") from None
    if not sub.member_of(trust_domain):
        raise TokenInvalid(f"token subject is not in trust domain {trust_domain}")
    return sub, claims


def jwks(authorities: Mapping[str, keys.PublicKey]) -> bytes:
    """The JWT bundle as the Workload API sends it: a standard JWKS, every key with `kid`."""
    out = []
    for kid, key in authorities.items():
        if isinstance(key, ec.EllipticCurvePublicKey):
            text = jwt.algorithms.ECAlgorithm.to_jwk(key)
        else:
            text = jwt.algorithms.RSAAlgorithm.to_jwk(key)
        jwk: dict[str, Any] = json.loads(text)
        jwk["kid"] = kid
        out.append(jwk)
    return json.dumps({"keys": out}, separators=(",", ":"), sort_keys=True).encode()
