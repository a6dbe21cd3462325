"""Secrets: key files private to the daemon's user, SVID keys never on disk, and no private key
or token in logs, error messages or audit records.

The daemon runs under a permissive umask (0) here: file modes must not depend on the caller's.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from ensign.daemon.issuing import split_der
from ensign.proto import delegation_pb2, workload_pb2
from tests.support.daemon import ENSIGN, Daemon
from tests.support.hardening import call

IDP = "https://idp.example.org"
CAL = "https://calendar.example.org"
SECRET_FILES = ["ca/state.json", "audit-key/key.pem", "registry.db"]


@pytest.fixture
def world(short_tmp: Path) -> Iterator[tuple[Daemon, ec.EllipticCurvePrivateKey]]:
    idp = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(pyjwt.algorithms.ECAlgorithm.to_jwk(idp.public_key()))
    (short_tmp / "jwks.json").write_text(json.dumps({"keys": [{**jwk, "kid": "k1"}]}))
    d = Daemon(root=short_tmp, extra_config=(
        '[ca]\nttl = "10s"\n[delegation]\nenabled = true\n'
        f'[[delegation.issuers]]\nissuer = "{IDP}"\njwks_file = "{short_tmp / "jwks.json"}"\n'
        'audience = "ensign"\n'))
    old = os.umask(0)
    try:
        d.start()
    finally:
        os.umask(old)
    yield d, idp
    if d.alive():
        d.stop()


def _modes(d: Daemon) -> dict[str, tuple[int, int]]:
    out = {}
    for rel in SECRET_FILES:
        st = (d.data_dir / rel).stat()
        out[rel] = (stat.S_IMODE(st.st_mode), st.st_uid)
    return out


def _activity(d: Daemon, idp: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    """Issue, validate, fail, exchange: everything that handles a key or a token."""
    d.cli("role", "create", "cal", "--audience", f"{CAL}*", "--scope", "calendar.read",
          "--may-act-for-users")
    me = d.register("secret-keeper", f"unix:uid:{os.getuid()}", extra=("--role", "cal"))
    sock = d.socket
    code, _, raw = call(sock, "/SpiffeWorkloadAPI/FetchX509SVID", stream=True)
    assert code == grpc.StatusCode.OK
    x509 = workload_pb2.X509SVIDResponse.FromString(raw).svids[0]
    code, _, raw = call(sock, "/SpiffeWorkloadAPI/FetchJWTSVID",
                        workload_pb2.JWTSVIDRequest(audience=[f"{CAL}/a"]).SerializeToString())
    assert code == grpc.StatusCode.OK
    jwt_svid = workload_pb2.JWTSVIDResponse.FromString(raw).svids[0].svid
    errors = []
    for aud, token in [(f"{CAL}/a", jwt_svid), ("wrong-audience", jwt_svid),
                       (f"{CAL}/a", jwt_svid[:-4] + "AAAA")]:
        code, details, _ = call(sock, "/SpiffeWorkloadAPI/ValidateJWTSVID",
                                workload_pb2.ValidateJWTSVIDRequest(audience=aud, svid=token)
                                .SerializeToString())
        errors.append(details)
    now = pyjwt.api_jwt.timegm(pyjwt.api_jwt.datetime.now(tz=pyjwt.api_jwt.timezone.utc)
                               .utctimetuple())
    human = pyjwt.encode({"iss": IDP, "sub": "alice", "aud": "ensign", "iat": now,
                          "exp": now + 600, "scope": "calendar.read",
                          "may_act": {"sub": me["spiffe_id"]}}, idp, algorithm="ES256",
                         headers={"kid": "k1"})
    forged = pyjwt.encode({"iss": IDP, "sub": "alice", "aud": "ensign", "exp": now + 600},
                          ec.generate_private_key(ec.SECP256R1()), algorithm="ES256",
                          headers={"kid": "k1"})
    delegated = ""
    for token, aud in [(human, f"{CAL}/a"), (forged, f"{CAL}/a"), (human, "https://evil")]:
        code, details, raw = call(sock, "/ensign.delegation.v1.Delegation/ExchangeToken",
                                  delegation_pb2.ExchangeTokenRequest(
                                      subject_token=token, audience=aud).SerializeToString())
        errors.append(details)
        if code == grpc.StatusCode.OK:
            delegated = delegation_pb2.ExchangeTokenResponse.FromString(raw).access_token
    assert delegated, errors
    cli = subprocess.run([*ENSIGN, "validate", "jwt", "--audience", "nope", "--token",
                          jwt_svid], capture_output=True, text=True,
                         env={**os.environ, "SPIFFE_ENDPOINT_SOCKET": d.endpoint})
    errors.append(cli.stderr)
    return {"x509_key": x509.x509_svid_key, "x509_chain": x509.x509_svid, "jwt": jwt_svid,
            "human": human, "forged": forged, "delegated": delegated, "errors": errors}


def test_key_files_are_private_to_the_daemon_user(
    world: tuple[Daemon, ec.EllipticCurvePrivateKey],
) -> None:
    d, idp = world
    _activity(d, idp)
    assert stat.S_IMODE(d.data_dir.stat().st_mode) == 0o700
    expected = {rel: (0o600, os.getuid()) for rel in SECRET_FILES}
    assert _modes(d) == expected
    for extra in d.data_dir.rglob("*"):  # nothing in the data dir is readable by others
        if extra.is_file():
            assert not stat.S_IMODE(extra.stat().st_mode) & 0o077, extra
    # After a CA rotation (10 s CA: the next one is written at 40%) and a restart: still 0600.
    import time

    time.sleep(4.5)
    d.stop()
    old = os.umask(0)
    try:
        d.start()
    finally:
        os.umask(old)
    assert _modes(d) == expected


def _needles(secrets: dict[str, Any]) -> dict[str, bytes]:
    key_der: bytes = secrets["x509_key"]
    # base64 characters 52-88 cover the private scalar (the start is the common PKCS#8 header)
    out = {"svid-key-der": key_der, "svid-key-b64": base64.b64encode(key_der)[52:88]}
    for name in ("jwt", "human", "forged", "delegated"):
        token = secrets[name]
        out[f"{name}-token"] = token.encode()
        out[f"{name}-signature"] = token.rsplit(".", 1)[1].encode()
    return out


def test_no_svid_key_on_disk_and_no_secret_in_logs_errors_or_audit(
    world: tuple[Daemon, ec.EllipticCurvePrivateKey],
) -> None:
    d, idp = world
    secrets = _activity(d, idp)
    d.stop()
    needles = _needles(secrets)
    # SVID keys are never written to disk: the only PEM private keys under data_dir are the
    # CA state and the audit key, and the SVID key's bytes appear nowhere (registry, WAL, log).
    for f in d.data_dir.rglob("*"):
        if not f.is_file():
            continue
        data = f.read_bytes()
        rel = str(f.relative_to(d.data_dir))
        if rel not in ("ca/state.json", "audit-key/key.pem"):
            assert b"PRIVATE KEY" not in data, f"{rel} holds a private key"
        for name, needle in needles.items():
            assert needle not in data, f"{name} found in {rel}"
    # The log (debug level), the audit records and every error a client saw: no key, no token.
    texts = {"daemon log": d.log.read_bytes(),
             "errors": "\n".join(secrets["errors"]).encode()}
    ca_state = json.loads((d.data_dir / "ca" / "state.json").read_text())
    ca_keys = [v.encode() for v in _strings(ca_state) if "PRIVATE KEY" in v]
    assert ca_keys, "found no CA key to look for"
    for where, data in texts.items():
        assert b"PRIVATE KEY" not in data, where
        for name, needle in needles.items():
            assert needle not in data, f"{name} found in the {where}"
        for k in ca_keys:
            body = k.split(b"-----")[2].replace(b"\n", b"")[52:88]  # the private scalar
            assert body not in data, f"CA key in the {where}"
    assert len(secrets["errors"]) >= 5


def _strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def test_written_svid_key_files_are_0600(world: tuple[Daemon, ec.EllipticCurvePrivateKey],
                                         tmp_path: Path) -> None:
    d, _ = world
    d.register("writer", f"unix:uid:{os.getuid()}")
    out = tmp_path / "svid"
    old = os.umask(0)
    try:
        d.cli("fetch", "x509", "--write", str(out))
    finally:
        os.umask(old)
    assert stat.S_IMODE((out / "svid.0.key").stat().st_mode) == 0o600
    assert split_der  # (the chain helper stays importable for the key search above)
