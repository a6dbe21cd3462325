"""The app the actions-middleware benchmark serves: one FastAPI handler reading a document,
`plain` as it is and `guarded` behind ensign.sdk's middleware (audience `bench`, the Workload API
at $SPIFFE_ENDPOINT_SOCKET, every request reported as an action)."""

from __future__ import annotations

from fastapi import FastAPI

from ensign.sdk import EnsignMiddleware

DOCUMENTS = {str(i): f"document {i} " * 20 for i in range(100)}


def build(guarded: bool) -> FastAPI:
    app = FastAPI()

    @app.get("/docs/{doc_id}")
    async def read(doc_id: str) -> dict[str, str]:
        return {"id": doc_id, "text": DOCUMENTS.get(doc_id, "")}

    if guarded:
        app.add_middleware(EnsignMiddleware, audience="bench")
    return app


plain = build(False)
guarded = build(True)
