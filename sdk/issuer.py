"""The keys of a delegated-token issuer, found from its URL alone (RFC 8414 → jwks_uri), cached.

The metadata is read once (`issuer` must equal the URL we were given, RFC 8414 §3.3); the key
set is read again after `refresh` seconds, and at once (at most every MIN_REFETCH seconds) when
a token names a key id not in it, which is how a rotated-in key is found. While the issuer cannot
be reached the cached keys stay in use; with nothing cached, `KeysUnavailable`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Mapping
from typing import Any

import aiohttp

from ensign.sdk.principal import KeysUnavailable, Unauthorized
from ensign.sdk.workload import jwks_keys

log = logging.getLogger("ensign.sdk")

METADATA_PATH = "/.well-known/oauth-authorization-server"
MIN_REFETCH = 30.0
MAX_DOCUMENT_BYTES = 256 * 1024


class IssuerKeys:
    def __init__(self, issuer: str, *, ssl_context: ssl.SSLContext | None = None,
                 refresh: float = 300.0, timeout: float = 10.0,
                 static_jwks: Mapping[str, Any] | None = None) -> None:
        """`static_jwks`: a JWK Set to use as is, never fetched (keys pinned by hand; the
        issuer's rotation then needs a new set)."""
        if not issuer.startswith("https://"):
            raise ValueError(f"issuer must be an https URL, not {issuer!r}")
        self.issuer = issuer.rstrip("/")
        self._ssl = ssl_context if ssl_context is not None else ssl.create_default_context()
        self._refresh = refresh
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._jwks_uri = ""
        self.algorithms: tuple[str, ...] = ("ES256", "RS256")
        self._keys: dict[str, Any] = {}
        self._fetched = 0.0  # time.monotonic() of the last key set fetch (0: never)
        self._failed_until = 0.0  # nothing cached and the issuer failed: answer at once till then
        self._lock = asyncio.Lock()
        self._static = static_jwks is not None
        if static_jwks is not None:
            self._keys = jwks_keys(static_jwks)

    async def key(self, kid: str) -> Any:
        if self._static:
            return self._known(kid)
        now = time.monotonic()
        if not self._keys and now < self._failed_until:
            raise KeysUnavailable(f"the issuer {self.issuer} could not be reached; retrying "
                                  f"in {self._failed_until - now:.0f} s")
        stale = not self._fetched or now - self._fetched > self._refresh
        unknown = kid not in self._keys and now - self._fetched > MIN_REFETCH
        if stale or unknown:
            async with self._lock:
                if self._fetched < now:  # nobody fetched while we waited
                    await self._fetch()
        return self._known(kid)

    def _known(self, kid: str) -> Any:
        key = self._keys.get(kid)
        if key is None:
            raise Unauthorized(f"key id {kid[:64]!r} is not one of the issuer's keys")
        return key

    async def _fetch(self) -> None:
        try:
            async with aiohttp.ClientSession(timeout=self._timeout) as http:
                if not self._jwks_uri:
                    meta = await _get(http, self.issuer + METADATA_PATH, self._ssl)
                    if meta.get("issuer", "").rstrip("/") != self.issuer:
                        raise ValueError(f"metadata names issuer {meta.get('issuer')!r}")
                    self._jwks_uri = str(meta["jwks_uri"])
                    algs = meta.get("access_token_signing_alg_values_supported")
                    if isinstance(algs, list) and algs:
                        self.algorithms = tuple(str(a) for a in algs)
                doc = await _get(http, self._jwks_uri, self._ssl)
            self._keys = jwks_keys(doc)
            self._fetched = time.monotonic()
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as e:
            if not self._keys:
                self._failed_until = time.monotonic() + MIN_REFETCH
                raise KeysUnavailable(f"cannot read the issuer's keys from {self.issuer}: "
                                      f"{type(e).__name__}: {e}"[:300]) from None
            log.warning("keys of issuer %s not refreshed (%s); using the cached ones",
                        self.issuer, f"{type(e).__name__}: {e}"[:300])
            self._fetched = time.monotonic() - self._refresh + MIN_REFETCH  # retry soon


async def _get(http: aiohttp.ClientSession, url: str, context: ssl.SSLContext) -> Any:
    if not url.startswith("https://"):
        raise ValueError(f"refusing a non-https URL {url!r}")
    async with http.get(url, ssl=context) as resp:
        resp.raise_for_status()
        body = await resp.content.read(MAX_DOCUMENT_BYTES + 1)
        if len(body) > MAX_DOCUMENT_BYTES:
            raise ValueError(f"{url}: document larger than {MAX_DOCUMENT_BYTES} bytes")
        doc = json.loads(body)
        if not isinstance(doc, dict):
            raise ValueError(f"{url}: not a JSON object")
        return doc

