"""ASGI middleware for resource servers (Starlette, FastAPI, any ASGI app): verify the agent's
token, hand the app the principal, report each request to Ensign's audit trail as an action.

    app.add_middleware(EnsignMiddleware, audience="https://docs.example.org",
                       issuer="https://ensign.example.org:8443")

Per request (HTTP and WebSocket; `public_paths` pass untouched):
  1. `Authorization: Bearer <token>`; none: 401 with `WWW-Authenticate: Bearer` (not reported:
     there is no token to attribute).
  2. The token verified (`TokenVerifier`): a delegated token against the issuer's keys (RFC 8414
     metadata → jwks_uri, cached), a JWT-SVID against the local Workload API's JWT bundle; a
     `cnf.x5t#S256` binding against the client certificate when the server passes it in the
     ASGI TLS extension (`scope["extensions"]["tls"]["client_cert_chain"]`; anycorn does,
     uvicorn and hypercorn do not). Refused: 401 `invalid_token` with the reason, reported as a
     `denied` action; keys that cannot be had: 503, reported as `failure`.
  3. The principal in `scope["state"]["principal"]` (`request.state.principal` in Starlette);
     `ensign.sdk.starlette.require_scope` checks scopes.
  4. After the response: the action reported without waiting (`ActionReporter`): action
     `METHOD route` (or `request.state.ensign_action`), resource the first http(s) audience +
     the path (or `request.state.ensign_resource`), outcome success below 400, denied for 401
     and 403, else failure; detail: method, status, whether the token was certificate-bound,
     and `request.state.ensign_detail` if the app set one.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from pathlib import Path
from typing import Any

from ensign.sdk.issuer import IssuerKeys
from ensign.sdk.principal import KeysUnavailable, Principal, Unauthorized
from ensign.sdk.recorder import ActionReporter
from ensign.sdk.verify import TokenVerifier
from ensign.sdk.workload import JwtBundles

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class EnsignMiddleware:
    def __init__(self, app: ASGIApp, *, audience: str | Collection[str], issuer: str | None = None,
                 issuer_ca: str | Path | ssl.SSLContext | None = None, socket: str | None = None,
                 public_paths: Collection[str] = (), require_binding: bool = False,
                 record: bool = True, reporter: ActionReporter | None = None,
                 resource_prefix: str | None = None,
                 verifier: TokenVerifier | None = None) -> None:
        self.app = app
        audiences = [audience] if isinstance(audience, str) else list(audience)
        context = issuer_ca if isinstance(issuer_ca, ssl.SSLContext) else (
            ssl.create_default_context(cafile=str(issuer_ca)) if issuer_ca else None)
        self.bundles = JwtBundles(socket)
        self.verifier = verifier or TokenVerifier(
            audience=audiences, bundles=self.bundles,
            issuer=IssuerKeys(issuer, ssl_context=context) if issuer else None)
        self.reporter = (reporter or ActionReporter(socket)) if record else None
        self._public = frozenset(public_paths)
        self._require_binding = require_binding
        self._prefix = resource_prefix if resource_prefix is not None else next(
            (a.rstrip("/") for a in audiences if a.startswith(("https://", "http://"))), "")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self.app(scope, self._on_shutdown(receive), send)
            return
        if kind not in ("http", "websocket") or scope.get("path") in self._public:
            await self.app(scope, receive, send)
            return
        token, problem = _bearer(scope)
        if not token:
            await _refuse(scope, send, 401, "", problem)
            return
        tls = (scope.get("extensions") or {}).get("tls")
        try:
            principal = await self.verifier.verify(
                token, client_cert=_client_cert(tls), tls=isinstance(tls, dict),
                require_binding=self._require_binding)
        except Unauthorized as e:
            await _refuse(scope, send, 401, "invalid_token", str(e))
            self._report(token, scope, 401, {"refused": str(e)[:512]})
            return
        except KeysUnavailable as e:
            await _refuse(scope, send, 503, "temporarily_unavailable", str(e))
            self._report(token, scope, 503, {"refused": str(e)[:512]})
            return
        state = scope.setdefault("state", {})
        state["principal"] = principal
        status = 500  # what an app that raises before answering amounts to

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "websocket.accept":
                status = 101
            elif message["type"] == "websocket.close" and status == 500:
                status = 403  # closed before it was accepted: refused
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self._report(token, scope, status, None, principal)

    def _report(self, token: str, scope: Scope, status: int, extra: dict[str, Any] | None,
                principal: Principal | None = None) -> None:
        if self.reporter is None:
            return
        state = scope.get("state") or {}
        route = getattr(scope.get("route"), "path", None)
        action = state.get("ensign_action") or f"{scope.get('method', 'WEBSOCKET')} " \
                                                f"{route or scope.get('path', '')}"
        resource = state.get("ensign_resource") or f"{self._prefix}{scope.get('path', '')}"
        outcome = "success" if status < 400 else "denied" if status in (401, 403) else "failure"
        detail: dict[str, Any] = {"status": status, "method": scope.get("method", "WEBSOCKET")}
        if principal is not None:
            detail["cert_bound"] = principal.cert_bound
        if isinstance(state.get("ensign_detail"), dict):
            detail["app"] = state["ensign_detail"]
        if extra:
            detail.update(extra)
        self.reporter.record(token, str(action)[:256], str(resource)[:2048], outcome, detail)

    def _on_shutdown(self, receive: Receive) -> Receive:
        async def receiving() -> Message:
            message = await receive()
            if message.get("type") == "lifespan.shutdown":
                await self.aclose()
            return message

        return receiving

    async def aclose(self) -> None:
        """Send what is queued (briefly) and stop the background tasks."""
        if self.reporter is not None:
            await self.reporter.aclose()
        await self.bundles.aclose()


def _bearer(scope: Scope) -> tuple[str, str]:
    values = [v for k, v in scope.get("headers", []) if k == b"authorization"]
    if not values:
        return "", "no bearer token"
    if len(values) > 1:
        return "", "more than one Authorization header"
    scheme, _, token = values[0].decode("latin-1").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return "", "the Authorization header is not a Bearer token"
    return token.strip(), ""


def _client_cert(tls: Any) -> bytes | None:
    """The client's certificate (DER) from the ASGI TLS extension, if it presented one."""
    if not isinstance(tls, dict):
        return None
    chain = tls.get("client_cert_chain") or ()
    try:
        return ssl.PEM_cert_to_DER_cert(chain[0]) if chain else None
    except (ValueError, TypeError):
        return None


async def _refuse(scope: Scope, send: Send, status: int, error: str, why: str) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    safe = "".join(c if c.isprintable() and c not in '"\\' else " " for c in why)[:300]
    challenge = "Bearer" + (f' error="{error}", error_description="{safe}"' if error else "")
    body = json.dumps({"error": error or "invalid_request", "error_description": why}).encode()
    headers = [(b"content-type", b"application/json"), (b"cache-control", b"no-store"),
               (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", challenge.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
