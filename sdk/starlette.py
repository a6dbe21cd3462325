"""Starlette and FastAPI helpers over `EnsignMiddleware`: the principal and scope checks.

    @app.get("/docs/{doc_id}")
    async def read(doc_id: str, who: Principal = Depends(require_scope("docs.read"))): ...

`require_scope` answers 403 with `WWW-Authenticate: Bearer error="insufficient_scope"` (RFC 6750
§3.1) naming what is missing. `describe` names the action and resource the middleware reports.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection

from ensign.sdk.principal import InsufficientScope, Principal


def principal(request: HTTPConnection) -> Principal:
    """The request's verified principal; 401 if the middleware did not set one (a public path,
    or the middleware is not installed)."""
    found = request.scope.get("state", {}).get("principal")
    if not isinstance(found, Principal):
        raise HTTPException(401, "no verified token", headers={"WWW-Authenticate": "Bearer"})
    return found


def require_scope(*scopes: str) -> Callable[[HTTPConnection], Principal]:
    """A dependency (FastAPI `Depends`) that returns the principal if it holds every scope."""

    def dependency(request: HTTPConnection) -> Principal:
        who = principal(request)
        try:
            who.require_scope(*scopes)
        except InsufficientScope as e:
            raise HTTPException(403, str(e), headers={
                "WWW-Authenticate": f'Bearer error="insufficient_scope", '
                                    f'scope="{" ".join(scopes)}"'}) from None
        return who

    return dependency


def describe(request: HTTPConnection, action: str, resource: str,
             detail: Mapping[str, Any] | None = None) -> None:
    """Name the action the middleware will report for this request (instead of the method
    and route): e.g. `describe(request, "read", f"docs/{doc_id}")`."""
    state = request.scope.setdefault("state", {})
    state["ensign_action"] = action
    state["ensign_resource"] = resource
    if detail is not None:
        state["ensign_detail"] = dict(detail)
