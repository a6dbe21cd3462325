"""Delegated tokens (RFC 8693 `act`, RFC 9068 shape): minting claims and verifying them.

`verify_delegated` is what a resource server (or `ensign token verify`) runs: signature against
the delegated-token key set (never the JWT-SVID keys), `typ` `at+jwt` or `application/at+jwt`
(RFC 9068 §4), audience, expiry, a well-formed actor chain, and, when the presenter's certificate
is known, the `cnf` binding (RFC 8705 §3). It authorizes nothing by itself: the caller decides
on the top-level claims and the current actor (`act.sub`), as RFC 8693 §4.1 says; prior actors
are informational.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jwt
from jwt.types import Options

from ensign.daemon import keys
from ensign.daemon.delegation.signing import ALGORITHMS, SigningKey
from ensign.daemon.errors import TokenInvalid

TOKEN_TYPE = "at+jwt"
#: `typ` values of a delegated token; media types compare case-insensitively (RFC 7515 §4.1.9)
TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})
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


def is_delegated_type(typ: object) -> bool:
    return isinstance(typ, str) and typ.lower() in TOKEN_TYPES


def mint(key: SigningKey, claims: dict[str, Any]) -> str:
    return jwt.encode(claims, key.key, algorithm=key.alg,
                      headers={"kid": key.kid, "typ": TOKEN_TYPE})


def new_jti() -> str:
    return secrets.token_urlsafe(16)


def verify_delegated(
    token: str,
    audience: str | None,
    jwks: Mapping[str, Any],
    *,
    now: datetime,
    issuer: str | None = None,
    presenter_cert: bytes | None = None,
    check_expiry: bool = True,
) -> DelegatedToken:
    """Verify a delegated token against the delegated-token keys (`jwks`: kid -> public key).

    `audience=None` skips the audience check (chains do their own). `presenter_cert` is the DER
    certificate the token was presented with (mTLS): a token bound to another one is refused.
    `check_expiry=False` accepts an expired token whose signature holds (attributing an action
    reported after the fact); the caller compares `expires_at` itself.
    """
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as e:
        raise TokenInvalid(f"malformed token: {e}") from None
    if not is_delegated_type(header.get("typ")):
        raise TokenInvalid(f"not a delegated token (typ {header.get('typ')!r}, expected at+jwt)")
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        raise TokenInvalid(f"unsupported algorithm {alg!r}")
    key = jwks.get(header.get("kid", ""))
    if key is None:
        raise TokenInvalid(f"key id {header.get('kid')!r} is not a delegated-token key")
    if keys.jws_algorithm(key) != alg:
        raise TokenInvalid(f"token algorithm {alg} does not match its key")
    # Expiry (and nbf) against `now` (the daemon's clock), not PyJWT's own reading of the wall
    # clock.
    options: Options = {"require": ["exp", "sub", "aud", "act", "iat"],
                        "verify_aud": audience is not None, "verify_exp": False,
                        "verify_nbf": False, "verify_iat": False}
    try:
        claims: dict[str, Any] = jwt.decode(
            token, key, algorithms=[alg], audience=audience, issuer=issuer, options=options,
            leeway=0)
    except jwt.InvalidAudienceError:
        raise TokenInvalid(f"token audience does not include {audience!r}") from None
    except jwt.PyJWTError as e:
        raise TokenInvalid(f"token is not valid: {e}") from None
    exp = claims["exp"]
    if not isinstance(exp, int | float) or isinstance(exp, bool) or not math.isfinite(exp):
        raise TokenInvalid("token is not valid: exp must be a number")
    if check_expiry and exp <= now.timestamp():
        raise TokenInvalid("token has expired")
    nbf = claims.get("nbf")
    if isinstance(nbf, int | float) and not isinstance(nbf, bool) and nbf > now.timestamp():
        raise TokenInvalid("token is not valid yet")
    if presenter_cert is not None:
        check_binding(claims, presenter_cert)
    aud = claims["aud"]
    return DelegatedToken(
        subject=str(claims["sub"]),
        actors=actor_chain(claims["act"]),
        scopes=tuple(str(claims.get("scope", "")).split()),
        audience=tuple(aud) if isinstance(aud, list) else (str(aud),),
        expires_at=int(claims["exp"]),
        claims=claims,
    )


def check_binding(claims: dict[str, Any], cert_der: bytes) -> None:
    """RFC 8705 §3: a token with `cnf` is usable only with the certificate it names."""
    cnf = claims.get("cnf")
    if cnf is None:
        return
    bound = cnf.get("x5t#S256") if isinstance(cnf, dict) else None
    if not isinstance(bound, str):
        raise TokenInvalid("token is bound by a confirmation method other than x5t#S256")
    if not hmac.compare_digest(bound, x5t_s256(cert_der)):
        raise TokenInvalid("token is bound to another certificate (cnf x5t#S256)")
