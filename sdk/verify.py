"""Verifying the tokens agents present to a resource server.

Delegated tokens (RFC 9068 `at+jwt`) are verified against the issuer's keys found from its URL
(RFC 8414, `IssuerKeys`): `typ`, an algorithm the issuer names, `iss`, `aud`, `exp`, and a
well-formed actor chain. JWT-SVIDs are verified against the local Workload API's JWT bundle for
the trust domain their `sub` names (`JwtBundles`): an algorithm of the JWT-SVID standard, `aud`,
`exp`, a SPIFFE ID `sub`. The two never share keys: a delegated token is never checked against
a JWT-SVID key nor the reverse.

A token bound to a certificate (`cnf.x5t#S256`, RFC 8705 §3) is checked against the client
certificate of the request when the server tells the application about it (the ASGI TLS
extension): another certificate, or none on a TLS connection, is refused. Verified tokens are
cached by their text until they expire; the binding is checked on every request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import replace
from typing import Any

import jwt

from ensign.sdk.issuer import IssuerKeys
from ensign.sdk.principal import KeysUnavailable, Principal, Unauthorized, actor_chain, scopes_of
from ensign.sdk.workload import JwtBundles

DELEGATED_TYPES = frozenset({"at+jwt", "application/at+jwt"})
JWT_SVID_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256",
                                 "PS384", "PS512"})
MAX_TOKEN_BYTES = 16 * 1024
MAX_CACHED = 4096


def x5t_s256(cert_der: bytes) -> str:
    """RFC 8705 certificate thumbprint, as `cnf.x5t#S256` holds it."""
    return base64.urlsafe_b64encode(hashlib.sha256(cert_der).digest()).decode().rstrip("=")


class TokenVerifier:
    def __init__(self, *, audience: str | Collection[str], issuer: IssuerKeys | None = None,
                 bundles: JwtBundles | None = None) -> None:
        self._audience = [audience] if isinstance(audience, str) else list(audience)
        if not self._audience:
            raise ValueError("a resource server needs its audience")
        self._issuer = issuer
        self._bundles = bundles
        self._cache: OrderedDict[str, Principal] = OrderedDict()

    async def verify(self, token: str, *, client_cert: bytes | None = None, tls: bool = False,
                     require_binding: bool = False) -> Principal:
        """The token's principal, or Unauthorized / KeysUnavailable. `client_cert` is the DER
        certificate the client presented; `tls` says the server told us about the connection's
        TLS (so a missing certificate is known to be missing)."""
        principal = self._cache.get(token)
        if principal is None or principal.expires_at <= time.time():
            principal = await self._verify(token)
            self._cache[token] = principal
            if len(self._cache) > MAX_CACHED:
                self._cache.popitem(last=False)
        return _bound(principal, client_cert, tls, require_binding)

    async def _verify(self, token: str) -> Principal:
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthorized(f"token longer than {MAX_TOKEN_BYTES} bytes")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as e:
            raise Unauthorized(f"malformed token: {e}") from None
        typ = header.get("typ")
        if isinstance(typ, str) and typ.lower() in DELEGATED_TYPES:
            return await self._delegated(token, header)
        if typ not in (None, "JWT", "JOSE"):
            raise Unauthorized(f"token type {str(typ)[:32]!r} is neither at+jwt nor JWT")
        return await self._jwt_svid(token, header, unverified)

    async def _delegated(self, token: str, header: dict[str, Any]) -> Principal:
        if self._issuer is None:
            raise Unauthorized("delegated tokens are not accepted here (no issuer configured)")
        alg = header.get("alg")
        if alg not in self._issuer.algorithms or alg not in ("ES256", "RS256"):
            raise Unauthorized(f"algorithm {alg!r} is not one the issuer signs with")
        key = await self._issuer.key(str(header.get("kid", "")))
        claims = _decode(token, key, alg, self._audience, self._issuer.issuer,
                         ["exp", "iat", "sub", "aud", "act", "jti"])
        chain = actor_chain(claims["act"])
        return _principal("delegated", claims, chain, str(claims.get("client_id", "")))

    async def _jwt_svid(self, token: str, header: dict[str, Any],
                        unverified: dict[str, Any]) -> Principal:
        sub = unverified.get("sub")
        if not isinstance(sub, str) or not sub.startswith("spiffe://"):
            raise Unauthorized("not a delegated token, and its sub is not a SPIFFE ID")
        td = sub[len("spiffe://"):].split("/", 1)[0].lower()
        if self._bundles is None:
            raise Unauthorized("JWT-SVIDs are not accepted here (no Workload API)")
        alg = header.get("alg")
        if alg not in JWT_SVID_ALGORITHMS:
            raise Unauthorized(f"algorithm {alg!r} is not one of the JWT-SVID algorithms")
        try:
            keys = await self._bundles.keys(td)
        except TimeoutError:
            raise KeysUnavailable("no JWT bundle from the Workload API (is Ensign "
                                  "running?)") from None
        if keys is None:
            raise Unauthorized(f"no JWT bundle for trust domain {td[:255]!r}")
        key = keys.get(str(header.get("kid", "")))
        if key is None:
            raise Unauthorized("key id is not in the trust domain's JWT bundle")
        claims = _decode(token, key, alg, self._audience, None, ["exp", "sub", "aud"])
        return _principal("jwt-svid", claims, (sub,), str(claims.get("agent_id", "")))


def _decode(token: str, key: Any, alg: str, audience: list[str], issuer: str | None,
            require: list[str]) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = jwt.decode(token, key, algorithms=[alg], audience=audience,
                                            issuer=issuer, options={"require": require},
                                            leeway=0)
    except jwt.ExpiredSignatureError:
        raise Unauthorized("token has expired") from None
    except jwt.InvalidAudienceError:
        raise Unauthorized("token is not meant for this service (aud)") from None
    except jwt.PyJWTError as e:
        raise Unauthorized(f"token is not valid: {e}") from None
    return claims


def _principal(kind: Any, claims: dict[str, Any], chain: tuple[str, ...],
               agent_id: str) -> Principal:
    aud = claims["aud"]
    exp = claims["exp"]
    if not isinstance(exp, int):
        raise Unauthorized("exp is not a whole number")
    jti = claims.get("jti")
    return Principal(kind=kind, subject=str(claims["sub"]), chain=chain, agent_id=agent_id,
                     scopes=scopes_of(claims),
                     audience=tuple(str(a) for a in aud) if isinstance(aud, list) else (str(aud),),
                     expires_at=exp, jti=jti if isinstance(jti, str) else "", claims=claims)


def _bound(p: Principal, cert: bytes | None, tls: bool, require: bool) -> Principal:
    """RFC 8705 §3: a bound token is usable only with its certificate."""
    cnf = p.claims.get("cnf")
    if cnf is None:
        if require and p.kind == "delegated":
            raise Unauthorized("this service accepts only certificate-bound tokens")
        return p
    bound = cnf.get("x5t#S256") if isinstance(cnf, dict) else None
    if not isinstance(bound, str):
        raise Unauthorized("token is bound by a confirmation method other than x5t#S256")
    if cert is None:
        if tls or require:
            raise Unauthorized("token is bound to a client certificate: present it (mutual TLS)")
        return p  # the server does not tell us the certificate: bearer use (documented)
    if not hmac.compare_digest(bound, x5t_s256(cert)):
        raise Unauthorized("token is bound to another certificate (cnf x5t#S256)")
    return replace(p, cert_bound=True)
