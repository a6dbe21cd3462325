"""OAuth on the wire: form parsing, the client's certificate, and errors as RFC 6749 §5.2 says.

Everything here reads hostile input: a form must be `application/x-www-form-urlencoded`, within
the size limit, UTF-8, with no parameter twice (RFC 6749 §3.2); the client is who its verified
X.509-SVID names (RFC 8705 §2.1), never what a parameter claims.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web
from cryptography import x509
from cryptography.x509.oid import ExtensionOID

from ensign.daemon.delegation import DelegationDenied, SubjectTokenInvalid
from ensign.daemon.errors import (
    AttestationError,
    AuditUnavailable,
    EnsignError,
    InvalidRequest,
    NoIdentity,
    PermissionDenied,
    StoreError,
    TokenInvalid,
)
from ensign.daemon.server import RateLimited, public_message
from ensign.daemon.spiffe_id import SpiffeId

log = logging.getLogger(__name__)

FORM = "application/x-www-form-urlencoded"
MAX_PARAMS = 32


class OAuthFailure(Exception):
    """An OAuth error response: HTTP status, `error` code and `error_description`."""

    def __init__(self, status: int, error: str, description: str,
                 cause: EnsignError | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description
        self.cause = cause

    def response(self) -> web.Response:
        headers = {"Cache-Control": "no-store"}
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Mutual-TLS realm="ensign"'
        if self.status == 429:
            headers["Retry-After"] = "1"
        return web.json_response({"error": self.error, "error_description": self.description},
                                 status=self.status, headers=headers)


def from_error(e: EnsignError) -> OAuthFailure:
    """The OAuth error for an Ensign error: the same refusal the gRPC path gives, in OAuth's
    words (RFC 6749 §5.2, RFC 8693 §2.2.2)."""
    text = public_message(e)
    if isinstance(e, DelegationDenied):
        return OAuthFailure(400, e.oauth_error, text, e)
    if isinstance(e, SubjectTokenInvalid | TokenInvalid):
        return OAuthFailure(400, "invalid_grant", text, e)
    if isinstance(e, InvalidRequest):
        return OAuthFailure(400, "invalid_request", text, e)
    if isinstance(e, NoIdentity):
        return OAuthFailure(400, "unauthorized_client", text, e)
    if isinstance(e, PermissionDenied):
        return OAuthFailure(400, "unauthorized_client", text, e)
    if isinstance(e, RateLimited):
        return OAuthFailure(429, "temporarily_unavailable", text, e)
    if isinstance(e, AuditUnavailable | StoreError | AttestationError):
        return OAuthFailure(503, "temporarily_unavailable", text, e)
    return OAuthFailure(500, "server_error", text, e)


async def read_form(request: web.Request, max_bytes: int) -> dict[str, str]:
    """The request's form parameters; OAuthFailure for anything that is not a proper form."""
    ctype = request.content_type
    if ctype != FORM:
        raise OAuthFailure(400, "invalid_request",
                           f"Content-Type must be {FORM} (got {ctype or 'none'})")
    if request.content_length is not None and request.content_length > max_bytes:
        raise OAuthFailure(413, "invalid_request", f"request body over {max_bytes} bytes")
    body = await request.content.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise OAuthFailure(413, "invalid_request", f"request body over {max_bytes} bytes")
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text),
                          max_num_fields=MAX_PARAMS)
    except (UnicodeDecodeError, ValueError) as e:
        raise OAuthFailure(400, "invalid_request", f"malformed form body: {e}") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise OAuthFailure(400, "invalid_request", f"parameter {name!r} given more than once")
        form[name] = value
    return form


@dataclass(frozen=True, slots=True)
class ClientCert:
    """The client's X.509-SVID as the TLS handshake verified it against our bundle."""

    der: bytes
    spiffe_id: str
    not_after: datetime


def client_cert(request: web.Request, trust_domain: str) -> ClientCert:
    """The verified client certificate's SPIFFE ID, or OAuthFailure invalid_client (401)."""
    transport = request.transport
    sslobj: Any = transport.get_extra_info("ssl_object") if transport is not None else None
    der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
    if not der:
        raise OAuthFailure(401, "invalid_client", "a client certificate is required: present "
                           "the agent's X.509-SVID over mutual TLS (RFC 8705)")
    try:
        cert = x509.load_der_x509_certificate(der)
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)  # type: ignore[attr-defined]
        if len(uris) != 1:
            raise ValueError("an X.509-SVID has exactly one URI SAN")
        sid = SpiffeId.parse(uris[0])
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if bc.ca or not sid.is_workload:
            raise ValueError("not a leaf SVID")
    except (ValueError, x509.ExtensionNotFound, EnsignError) as e:
        raise OAuthFailure(401, "invalid_client",
                           f"client certificate is not an X.509-SVID: {e}") from None
    if not sid.member_of(trust_domain):
        raise OAuthFailure(401, "invalid_client",
                           f"client {sid} is not in trust domain {trust_domain}")
    return ClientCert(der=der, spiffe_id=str(sid), not_after=cert.not_valid_after_utc)
