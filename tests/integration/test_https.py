"""The HTTPS endpoint as its real clients use it: resource servers that know only the issuer URL
(Authlib's RFC 9068 validator, joserfc, PyJWT's PyJWKClient), an agent exchanging tokens with
httpx and its SVID files, introspection, and every refusal as an OAuth error."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import pytest
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from authlib.oauth2.rfc9068 import JWTBearerTokenValidator
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet

from tests.support.daemon import ENSIGN, make_daemon
from tests.support.https import WebCa, free_port, http_config, svid_files
from tests.support.https_world import CAL, GID_A, GID_PLAIN, IDP, Idp, World

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="agents are told apart by groups")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("https")
    root.chmod(0o755)
    w = World(root, Idp())
    yield w
    w.d.stop()


def test_a_resource_server_with_only_the_issuer_url_verifies_a_delegated_token(
        world: World) -> None:
    resp = world.exchange(subject_token=world.alice())
    assert resp.status_code == 200, resp.text
    body = resp.json()
    token = body["access_token"]
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    assert body["token_type"] == "Bearer" and body["scope"] == "calendar.read"
    assert resp.headers["cache-control"] == "no-store"

    # What a resource server does with nothing but the issuer: RFC 8414 discovery ...
    with httpx.Client(verify=ssl.create_default_context(cafile=str(world.web.cert))) as http:
        meta = http.get(f"{world.issuer}/.well-known/oauth-authorization-server").json()
        assert http.get(f"{world.issuer}/.well-known/openid-configuration").json() == meta
        AuthorizationServerMetadata(meta).validate()
        assert meta["issuer"] == world.issuer
        assert meta["tls_client_certificate_bound_access_tokens"] is True
        jwks = http.get(meta["jwks_uri"]).json()
    assert all(k["use"] == "sig" and k["alg"] == "ES256" and k["kid"] for k in jwks["keys"])

    # ... then Authlib's RFC 9068 validator (typ at+jwt, iss, aud, exp, client_id, jti) ...
    class Validator(JWTBearerTokenValidator):  # type: ignore[misc]
        def get_jwks(self) -> dict[str, Any]:
            return jwks

    validator = Validator(issuer=world.issuer, resource_server=f"{CAL}/v1")
    claims = validator.authenticate_token(token)
    validator.validate_token(claims, scopes=["calendar.read"], request=None)
    assert claims["sub"] == "alice" and claims["act"]["sub"] == world.agent["spiffe_id"]

    # ... joserfc ...
    decoded = jose_jwt.decode(token, KeySet.import_key_set(jwks), algorithms=["ES256"])
    assert decoded.header["typ"] == "at+jwt"
    jose_jwt.JWTClaimsRegistry(iss={"essential": True, "value": world.issuer},
                               aud={"essential": True, "value": f"{CAL}/v1"}).validate(
        decoded.claims)

    # ... and PyJWT's PyJWKClient from the metadata's jwks_uri.
    ctx = ssl.create_default_context(cafile=str(world.web.cert))
    client = pyjwt.PyJWKClient(meta["jwks_uri"], ssl_context=ctx)
    key = client.get_signing_key_from_jwt(token)
    verified = pyjwt.decode(token, key.key, audience=f"{CAL}/v1", issuer=world.issuer,
                            algorithms=meta["access_token_signing_alg_values_supported"])
    assert verified["client_id"] == world.agent["id"]
    # bound to the very certificate the agent presented (RFC 8705 §3.1)
    der = x509.load_pem_x509_certificate(world.agent_files[0].read_bytes()).public_bytes(
        serialization.Encoding.DER)
    assert verified["cnf"]["x5t#S256"] == pyjwt.utils.base64url_encode(
        __import__("hashlib").sha256(der).digest()).decode()


def test_the_https_exchange_equals_the_grpc_exchange(world: World) -> None:
    subject = world.alice()
    over_https = world.exchange(subject_token=subject).json()
    out = subprocess.run([*ENSIGN, "token", "exchange", "--subject-token", "-", "--audience",
                          f"{CAL}/v1", "--scope", "calendar.read", "-o", "json"],
                         input=subject, capture_output=True, text=True, timeout=30,
                         env={**os.environ, "SPIFFE_ENDPOINT_SOCKET": world.d.endpoint},
                         extra_groups=[GID_A])
    assert out.returncode == 0, out.stderr
    over_grpc = json.loads(out.stdout)
    a = pyjwt.decode(over_https["access_token"], options={"verify_signature": False})
    b = pyjwt.decode(over_grpc["access_token"], options={"verify_signature": False})
    for varying in ("jti", "iat", "exp"):
        a.pop(varying), b.pop(varying)
    assert a == b  # same subject, actor, scope, audience, issuer, cnf (the same SVID), grant
    assert pyjwt.get_unverified_header(over_https["access_token"]) == \
        pyjwt.get_unverified_header(over_grpc["access_token"])
    assert over_https["expires_in"] - int(over_grpc["expires_in"]) in (-1, 0, 1)
    trail = json.loads(world.d.cli("audit", "list", "--agent", str(world.agent["id"]), "--type",
                                   "token.exchanged", "-o", "json").stdout)
    https, grpc = trail[-2], trail[-1]
    assert https["details"]["transport"] == "https" and grpc["details"]["transport"] == "grpc"
    assert https["details"]["peer"]["address"] == "127.0.0.1" and "process" in grpc
    assert (https["delegator"], https["scopes"], https["result"]) == \
        (grpc["delegator"], grpc["scopes"], grpc["result"]) == ("alice", ["calendar.read"],
                                                                "success")


@pytest.mark.parametrize(("case", "status", "error", "says"), [
    ("scope", 400, "invalid_scope", "calendar.admin not allowed"),
    ("audience", 400, "invalid_target", "not allowed by the agent's roles"),
    ("two-targets", 400, "invalid_target", "one target"),
    ("untrusted-issuer", 400, "invalid_request", "not trusted"),
    ("expired", 400, "invalid_request", "expired"),
    ("not-named", 400, "invalid_request", "has not allowed agent"),
    ("garbage-token", 400, "invalid_request", "malformed"),
    ("grant-type", 400, "unsupported_grant_type", "token-exchange"),
    ("no-grant-type", 400, "invalid_request", "grant_type is required"),
    ("no-subject", 400, "invalid_request", "subject_token is required"),
    ("subject-type", 400, "invalid_request", "unsupported subject_token_type"),
    ("actor-token", 400, "invalid_request", "actor_token is not accepted"),
    ("duplicate", 400, "invalid_request", "more than once"),
    ("json-body", 400, "invalid_request", "Content-Type must be"),
    ("oversize", 413, "invalid_request", "over 65536 bytes"),
    ("no-cert", 401, "invalid_client", "client certificate is required"),
    ("not-an-agent", 400, "unauthorized_client", "not a registered, active agent"),
    ("get", 405, "invalid_request", "Method Not Allowed"),
])
def test_every_refusal_is_an_oauth_error_with_a_description(
        world: World, case: str, status: int, error: str, says: str) -> None:
    before = world.log_lines('"HTTPS request refused"')
    token = world.alice()
    form: dict[str, str] = {"subject_token": token}
    files: Any = world.agent_files
    with world.client(files) as c:
        url = "/token"
        grant = "urn:ietf:params:oauth:grant-type:token-exchange"
        base = {"grant_type": grant, "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
                "audience": f"{CAL}/v1", "scope": "calendar.read", "subject_token": token}
        content: bytes | None = None
        headers: dict[str, str] = {}
        if case == "scope":
            form["scope"] = "calendar.admin"
        elif case == "audience":
            form["audience"] = "https://mail.example.org"
        elif case == "two-targets":
            form["resource"] = "https://mail.example.org"
        elif case == "untrusted-issuer":
            form["subject_token"] = world.idp.token(iss="https://evil.example.org")
        elif case == "expired":
            form["subject_token"] = world.alice(ttl=-10)
        elif case == "not-named":
            form["subject_token"] = world.idp.token(may_act={"sub": "spiffe://example.org/x"})
        elif case == "garbage-token":
            form["subject_token"] = "not.a.jwt"
        elif case == "grant-type":
            form["grant_type"] = "client_credentials"
        elif case == "no-grant-type":
            form["grant_type"] = ""
        elif case == "no-subject":
            form["subject_token"] = ""
        elif case == "subject-type":
            form["subject_token_type"] = "urn:example:saml"
        elif case == "actor-token":
            form["actor_token"] = token
        elif case == "duplicate":
            content = (httpx.QueryParams({**base, **form}).__str__() + "&scope=x").encode()
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
        elif case == "json-body":
            content = json.dumps({**base, **form}).encode()
            headers = {"Content-Type": "application/json"}
        elif case == "oversize":
            form["subject_token"] = "a" * 70_000
        elif case == "no-cert":
            files = None
        elif case == "not-an-agent":
            files = world.rs_files  # a registered service, not an agent
        data = {**base, **form}
        if files is not world.agent_files:
            c.close()
            with world.client(files) as other:
                resp = other.post(url, data=data)
        elif case == "get":
            resp = c.get(url)
        elif content is not None:
            resp = c.post(url, content=content, headers=headers)
        else:
            resp = c.post(url, data=data)
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error"] == error and says in body["error_description"], body
    # one line per refusal
    assert world.log_lines('"HTTPS request refused"', at_least=before + 1) == before + 1
    # and the daemon goes on serving
    assert world.exchange(subject_token=world.alice()).status_code == 200


def _client_cert(issuer_key: Any, issuer_name: x509.Name, spiffe_id: str, *,
                 expired: bool) -> tuple[bytes, bytes]:
    import datetime as dt

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    start, end = ((now - dt.timedelta(hours=2), now - dt.timedelta(hours=1)) if expired
                  else (now - dt.timedelta(minutes=1), now + dt.timedelta(hours=1)))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x")]))
            .issuer_name(issuer_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(spiffe_id)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(issuer_key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


@pytest.mark.parametrize("which", ["expired", "foreign"])
def test_expired_or_foreign_client_certificates_fail_the_handshake(
        world: World, which: str) -> None:
    if which == "expired":  # signed by our own CA, for our agent, but expired
        state = json.loads((world.d.data_dir / "ca" / "state.json").read_text())
        authority = state["authorities"][0]
        ca_cert = x509.load_pem_x509_certificate(authority["cert"].encode())
        ca_key = serialization.load_pem_private_key(authority["key"].encode(), None)
        pem, key = _client_cert(ca_key, ca_cert.subject, str(world.agent["spiffe_id"]),
                                expired=True)
        expect = "certificate has expired"
    else:  # another CA's certificate claiming our agent's SPIFFE ID
        other = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not our CA")])
        pem, key = _client_cert(other, name, str(world.agent["spiffe_id"]), expired=False)
        expect = "unable to get local issuer certificate"
    (world.root / f"{which}.pem").write_bytes(pem)
    (world.root / f"{which}.key").write_bytes(key)
    before = world.log_lines('"HTTPS connection refused"')
    files = (world.root / f"{which}.pem", world.root / f"{which}.key", world.root)
    # The TLS handshake refuses it: no HTTP exchange happens at all (the client sees the
    # connection end), and the daemon says why in one line.
    with pytest.raises(httpx.TransportError):
        world.exchange(files=files, subject_token=world.alice())  # type: ignore[arg-type]
    assert world.log_lines('"HTTPS connection refused"', at_least=before + 1) == before + 1
    line = [json.loads(x) for x in world.d.log.read_text().splitlines()
            if '"HTTPS connection refused"' in x][-1]
    assert line["reason"] == "handshake_failed" and expect in line["detail"], line
    assert world.exchange(subject_token=world.alice()).status_code == 200


def test_introspection_goes_inactive_at_once_on_suspend_and_on_revoke(world: World) -> None:
    d = world.d
    grant = d.cli("delegation", "grant", "--subject", "bob", "--issuer", IDP, "--agent",
                  str(world.agent["id"]), "--scope", "calendar.read").stdout.strip()
    by_grant = world.exchange(subject_token=world.idp.token(sub="bob")).json()["access_token"]
    by_may_act = world.exchange(subject_token=world.alice()).json()["access_token"]
    active = world.introspect(by_grant).json()
    assert active["active"] is True and active["sub"] == "bob"
    assert active["client_id"] == world.agent["id"] and active["scope"] == "calendar.read"
    assert world.introspect(by_may_act).json()["active"] is True
    # a caller whose roles may not introspect is refused; garbage is simply inactive
    refused = world.introspect(by_grant, files=svid_files(d, world.root / "p", gid=GID_PLAIN))
    assert refused.status_code == 403 and "may introspect" in refused.json()["error_description"]
    assert world.introspect("garbage").json() == {"active": False}

    d.cli("delegation", "revoke", grant, "--reason", "bob left")
    assert world.introspect(by_grant).json() == {"active": False}  # the CLI has returned
    assert world.introspect(by_may_act).json()["active"] is True

    d.cli("agent", "suspend", str(world.agent["id"]), "--reason", "test")
    try:
        assert world.introspect(by_may_act).json() == {"active": False}
    finally:
        d.cli("agent", "resume", str(world.agent["id"]))
    assert world.introspect(by_may_act).json()["active"] is True


def test_plain_http_and_stalled_handshakes_leave_the_daemon_serving(world: World) -> None:
    import socket

    before = world.log_lines('"HTTPS connection refused"')
    with socket.create_connection(("127.0.0.1", world.port)) as s:  # plain HTTP on the TLS port
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(20)
        assert not s.recv(100).startswith(b"HTTP/")
    with socket.create_connection(("127.0.0.1", world.port)) as s:  # never says hello
        s.settimeout(20)
        assert s.recv(100) == b""  # dropped after [http] handshake_timeout
    for _ in range(100):  # the client may see the end before the daemon's line is written
        if world.log_lines('"HTTPS connection refused"') >= before + 2:
            break
        time.sleep(0.05)
    lines = [json.loads(x) for x in world.d.log.read_text().splitlines()
             if '"HTTPS connection refused"' in x][before:]
    assert [x["reason"] for x in lines] == ["handshake_failed", "handshake_timeout"]
    with world.client(None) as c:
        assert c.get("/.well-known/openid-configuration").status_code == 200
        missing = c.get("/nope")
        assert missing.status_code == 404 and missing.json()["error"] == "invalid_request"


def test_rs256_keys_verify_through_the_metadata(tmp_path_factory: pytest.TempPathFactory
                                                ) -> None:
    root = tmp_path_factory.mktemp("rs256")
    root.chmod(0o755)
    w = World(root, Idp(), alg="RS256")
    try:
        token = w.exchange(subject_token=w.alice()).json()["access_token"]
        assert pyjwt.get_unverified_header(token)["alg"] == "RS256"
        ctx = ssl.create_default_context(cafile=str(w.web.cert))
        with httpx.Client(verify=ctx) as http:
            meta = http.get(f"{w.issuer}/.well-known/oauth-authorization-server").json()
        assert meta["access_token_signing_alg_values_supported"] == ["RS256"]
        key = pyjwt.PyJWKClient(meta["jwks_uri"], ssl_context=ctx).get_signing_key_from_jwt(token)
        assert pyjwt.decode(token, key.key, algorithms=["RS256"], audience=f"{CAL}/v1",
                            issuer=w.issuer)["sub"] == "alice"
    finally:
        w.d.stop()


def _served_cert(port: int, cafile: Path) -> x509.Certificate:
    import socket

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # an SVID names a SPIFFE ID, not a host (checked below)
    ctx.load_verify_locations(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port)) as raw, ctx.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_the_serving_certificate_rotates_without_a_restart(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("rotate")
    root.chmod(0o755)
    port = free_port()
    # `[http] node_name`: the former spelling of the top-level node_name, still read
    d = make_daemon(root, '[svid]\nx509_ttl = "4s"\n'
                    + http_config(port, None, None, extra='node_name = "testnode"\n'))
    try:
        d.register("w", "unix:uid:0")
        _, _, bundle = svid_files(d, root / "svid")
        first = _served_cert(port, bundle)
        uris = first.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier)
        assert uris == ["spiffe://example.org/ensign/node/testnode"]
        pid = d.proc.pid if d.proc else 0
        deadline = time.monotonic() + 30
        while _served_cert(port, bundle).serial_number == first.serial_number:
            assert time.monotonic() < deadline, "the node SVID was never renewed"
            time.sleep(0.5)
        assert d.alive() and d.proc is not None and d.proc.pid == pid  # same process
    finally:
        d.stop()
    # configured files: replaced on disk, used by the next handshake
    web = WebCa.create(root / "web")
    cert, key = web.issue("one")
    port = free_port()
    files_root = root / "files"
    files_root.mkdir()
    files_root.chmod(0o755)
    d = make_daemon(files_root, http_config(port, cert, key))
    try:
        before = _served_cert(port, web.cert).serial_number
        new_cert, new_key = web.issue("two")
        key.write_bytes(new_key.read_bytes())
        cert.write_bytes(new_cert.read_bytes())
        deadline = time.monotonic() + 30
        while _served_cert(port, web.cert).serial_number == before:
            assert time.monotonic() < deadline, "the new certificate files were never used"
            time.sleep(0.2)
        assert _served_cert(port, web.cert).serial_number == \
            x509.load_pem_x509_certificate(new_cert.read_bytes()).serial_number
    finally:
        d.stop()
