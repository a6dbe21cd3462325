"""ensign.sdk's middleware as an ASGI server drives it (scopes, receive, send), with keys pinned
by hand: the bearer token, the principal handed to the app, the certificate binding against the
ASGI TLS extension, the answers to refused requests, and one report per request that never
waits for Ensign."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ensign.sdk import (
    ActionReporter,
    EnsignMiddleware,
    InsufficientScope,
    IssuerKeys,
    Principal,
    TokenVerifier,
    x5t_s256,
)

ISS = "https://ensign.example.org"
DOCS = "https://docs.example.org"
A = "spiffe://example.org/agent/agt_A"
B = "spiffe://example.org/agent/agt_B"
KEY = ec.generate_private_key(ec.SECP256R1())
JWKS = {"keys": [{**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(KEY.public_key())),
                  "kid": "k1", "use": "sig", "alg": "ES256"}]}


def _cert(name: str) -> tuple[bytes, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + timedelta(hours=1)).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER), ssl.DER_cert_to_PEM_cert(
        cert.public_bytes(serialization.Encoding.DER))


CERT_A, PEM_A = _cert("a")
CERT_B, PEM_B = _cert("b")


def token(*, cert: bytes | None = CERT_A, chain: tuple[str, ...] = (B, A), ttl: int = 300,
          key: Any = KEY, **claims: Any) -> str:
    act: dict[str, Any] | None = None
    for sub in reversed(chain):
        act = {"sub": sub, **({"act": act} if act else {})}
    now = int(time.time())
    body: dict[str, Any] = {"iss": ISS, "sub": "alice", "aud": DOCS, "iat": now, "exp": now + ttl,
                            "jti": "j1", "scope": "docs.read", "client_id": "agt_B", "act": act,
                            **claims}
    if cert is not None:
        body["cnf"] = {"x5t#S256": x5t_s256(cert)}
    return jwt.encode(body, key, algorithm="ES256", headers={"kid": "k1", "typ": "at+jwt"})


Response = tuple[int, dict[bytes, bytes], bytes]


class Harness:
    """The middleware around an app that answers `status` (or raises), and its reporter, whose
    socket does not exist: reports stay queued, as while the daemon is away."""

    def __init__(self, *, require_binding: bool = False, status: int = 200,
                 raises: bool = False) -> None:
        self.seen: list[Principal] = []
        self.reporter = ActionReporter("/nonexistent/ensign.sock", max_queue=100)

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "lifespan":
                while (await receive())["type"] != "lifespan.shutdown":
                    pass
                return
            if "state" in scope:  # public paths get none
                self.seen.append(scope["state"]["principal"])
            if raises:
                raise RuntimeError("boom")
            await send({"type": "http.response.start", "status": status, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

        self.mw = EnsignMiddleware(
            app, audience=DOCS, reporter=self.reporter, require_binding=require_binding,
            public_paths=("/healthz",),
            verifier=TokenVerifier(audience=DOCS, issuer=IssuerKeys(ISS, static_jwks=JWKS)))

    async def get(self, path: str = "/docs/42", *, bearer: str | None = None,
                  tls: dict[str, Any] | None = None, kind: str = "http") -> Response:
        headers = [(b"authorization", f"Bearer {bearer}".encode())] if bearer else []
        scope: dict[str, Any] = {"type": kind, "method": "GET", "path": path,
                                 "headers": headers}
        if tls is not None:
            scope["extensions"] = {"tls": tls}
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        try:
            await self.mw(scope, receive, send)
        except RuntimeError:
            pass  # the app's own error, after the middleware reported it
        if kind == "websocket":
            return int(sent[0].get("code", 0)), {}, b""
        start = next((m for m in sent if m["type"] == "http.response.start"), None)
        if start is None:
            return 500, {}, b""
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return start["status"], dict(start["headers"]), body

    @property
    def reported(self) -> list[tuple[str, str, str, dict[str, Any]]]:
        """What waits to be sent to Ensign: (action, resource, outcome, detail)."""
        return [(a, r, o, dict(d or {})) for _, a, r, o, d in self.reporter._queue]


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


def tls_with(pem: str | None) -> dict[str, Any]:
    """The ASGI TLS extension as anycorn fills it."""
    return {"server_cert": None, "client_cert_chain": (pem,) if pem else (),
            "client_cert_name": None, "client_cert_error": None, "tls_version": 0x0304,
            "cipher_suite": None}


def test_a_delegated_token_gives_the_app_its_principal_and_is_reported() -> None:
    h = Harness()

    async def scenario() -> None:
        status, _, body = await h.get(bearer=token())
        assert (status, body) == (200, b"ok")

    run(scenario)
    (who,) = h.seen
    assert (who.kind, who.human, who.chain, who.agent, who.agent_id) == (
        "delegated", "alice", (B, A), B, "agt_B")
    assert who.has_scope("docs.read") and not who.has_scope("docs.write")
    with pytest.raises(InsufficientScope, match="missing scope"):
        who.require_scope("docs.read", "docs.write")
    assert who.cert_bound is False  # no TLS extension: the server did not say
    assert h.reported == [("GET /docs/42", f"{DOCS}/docs/42", "success",
                           {"status": 200, "method": "GET", "cert_bound": False})]


def test_the_binding_is_checked_against_the_client_certificate() -> None:
    h = Harness()
    results: list[Response] = []

    async def scenario() -> None:
        results.append(await h.get(bearer=token(), tls=tls_with(PEM_A)))
        results.append(await h.get(bearer=token(), tls=tls_with(PEM_B)))
        results.append(await h.get(bearer=token(), tls=tls_with(None)))
        results.append(await h.get(bearer=token(cert=None), tls=tls_with(PEM_B)))

    run(scenario)
    assert [r[0] for r in results] == [200, 401, 401, 200]
    assert [p.cert_bound for p in h.seen] == [True, False]  # the unbound token: not bound
    assert b"bound to another certificate" in results[1][2]
    assert b"present it (mutual TLS)" in results[2][2]
    assert [o for _, _, o, _ in h.reported] == ["success", "denied", "denied", "success"]
    assert "bound to another certificate" in h.reported[1][3]["refused"]


def test_require_binding_refuses_bearer_use() -> None:
    h = Harness(require_binding=True)
    out: list[int] = []

    async def scenario() -> None:
        out.append((await h.get(bearer=token()))[0])            # bound, certificate unknown
        out.append((await h.get(bearer=token(cert=None)))[0])   # not bound at all
        out.append((await h.get(bearer=token(), tls=tls_with(PEM_A)))[0])

    run(scenario)
    assert out == [401, 401, 200]


@pytest.mark.parametrize(("make", "why"), [
    (lambda: token(ttl=-5), b"token has expired"),
    (lambda: token(aud="https://other.example.org"), b"not meant for this service"),
    (lambda: token(iss="https://evil.example.org"), b"Invalid issuer"),
    (lambda: token(key=ec.generate_private_key(ec.SECP256R1())), b"Signature verification"),
    (lambda: token(chain=()), b'missing the \\"act\\" claim'),
    (lambda: "not.a.token", b"malformed token"),
])
def test_bad_tokens_get_401_invalid_token_and_are_reported_denied(
        make: Callable[[], str], why: bytes) -> None:
    h = Harness()
    out: list[Response] = []

    async def scenario() -> None:
        out.append(await h.get(bearer=make()))

    run(scenario)
    status, headers, body = out[0]
    assert status == 401 and why in body, body
    assert headers[b"www-authenticate"].startswith(b'Bearer error="invalid_token"')
    assert h.seen == [] and [o for _, _, o, _ in h.reported] == ["denied"]


def test_no_token_is_401_and_nothing_to_report_and_public_paths_pass() -> None:
    h = Harness()
    out: list[Response] = []

    async def scenario() -> None:
        out.append(await h.get())
        out.append(await h.get("/healthz"))
        out.append(await h.get(kind="websocket"))

    run(scenario)
    assert out[0][0] == 401 and out[0][1][b"www-authenticate"] == b"Bearer"
    assert out[1][0] == 200 and h.seen == []  # public: the app ran, without a principal
    assert out[2][0] == 1008  # a WebSocket without a token is closed (policy violation)
    assert h.reported == []


def test_an_app_that_fails_is_reported_as_a_failure() -> None:
    h = Harness(raises=True)
    run(lambda: h.get(bearer=token()))  # type: ignore[arg-type, return-value]
    assert [(o, d["status"]) for _, _, o, d in h.reported] == [("failure", 500)]
    h = Harness(status=403)
    run(lambda: h.get(bearer=token()))  # type: ignore[arg-type, return-value]
    assert [o for _, _, o, _ in h.reported] == ["denied"]


def test_the_reporter_never_blocks_and_counts_what_it_drops() -> None:
    async def scenario() -> None:
        r = ActionReporter("/nonexistent/ensign.sock", max_queue=3)
        kept = [r.record("t", "read", f"doc/{i}", "success") for i in range(5)]
        assert kept == [True, True, True, False, False]
        assert r.queued == 3 and r.dropped == {"queue_full": 2}
        await r.aclose(0)
        assert r.dropped == {"queue_full": 2, "shutdown": 3}
        assert r.record("t", "read", "late", "success") is False  # closed

    run(scenario)


def test_a_detail_too_large_for_the_trail_is_replaced_by_a_note() -> None:
    from ensign.sdk.recorder import _message

    big = _message("t", "read", "doc", "success", {"x": "y" * 5000})
    assert json.loads(big.detail) == {"detail_dropped": "longer than 4096 bytes"}
    small = _message("t", "read", "doc", "success", {"status": 200})
    assert json.loads(small.detail) == {"status": 200} and big.token == "t"


def test_an_unreachable_issuer_is_503_at_once_after_the_first_failure() -> None:
    from ensign.sdk import KeysUnavailable
    from tests.support.net import free_port

    issuer = IssuerKeys(f"https://127.0.0.1:{free_port()}", timeout=5)  # nothing listens

    async def scenario() -> None:
        with pytest.raises(KeysUnavailable, match="cannot read the issuer's keys"):
            await issuer.key("k1")
        # known down: answered from what is known, no second connection attempt
        with pytest.raises(KeysUnavailable, match="could not be reached; retrying in"):
            await issuer.key("k1")
        h = Harness()
        h.mw.verifier = TokenVerifier(audience=DOCS, issuer=issuer)
        status, _, body = await h.get(bearer=token())
        assert status == 503 and b"temporarily_unavailable" in body
        assert [o for _, _, o, _ in h.reported] == ["failure"]

    run(scenario)


def test_a_jwt_svid_with_no_workload_api_is_503_and_the_next_one_is_not_kept_waiting(
        short_tmp: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from ensign.sdk import workload
    from ensign.sdk.workload import JwtBundles

    # the wait for a first bundle would outlast the test: the failed stream must end it
    monkeypatch.setattr(workload, "FIRST_BUNDLE_TIMEOUT", 3600.0)
    bundles = JwtBundles(str(short_tmp / "absent.sock"))  # no daemon listens there
    svid = jwt.encode({"sub": A, "aud": DOCS, "exp": int(time.time()) + 300}, KEY,
                      algorithm="ES256", headers={"kid": "k1", "typ": "JWT"})

    async def scenario() -> None:
        h = Harness()
        h.mw.verifier = TokenVerifier(audience=DOCS, bundles=bundles)
        try:
            for _ in range(2):  # the stream failed: both answered from that, neither waits
                status, _, body = await asyncio.wait_for(h.get(bearer=svid), 600)
                assert status == 503 and b"temporarily_unavailable" in body
        finally:
            await bundles.aclose()
        assert [o for _, _, o, _ in h.reported] == ["failure", "failure"]

    run(scenario)
