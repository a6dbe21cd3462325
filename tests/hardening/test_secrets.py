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
import pytest

from ensign.daemon.issuing import split_der
from ensign.proto import delegation_pb2, workload_pb2
from tests.support.clients import call
from tests.support.daemon import ENSIGN, Daemon
from tests.support.idp import CAL, Idp

SECRET_FILES = ["ca/state.json", "audit-key/key.pem", "registry.db", "delegation/keys.json"]


@pytest.fixture
def world(short_tmp: Path) -> Iterator[tuple[Daemon, Idp]]:
    idp = Idp()
    d = Daemon(root=short_tmp, extra_config='[ca]\nttl = "10s"\n' + idp.config(short_tmp))
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


def _activity(d: Daemon, idp: Idp) -> dict[str, Any]:
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
    human = idp.token(scope="calendar.read", may_act={"sub": me["spiffe_id"]})
    forged = idp.token(key=idp.other)  # under the IdP's key id, signed by another key
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
    world: tuple[Daemon, Idp],
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
    world: tuple[Daemon, Idp],
) -> None:
    d, idp = world
    secrets = _activity(d, idp)
    d.stop()
    needles = _needles(secrets)
    # Workloads' SVID keys are never written to disk: the only PEM private keys under data_dir
    # are the CA state, the delegated-token keys, the audit key (and, with [http] on its default
    # certificate, the daemon's own serving key http/node.key, which Python's ssl loads only
    # from a file), and the SVID key's bytes appear nowhere (registry, WAL, log).
    for f in d.data_dir.rglob("*"):
        if not f.is_file():
            continue
        data = f.read_bytes()
        rel = str(f.relative_to(d.data_dir))
        if rel not in ("ca/state.json", "audit-key/key.pem", "delegation/keys.json",
                       "http/node.key"):
            assert b"PRIVATE KEY" not in data, f"{rel} holds a private key"
        for name, needle in needles.items():
            assert needle not in data, f"{name} found in {rel}"
    # The log (debug level), the audit records and every error a client saw: no key, no token.
    texts = {"daemon log": d.log.read_bytes(),
             "errors": "\n".join(secrets["errors"]).encode()}
    ca_state = json.loads((d.data_dir / "ca" / "state.json").read_text())
    ca_keys = [v.encode() for v in _strings(ca_state) if "PRIVATE KEY" in v]
    dlg_state = json.loads((d.data_dir / "delegation" / "keys.json").read_text())
    ca_keys += [v.encode() for v in _strings(dlg_state) if "PRIVATE KEY" in v]
    assert len(ca_keys) >= 3, "found no CA or delegation key to look for"
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


def test_written_svid_key_files_are_0600(world: tuple[Daemon, Idp],
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
