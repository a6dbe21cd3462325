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


class _WrongEndpoint(aiohttp.ServerFingerprintMismatch):
    def __init__(self, got: str, expected: str, host: str, port: int) -> None:
        super().__init__(b"", b"", host, port)
        self.text = f"endpoint is {got or 'no SPIFFE ID'}, expected {expected}"

    def __str__(self) -> str:
        return self.text


class _SpiffeIdCheck(aiohttp.Fingerprint):
    """https_spiffe: the endpoint's SPIFFE ID, checked on every new connection right after its
    handshake (which verified the chain against the trust domain's bundle), before any byte of
    the request is sent. aiohttp's certificate pinning hook is the one place that sees it."""

    def __init__(self, expected: str) -> None:
        super().__init__(bytes(32))
        self._expected = expected

    def check(self, transport: asyncio.Transport) -> None:
        sslobj = transport.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        got = _spiffe_id_of(der) if der else ""
        if got != self._expected:
            host, port, *_ = transport.get_extra_info("peername") or ("?", 0)
            raise _WrongEndpoint(got, self._expected, host, port)


async def fetch(td: FederatedTrustDomain, current: TrustBundle | None, seconds: float) -> bytes:
    """The endpoint's response body (at most MAX_BUNDLE_BYTES), or FetchError."""
    ctx = _context(td, current)
    connector = aiohttp.TCPConnector(
        ssl=_SpiffeIdCheck(td.endpoint_spiffe_id) if td.profile == "https_spiffe" else True,
        force_close=True)
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=seconds),
                                  connector=connector, trust_env=False) as session,
            session.get(td.bundle_endpoint_url, ssl=ctx, allow_redirects=False,
                        headers={"Accept": "application/json"}) as resp,
        ):
            if resp.status != 200:
                raise FetchError(f"HTTP {resp.status} from {td.bundle_endpoint_url}")
            body = await resp.content.read(MAX_BUNDLE_BYTES + 1)
            if len(body) > MAX_BUNDLE_BYTES:
                raise FetchError(f"response larger than {MAX_BUNDLE_BYTES} bytes")
            return body
    except FetchError:
        raise
    except _WrongEndpoint as e:
        raise FetchError(e.text) from None
    except TimeoutError:
        raise FetchError(f"no answer within {seconds:g}s") from None
    except (aiohttp.ClientError, ssl.SSLError, OSError, asyncio.IncompleteReadError) as e:
        raise FetchError(f"{type(e).__name__}: {e}".splitlines()[0][:300]) from None
