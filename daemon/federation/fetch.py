"""Fetching a federated trust domain's bundle from its SPIFFE bundle endpoint.

Two profiles (SPIFFE_Federation.md §5): `https_web` authenticates the endpoint like any HTTPS
site (system CAs, or `ca_file`); `https_spiffe` authenticates it by its X.509-SVID against the
trust domain's own last bundle (bootstrapped from `bundle_file`), checking the endpoint's SPIFFE
ID instead of a host name. Every fetch is bounded in time and size, follows no redirects, and
returns the raw bytes for `bundle.parse` to judge.
"""

from __future__ import annotations

import asyncio
import ssl

import aiohttp
from cryptography import x509
from cryptography.x509.oid import ExtensionOID

from ensign.daemon.config import FederatedTrustDomain
from ensign.daemon.federation.bundle import MAX_BUNDLE_BYTES, TrustBundle


class FetchError(Exception):
    """The endpoint could not be reached, authenticated or read; says why in one line."""


def _context(td: FederatedTrustDomain, current: TrustBundle | None) -> ssl.SSLContext:
    if td.profile == "https_web":
        return ssl.create_default_context(cafile=str(td.ca_file) if td.ca_file else None)
    if current is None:
        raise FetchError("https_spiffe needs a bundle to authenticate the endpoint "
                         "(bundle_file, until the first fetch)")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # the SPIFFE ID is checked instead (below)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=current.x509_pem().decode())
    return ctx


def _spiffe_id_of(der: bytes) -> str:
    try:
        cert = x509.load_der_x509_certificate(der)
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except (ValueError, x509.ExtensionNotFound):
        return ""
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)  # type: ignore[attr-defined]
    return str(uris[0]) if len(uris) == 1 else ""


async def fetch(td: FederatedTrustDomain, current: TrustBundle | None, seconds: float) -> bytes:
    """The endpoint's response body (at most MAX_BUNDLE_BYTES), or FetchError."""
    ctx = _context(td, current)
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=seconds),
                                  trust_env=False) as session,
            session.get(td.bundle_endpoint_url, ssl=ctx, allow_redirects=False,
                        headers={"Accept": "application/json"}) as resp,
        ):
            if td.profile == "https_spiffe":
                conn = resp.connection
                sslobj = conn.transport.get_extra_info("ssl_object") \
                    if conn is not None and conn.transport is not None else None
                der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
                got = _spiffe_id_of(der) if der else ""
                if got != td.endpoint_spiffe_id:
                    raise FetchError(f"endpoint is {got or 'no SPIFFE ID'}, expected "
                                     f"{td.endpoint_spiffe_id}")
            if resp.status != 200:
                raise FetchError(f"HTTP {resp.status} from {td.bundle_endpoint_url}")
            body = await resp.content.read(MAX_BUNDLE_BYTES + 1)
            if len(body) > MAX_BUNDLE_BYTES:
                raise FetchError(f"response larger than {MAX_BUNDLE_BYTES} bytes")
            return body
    except FetchError:
        raise
    except TimeoutError:
        raise FetchError(f"no answer within {seconds:g}s") from None
    except (aiohttp.ClientError, ssl.SSLError, OSError, asyncio.IncompleteReadError) as e:
        raise FetchError(f"{type(e).__name__}: {e}".splitlines()[0][:300]) from None
