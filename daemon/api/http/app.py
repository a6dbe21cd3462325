"""The HTTPS endpoint's routes: what resource servers, agents and federated trust domains call.

  GET  /.well-known/oauth-authorization-server[/path]  RFC 8414 metadata (also at
       [path]/.well-known/openid-configuration)
  GET  [path]/jwks          the delegated-token keys only (`use: sig`, `alg`, `kid`)
  POST [path]/token         RFC 8693 token exchange, the agent authenticated by mTLS (RFC 8705)
  POST [path]/introspect    RFC 7662, for mTLS callers whose role may introspect
  GET  /.well-known/spiffe-bundle   this trust domain's SPIFFE bundle (federation)

`[path]` is the issuer URL's path, if it has one. Every request passes one guard: the per-client
rate limit, then the handler; every refusal is an OAuth error body, one log line, and, when the
client is authenticated, one `request.denied` audit record (the exchange writes its own
`token.exchanged` records). Anonymous refusals are logged and counted, not audited, so that
the network cannot fill the audit trail.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from ensign.daemon.api.http.oauth import (
    ClientCert,
    OAuthFailure,
    client_cert,
    from_error,
    read_form,
)
from ensign.daemon.audit.event import AuditEvent
from ensign.daemon.audit.log import AuditLog
from ensign.daemon.config import Config
from ensign.daemon.delegation import (
    ISSUED_TOKEN_TYPE,
    DelegationDenied,
    DelegationKeys,
    ExchangeRequest,
    Introspector,
    Presenter,
    TokenExchange,
    introspecting_roles,
    x5t_s256,
)
from ensign.daemon.errors import EnsignError, PermissionDenied
from ensign.daemon.federation import ServedBundle
from ensign.daemon.issuing import CertificateAuthority
from ensign.daemon.keys import PublicKey
from ensign.daemon.observe import metrics
from ensign.daemon.registry import Entry, Registry, RoleBook
from ensign.daemon.server import UidLimits

log = logging.getLogger(__name__)

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
TOKEN_TYPES = ("urn:ietf:params:oauth:token-type:jwt",
               "urn:ietf:params:oauth:token-type:access_token",
               "urn:ietf:params:oauth:token-type:id_token")
REQUESTED_TYPES = ("", ISSUED_TOKEN_TYPE, "urn:ietf:params:oauth:token-type:jwt")
MAX_FORM_BYTES = 64 * 1024  # a subject token is at most 16 KiB
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpApi:
    def __init__(self, *, config: Config, ca: CertificateAuthority, keys: DelegationKeys,
                 exchange: TokenExchange, introspector: Introspector, registry: Registry,
                 roles: RoleBook, audit: AuditLog, served: ServedBundle, limits: UidLimits,
                 clock: Callable[[], datetime],
                 jwt_keys: Callable[[], Mapping[str, PublicKey]] | None = None) -> None:
        self._cfg = config
        self._td = config.trust_domain
        self._ca = ca
        # the JWT-SVID keys of the SPIFFE bundle: this node's, or in a fleet every node's
        self._jwt_keys = jwt_keys or ca.jwt_keys
        self._keys = keys
        self._exchange = exchange
        self._introspector = introspector
        self._registry = registry
        self._roles = roles
        self._audit = audit
        self._served = served
        self._limits = limits
        self._clock = clock
        self.issuer = config.http.issuer
        self._prefix = urlsplit(self.issuer).path.rstrip("/")
        self._max_form = min(MAX_FORM_BYTES, config.limits.max_request_bytes)

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=self._max_form,
                              handler_args={"max_field_size": 16 * 1024})
        p = self._prefix
        routes = [
            web.get(f"/.well-known/oauth-authorization-server{p}", self.metadata,
                    name="metadata"),
            web.get(f"{p}/.well-known/openid-configuration", self.metadata, name="openid"),
            web.get(f"{p}/jwks", self.jwks, name="jwks"),
            web.post(f"{p}/token", self.token, name="token"),
            web.post(f"{p}/introspect", self.introspect, name="introspect"),
            web.get("/.well-known/spiffe-bundle", self.spiffe_bundle, name="spiffe-bundle"),
        ]
        if p:  # what many clients try for an issuer with a path
            routes.append(web.get(f"{p}/.well-known/oauth-authorization-server", self.metadata,
                                  name="metadata-path"))
        app.add_routes(routes)
        return app

    # -- the guard every request passes ------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        route = request.match_info.route.name or "unknown"
        try:
            if not self._limits.allow(request.remote or "?"):
                raise OAuthFailure(429, "temporarily_unavailable", "over the request rate for "
                                   "this client address; retry with backoff")
            response = await handler(request)
        except OAuthFailure as f:
            response = self._refused(request, route, f)
        except EnsignError as e:
            response = self._refused(request, route, from_error(e))
        except web.HTTPException as e:  # routing (404, 405) and aiohttp's own limits (413)
            response = self._refused(request, route,
                                     OAuthFailure(e.status, "invalid_request", e.reason))
        except Exception:
            log.exception("internal error", extra={"endpoint": route})
            response = OAuthFailure(500, "server_error", "internal error").response()
        metrics.http_request(route, response.status, time.perf_counter() - started)
        return response

    def _refused(self, request: web.Request, route: str, f: OAuthFailure) -> web.Response:
        cert: ClientCert | None = request.get("ensign.client")
        log.info("HTTPS request refused", extra={
            "endpoint": route, "path": request.path[:200], "peer": request.remote,
            "status": f.status, "error": f.error,
            "reason": f.cause.diagnostics() if f.cause else f.description,
            "spiffe_id": cert.spiffe_id if cert else ""})
        if cert is not None and not request.get("ensign.recorded"):
            entry: Entry | None = request.get("ensign.entry")
            self._audit.record_nowait(AuditEvent(
                type="request.denied", result="denied",
                reason=(f.cause.diagnostics() if f.cause else f.description)[:1024],
                agent_id=entry.id if entry else "", entry_id=entry.id if entry else "",
                spiffe_id=cert.spiffe_id,
                details={"method": f"https.{route}", "status": f.error,
                         "http_status": f.status, "transport": "https",
                         "peer": {"address": request.remote or "",
                                  "x5t#S256": x5t_s256(cert.der)}}))
        response = f.response()
        if f.status == 413:
            response.force_close()  # do not linger reading the rest of an oversized body
        return response

    # -- discovery ---------------------------------------------------------------------------

    async def metadata(self, request: web.Request) -> web.Response:
        i = self.issuer
        doc: dict[str, Any] = {
            "issuer": i,
            "token_endpoint": f"{i}/token",
            "jwks_uri": f"{i}/jwks",
            "introspection_endpoint": f"{i}/introspect",
            "grant_types_supported": [TOKEN_EXCHANGE],
            # RFC 8414 requires the member; there is no authorization endpoint ("none")
            "response_types_supported": ["none"],
            "token_endpoint_auth_methods_supported": ["tls_client_auth"],
            "introspection_endpoint_auth_methods_supported": ["tls_client_auth"],
            "tls_client_certificate_bound_access_tokens": True,
            # the algorithms of the delegated tokens (RFC 9068 access tokens) jwks_uri verifies
            "access_token_signing_alg_values_supported": self._keys.algorithms,
        }
        return web.json_response(doc, headers={"Cache-Control": "public, max-age=300"})

    async def jwks(self, request: web.Request) -> web.Response:
        return web.json_response(self._keys.public_jwks(),
                                 headers={"Cache-Control": "public, max-age=60"})

    async def spiffe_bundle(self, request: web.Request) -> web.Response:
        body = self._served.document(self._ca.bundle_certs(), self._jwt_keys())
        return web.Response(body=body, content_type="application/json")

    # -- token exchange (RFC 8693 over HTTP, RFC 8705 client authentication) -----------------

    async def token(self, request: web.Request) -> web.Response:
        cert = request["ensign.client"] = client_cert(request, self._td)
        form = await read_form(request, self._max_form)
        grant_type = form.get("grant_type", "")
        if not grant_type:
            raise OAuthFailure(400, "invalid_request", "grant_type is required")
        if grant_type != TOKEN_EXCHANGE:
            raise OAuthFailure(400, "unsupported_grant_type",
                               f"only {TOKEN_EXCHANGE} is supported")
        for name in ("subject_token", "subject_token_type"):
            if not form.get(name):
                raise OAuthFailure(400, "invalid_request", f"{name} is required")
        if form["subject_token_type"] not in TOKEN_TYPES:
            raise OAuthFailure(400, "invalid_request", "unsupported subject_token_type "
                               f"{form['subject_token_type'][:100]!r}")
        if "actor_token" in form or "actor_token_type" in form:
            raise OAuthFailure(400, "invalid_request", "actor_token is not accepted: the "
                               "actor is the agent authenticated by its certificate")
        if form.get("requested_token_type", "") not in REQUESTED_TYPES:
            raise OAuthFailure(400, "invalid_request", "requested_token_type must be "
                               f"{ISSUED_TOKEN_TYPE}")
        audience = _target(form)
        agent = request["ensign.entry"] = self._agent(cert)
        request["ensign.recorded"] = True  # the exchange records its own outcome from here
        issued = await self._exchange.exchange(
            agent, Presenter.mtls(request.remote or "", cert.der, cert.not_after),
            ExchangeRequest(subject_token=form["subject_token"],
                            subject_token_type=form["subject_token_type"], audience=audience,
                            scopes=tuple(form.get("scope", "").split())))
        return web.json_response({
            "access_token": issued.access_token, "issued_token_type": issued.issued_token_type,
            "token_type": issued.token_type, "expires_in": issued.expires_in,
            "scope": " ".join(issued.scopes)}, headers={"Cache-Control": "no-store"})

    def _agent(self, cert: ClientCert) -> Entry:
        agents = [e for e in self._registry.by_spiffe_id(cert.spiffe_id) if e.kind == "agent"]
        if not agents:
            raise DelegationDenied(f"{cert.spiffe_id} is not a registered, active agent",
                                   "unauthorized_client")
        return agents[0]

    # -- introspection (RFC 7662) ------------------------------------------------------------

    async def introspect(self, request: web.Request) -> web.Response:
        cert = request["ensign.client"] = client_cert(request, self._td)
        form = await read_form(request, self._max_form)
        if not form.get("token"):
            raise OAuthFailure(400, "invalid_request", "token is required")
        entries = self._registry.by_spiffe_id(cert.spiffe_id)
        if not entries:
            raise OAuthFailure(401, "invalid_client",
                               f"{cert.spiffe_id} is not a registered, active entry")
        request["ensign.entry"] = entries[0]
        allowed = []
        denied = PermissionDenied(f"{cert.spiffe_id} may not introspect tokens")
        for e in entries:
            try:
                allowed += introspecting_roles(e, self._roles.all)
            except PermissionDenied as err:
                denied = err
        if not allowed:
            f = from_error(denied)
            raise OAuthFailure(403, f.error, f.description, denied)
        result = self._introspector.introspect(form["token"], allowed)
        return web.Response(text=json.dumps(result), content_type="application/json",
                            headers={"Cache-Control": "no-store"})


def _target(form: dict[str, str]) -> str:
    """The one audience of the token: `audience` or `resource` (RFC 8693 §2.1)."""
    audience, resource = form.get("audience", ""), form.get("resource", "")
    if audience and resource and audience != resource:
        raise OAuthFailure(400, "invalid_target", "give one target: audience or resource")
    target = audience or resource
    if not target:
        raise OAuthFailure(400, "invalid_request", "audience (or resource) is required")
    return target
