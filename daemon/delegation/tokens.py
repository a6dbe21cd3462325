"""Delegated tokens (RFC 8693 `act`, RFC 9068 shape): minting claims and verifying them.

`verify_delegated` is what a resource server (or `ensign token verify`) runs: signature against
the trust domain's JWKS, `typ: at+jwt`, audience, expiry, and a well-formed actor chain. It
authorizes nothing by itself: the caller decides on the top-level claims and the current actor
(`act.sub`), as RFC 8693 §4.1 says; prior actors are informational.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jwt
from jwt.types import Options

from ensign.daemon import keys
from ensign.daemon.errors import TokenInvalid
from ensign.daemon.issuing import SigningAuthority

TOKEN_TYPE = "at+jwt"
ISSUED_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
MAX_ACT_DEPTH = 16


@dataclass(frozen=True, slots=True)
class DelegatedToken:
    subject: str  # the human (or first delegator)
    actors: tuple[str, ...]  # current actor first, then prior actors
    scopes: tuple[str, ...]
    audience: tuple[str, ...]
    expires_at: int
    claims: dict[str, Any]

    @property
    def depth(self) -> int:
        return len(self.actors)


def x5t_s256(cert_der: bytes) -> str:
    """RFC 8705 certificate thumbprint for the `cnf` claim."""
    return base64.urlsafe_b64encode(hashlib.sha256(cert_der).digest()).decode().rstrip("=")


def actor_chain(act: Any) -> tuple[str, ...]:
    chain: list[str] = []
    while isinstance(act, dict) and len(chain) <= MAX_ACT_DEPTH:
        sub = act.get("sub")
        if not isinstance(sub, str) or not sub:
            raise TokenInvalid("act claim without a sub")
        chain.append(sub)
        act = act.get("act")
    if len(chain) > MAX_ACT_DEPTH:
        raise TokenInvalid("act chain too deep")
    return tuple(chain)


def mint(authority: SigningAuthority, claims: dict[str, Any]) -> str:
    return jwt.encode(claims, authority.jwt_key, algorithm=keys.jws_algorithm(authority.jwt_key),
                      headers={"kid": authority.jwt_kid, "typ": TOKEN_TYPE})


def new_jti() -> str:
    return secrets.token_urlsafe(16)


def verify_delegated(
    token: str,
    audience: str | None,
    jwks: Mapping[str, Any],
    *,
    now: datetime,
    issuer: str | None = None,
) -> DelegatedToken:
    """Verify a delegated token; `audience=None` skips the audience check (chains do their own)."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as e:
        raise TokenInvalid(f"malformed token: {e}") from None
    if header.get("typ") != TOKEN_TYPE:
        raise TokenInvalid(f"not a delegated token (typ {header.get('typ')!r}, expected at+jwt)")
    alg = header.get("alg")
    if alg not in ("ES256", "ES384", "RS256"):
        raise TokenInvalid(f"unsupported algorithm {alg!r}")
    key = jwks.get(header.get("kid", ""))
    if key is None:
        raise TokenInvalid(f"key id {header.get('kid')!r} not found in the trust bundle")
    options: Options = {"require": ["exp", "sub", "aud", "act", "iat"],
                        "verify_aud": audience is not None}
    try:
        claims: dict[str, Any] = jwt.decode(
            token, key, algorithms=[alg], audience=audience, issuer=issuer, options=options,
            leeway=0)
    except jwt.ExpiredSignatureError:
        raise TokenInvalid("token has expired") from None
    except jwt.InvalidAudienceError:
        raise TokenInvalid(f"token audience does not include {audience!r}") from None
    except jwt.PyJWTError as e:
        raise TokenInvalid(f"token is not valid: {e}") from None
    aud = claims["aud"]
    return DelegatedToken(
        subject=str(claims["sub"]),
        actors=actor_chain(claims["act"]),
        scopes=tuple(str(claims.get("scope", "")).split()),
        audience=tuple(aud) if isinstance(aud, list) else (str(aud),),
        expires_at=int(claims["exp"]),
        claims=claims,
    )
