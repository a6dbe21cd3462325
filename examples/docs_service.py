"""A document service that agents call for humans: FastAPI behind `ensign.sdk.EnsignMiddleware`.

Every request needs a token Ensign issued: a delegated token (a human's consent, an agent
acting for them) or a JWT-SVID, for this service's audience. Reading needs the scope
`docs.read`, writing `docs.write`. Each request lands in Ensign's audit trail as an action,
attributed by Ensign to the agent, its delegator chain and the grant, whatever this service
says. Configuration, from the environment:

    ENSIGN_AUDIENCE         this service's audience (default https://docs.example.org)
    ENSIGN_ISSUER           Ensign's HTTPS issuer URL ([http] issuer), for delegated tokens
    ENSIGN_ISSUER_CA        CA file that verifies the issuer's certificate (default: system CAs)
    SPIFFE_ENDPOINT_SOCKET  the Workload API (JWT-SVID keys; where actions are reported)
    ENSIGN_ACTIONS_QUEUE    actions held while Ensign is unreachable (default 10000)

Serve it over HTTP with uvicorn, or over mutual TLS with anycorn (which hands the client
certificate to the app, so certificate-bound tokens are checked against it):

    uvicorn examples.docs_service:app --port 8000
    anycorn examples.docs_service:app --bind 127.0.0.1:8443 --certfile svid.0.pem \\
        --keyfile svid.0.key --ca-certs bundle.0.pem --cert-reqs 2
"""

from __future__ import annotations

import os
from typing import Annotated

from fastapi import Body, Depends, FastAPI, HTTPException, Request
from fastapi.responses import PlainTextResponse
from prometheus_client import generate_latest

from ensign.sdk import ActionReporter, EnsignMiddleware, Principal
from ensign.sdk.starlette import describe, principal, require_scope

MAX_DOCUMENT = 64 * 1024
READ, WRITE = require_scope("docs.read"), require_scope("docs.write")


def create_app(*, audience: str, issuer: str | None, issuer_ca: str | None,
               socket: str | None, queue: int = 10_000) -> FastAPI:
    app = FastAPI(title="docs")
    documents: dict[str, str] = {"42": "the answer", "7": "seven"}
    reporter = ActionReporter(socket, max_queue=queue)
    app.add_middleware(EnsignMiddleware, audience=audience, issuer=issuer, issuer_ca=issuer_ca,
                       socket=socket, reporter=reporter, public_paths=("/healthz", "/metrics"))

    @app.get("/healthz")
    async def healthz() -> dict[str, object]:
        return {"ok": True, "actions_queued": reporter.queued,
                "actions_dropped": sum(reporter.dropped.values())}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest().decode())

    @app.get("/whoami")
    async def whoami(who: Annotated[Principal, Depends(principal)]) -> dict[str, object]:
        return {"kind": who.kind, "human": who.human, "chain": list(who.chain),
                "agent_id": who.agent_id, "scopes": sorted(who.scopes),
                "cert_bound": who.cert_bound}

    @app.get("/docs/{doc_id}")
    async def read(doc_id: str, request: Request,
                   who: Annotated[Principal, Depends(READ)]) -> dict[str, str]:
        describe(request, "read", f"{audience}/docs/{doc_id}")
        if doc_id not in documents:
            raise HTTPException(404, f"no document {doc_id}")
        return {"id": doc_id, "text": documents[doc_id]}

    @app.put("/docs/{doc_id}")
    async def write(doc_id: str, request: Request, text: Annotated[str, Body(embed=True)],
                    who: Annotated[Principal, Depends(WRITE)]) -> dict[str, str]:
        describe(request, "write", f"{audience}/docs/{doc_id}", {"bytes": len(text)})
        if len(text) > MAX_DOCUMENT:
            raise HTTPException(413, "document too large")
        documents[doc_id] = text
        return {"id": doc_id, "written_for": who.human or who.agent}

    return app


app = create_app(
    audience=os.environ.get("ENSIGN_AUDIENCE", "https://docs.example.org"),
    issuer=os.environ.get("ENSIGN_ISSUER") or None,
    issuer_ca=os.environ.get("ENSIGN_ISSUER_CA") or None,
    socket=os.environ.get("SPIFFE_ENDPOINT_SOCKET") or None,
    queue=int(os.environ.get("ENSIGN_ACTIONS_QUEUE", "10000")))
