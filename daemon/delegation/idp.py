"""Trusted token issuers for delegation: their keys, and validating a human's token.

Keys come from `jwks_file` (read at start and on reload) or `jwks_url` (fetched in the
background with caching; never on the request path, so a slow IdP cannot stall issuance).
Only asymmetric algorithms are accepted: `none` and HMAC (whose key would be a shared secret
that anyone holding the JWKS could forge with) are refused.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from http.client import HTTPMessage
from typing import IO, Any

import jwt

from ensign.daemon.config import DelegationConfig, DelegationIssuer, jwks_url_problem
from ensign.daemon.errors import PermissionDenied
from ensign.daemon.text import escape

log = logging.getLogger(__name__)

ALLOWED_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
                      "ES512", "EdDSA")
MAX_JWKS_BYTES = 1 << 20


class SubjectTokenInvalid(PermissionDenied):
    public_message = "subject token not accepted"


@dataclass(frozen=True, slots=True)
class SubjectClaims:
    issuer: str
    subject: str
    claims: dict[str, Any]


def parse_jwks(data: bytes) -> dict[str, Any]:
    """kid -> public key object, from a JWKS document."""
    doc = json.loads(data)
    keys: dict[str, Any] = {}
    for jwk in doc.get("keys", []):
        kid = jwk.get("kid")
        if not kid or jwk.get("use", "sig") != "sig":
            continue
        try:
            keys[kid] = jwt.PyJWK.from_dict(jwk).key
        except jwt.PyJWTError as e:
            log.warning("skipping a JWK", extra={"kid": kid, "error": str(e)})
    return keys


class TrustedIssuers:
    def __init__(self, config: DelegationConfig) -> None:
        self._cfg = config
        self._issuers = {i.issuer: i for i in config.issuers}
        self._keys: dict[str, dict[str, Any]] = {}
        self.problems: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None

    def load_files(self) -> None:
        for issuer in self._issuers.values():
            if issuer.jwks_file is not None:
                self._load(issuer, issuer.jwks_file.read_bytes)

    def _load(self, issuer: DelegationIssuer, read: Callable[[], bytes]) -> None:
        try:
            self._keys[issuer.issuer] = parse_jwks(read())
            self.problems.pop(issuer.issuer, None)
        except (OSError, ValueError) as e:
            self.problems[issuer.issuer] = f"cannot load keys of {issuer.issuer}: {e}"
            log.error("issuer keys unavailable", extra={"issuer": issuer.issuer,
                                                         "error": str(e)})

    async def start(self) -> None:
        self.load_files()
        if any(i.jwks_url for i in self._issuers.values()):
            self._task = asyncio.get_running_loop().create_task(self._refresh_loop())

    async def _refresh_loop(self) -> None:
        while True:
            for issuer in self._issuers.values():
                if issuer.jwks_url:
                    url = issuer.jwks_url
                    await asyncio.to_thread(self._load, issuer, functools.partial(_fetch, url))
            await asyncio.sleep(self._cfg.jwks_refresh.total_seconds())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def validate(self, token: str, now: datetime) -> SubjectClaims:
        """Check signature, iss, aud, exp and nbf of a human's token from a trusted IdP."""
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as e:
            raise SubjectTokenInvalid(f"subject token is malformed: {e}") from None
        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            raise SubjectTokenInvalid(f"subject token algorithm {alg!r} is not accepted")
        iss = str(unverified.get("iss", ""))
        issuer = self._issuers.get(iss)
        if issuer is None:
            raise SubjectTokenInvalid(f"subject token issuer {iss!r} is not trusted")
        keys = self._keys.get(iss)
        if keys is None:
            raise SubjectTokenInvalid(self.problems.get(iss, f"no keys loaded for {iss}"))
        key = keys.get(header.get("kid", ""))
        if key is None:
            raise SubjectTokenInvalid(f"subject token is signed by an unknown key "
                                      f"(kid {header.get('kid')!r}) of {iss}")
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=[alg], audience=issuer.audience, issuer=iss,
                options={"require": ["exp", "iss", "sub", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise SubjectTokenInvalid("subject token has expired") from None
        except jwt.PyJWTError as e:
            raise SubjectTokenInvalid(f"subject token rejected: {e}") from None
        return SubjectClaims(issuer=iss, subject=str(claims["sub"]), claims=claims)


class _SameOrigin(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to the same scheme, host and port (and a URL jwks_url could be):
    an IdP's keys never come from somewhere the configuration did not name."""

    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int,
                         msg: str, headers: HTTPMessage,
                         newurl: str) -> urllib.request.Request | None:
        old, new = urllib.parse.urlsplit(req.full_url), urllib.parse.urlsplit(newurl)
        problem = jwks_url_problem(newurl)
        if problem is None and (new.scheme, new.hostname, new.port) != (
                old.scheme, old.hostname, old.port):
            problem = "another scheme, host or port"
        if problem:
            raise urllib.error.HTTPError(
                req.full_url, code, f"redirect to {escape(newurl)} refused: {problem}",
                headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_SameOrigin)


def _fetch(url: str) -> bytes:
    problem = jwks_url_problem(url)  # checked at config load too
    if problem:
        raise ValueError(f"jwks_url {escape(url)}: {problem}")
    with _OPENER.open(url, timeout=10) as resp:
        return bytes(resp.read(MAX_JWKS_BYTES))
