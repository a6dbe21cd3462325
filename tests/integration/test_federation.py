"""SPIFFE federation between two daemons of different trust domains, through each other's
bundle endpoints (https_web one way, https_spiffe the other), and bundle endpoints that fail."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from envoy.extensions.transport_sockets.tls.v3 import tls_spiffe_validator_config_pb2 as spv

from ensign.daemon.issuing import load_der_chain
from ensign.proto import workload_pb2 as pb
from tests.support.clients import channel, stream
from tests.support.daemon import Daemon, make_daemon
from tests.support.https import WebCa, free_port, http_config, svid_files
from tests.support.sds import fetch, secrets

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="workloads are told apart by groups")
GID = 5201


def _wait(what: str, check: Any, seconds: float = 60) -> Any:
    """Wait for a background event (a fetch); the test asserts on what happened, not when."""
    deadline = time.monotonic() + seconds
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.2)


def _x509_response(d: Daemon) -> pb.X509SVIDResponse:
    with channel(str(d.socket)) as ch:
        return pb.X509SVIDResponse.FromString(next(stream(ch, "FetchX509SVID", timeout=10)))


def _federation_status(d: Daemon, td: str) -> str:
    for line in d.cli("status").stdout.splitlines():
        if line.startswith(f"federation {td} "):
            return line.split(maxsplit=2)[2]
    return ""


def _root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="ensf", dir="/tmp"))
    root.chmod(0o755)
    return root


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Daemon, Daemon, WebCa]]:
    ra, rb = _root(), _root()
    web = WebCa.create(ra / "web")
    pa, pb_ = free_port(), free_port()
    cert, key = web.issue("a")
    # B serves its own node SVID (no tls_cert): A authenticates it by SPIFFE ID (https_spiffe)
    b = make_daemon(rb, 'node_name = "bnode"\n' + http_config(pb_, None, None) + (
        '[federation]\nrefresh_hint = "2s"\n'
        f'[[federation.trust_domains]]\ntrust_domain = "a.test"\n'
        f'bundle_endpoint_url = "https://127.0.0.1:{pa}/.well-known/spiffe-bundle"\n'
        f'profile = "https_web"\nca_file = "{web.cert}"\n'), trust_domain="b.test")
    b.register("wb", "unix:uid:0", f"unix:supplementary_gid:{GID}",
               extra=("--federates-with", "a.test"))
    _, _, b_bundle = svid_files(b, rb / "svid", gid=GID)  # A's bootstrap bundle for B
    a = make_daemon(ra, http_config(pa, cert, key) + (
        '[federation]\nrefresh_hint = "2s"\n'
        f'[[federation.trust_domains]]\ntrust_domain = "b.test"\n'
        f'bundle_endpoint_url = "https://127.0.0.1:{pb_}/.well-known/spiffe-bundle"\n'
        f'profile = "https_spiffe"\nendpoint_spiffe_id = "spiffe://b.test/ensign/node/bnode"\n'
        f'bundle_file = "{b_bundle}"\n'), trust_domain="a.test")
    a.register("wa", "unix:uid:0", f"unix:supplementary_gid:{GID}",
               extra=("--federates-with", "b.test"))
    # this process asks as the workloads do (their group); its children get their own groups
    groups = os.getgroups()
    os.setgroups([*groups, GID])
    try:
        yield a, b, web
    finally:
        os.setgroups(groups)
    for d in (a, b):
        if d.alive():
            d.stop()
    if os.environ.get("KEEP") is None:
        shutil.rmtree(ra, ignore_errors=True)
        shutil.rmtree(rb, ignore_errors=True)


_WORKLOAD = """
import os, sys, json
from spiffe import SpiffeId, TrustDomain, WorkloadApiClient, X509Source, JwtSvid
from spiffetls import ListenOptions, listen, dial
from spiffetls.tlsconfig.authorize import authorize_member_of
role, endpoint, port, peer_td = sys.argv[1:5]
with X509Source(socket_path=endpoint, timeout_in_seconds=15) as source:
    tds = sorted(b.trust_domain.name for b in source.bundles)
    if role == "server":
        server = listen(f"127.0.0.1:{port}", source,
                        ListenOptions(authorize_fn=authorize_member_of(TrustDomain(peer_td))))
        print("LISTENING", json.dumps(tds), flush=True)
        conn, _ = server.accept()
        conn.sendall(b"pong:" + conn.recv(64))
        conn.shutdown()
        conn.close()
    else:
        conn = dial(f"127.0.0.1:{port}", source,
                    authorize_fn=authorize_member_of(TrustDomain(peer_td)))
        conn.sendall(b"ping")
        print("REPLY", conn.recv(64).decode(), json.dumps(tds), flush=True)
    # Done: leave without waiting on the source's stream thread (grpcio's exit can hang there).
    os._exit(0)
"""


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", _WORKLOAD, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, extra_groups=[GID])


def test_two_trust_domains_federate_through_their_bundle_endpoints(
        pair: tuple[Daemon, Daemon, WebCa]) -> None:
    a, b, _ = pair
    # A starts from B's bundle file (https_spiffe bootstrap), then fetches; B fetches A's
    for d, td in ((a, "b.test"), (b, "a.test")):
        _wait(f"{td} fetched", lambda d=d, td=td: _federation_status(d, td).startswith("ok:"))
    fed_a = _x509_response(a).federated_bundles["spiffe://b.test"]
    assert _x509_response(b).federated_bundles["spiffe://a.test"]
    # what A hands out for b.test is B's own X.509 bundle
    own_b = pb.X509SVIDResponse.FromString(
        b"".join([_x509_response(b).SerializeToString()])).svids[0].bundle
    assert fed_a == own_b

    # mTLS between a workload of a.test and one of b.test (spiffe-tls, py-spiffe sources)
    port = str(free_port())
    server = _spawn("server", a.endpoint, port, "b.test")
    try:
        assert server.stdout is not None
        line = server.stdout.readline().split(maxsplit=1)
        assert line[0] == "LISTENING", server.stderr.read() if server.stderr else ""
        assert json.loads(line[1]) == ["a.test", "b.test"]
        client = _spawn("client", b.endpoint, port, "a.test")
        out, err = client.communicate(timeout=60)
        assert client.returncode == 0, err
        assert out.split()[:2] == ["REPLY", "pong:ping"]
        server.wait(timeout=30)
        assert server.returncode == 0
    finally:
        server.kill()

    # a JWT-SVID of b.test validates at A (ValidateJWTSVID, for a caller federating with b.test)
    # and against A's federated JWT bundle with py-spiffe
    code = """
import sys
from spiffe import JwtSvid, TrustDomain, WorkloadApiClient
b_ep, a_ep = sys.argv[1:3]
with WorkloadApiClient(socket_path=b_ep) as b:
    token = b.fetch_jwt_svid(audience={"partner-api"}).token
with WorkloadApiClient(socket_path=a_ep) as a:
    checked = a.validate_jwt_svid(token, "partner-api")
    bundles = a.fetch_jwt_bundles()
svid = JwtSvid.parse_and_validate(token, bundles.get_bundle_for_trust_domain(TrustDomain("b.test")),
                                  {"partner-api"})
print(checked.spiffe_id, svid.spiffe_id, token)
"""
    out = subprocess.run([sys.executable, "-c", code, b.endpoint, a.endpoint],
                         capture_output=True, text=True, timeout=60, extra_groups=[GID])
    assert out.returncode == 0, out.stderr
    ids = out.stdout.split()
    assert ids[0] == ids[1] and ids[0].startswith("spiffe://b.test/agent/")

    # a caller of A that does not federate with b.test neither sees its bundle nor has its
    # tokens validated
    a.register("plain", "unix:uid:0", "unix:supplementary_gid:5299")
    plain_code = """
import sys
from spiffe import WorkloadApiClient
with WorkloadApiClient(socket_path=sys.argv[1]) as a:
    print(sorted(b.trust_domain.name for b in a.fetch_jwt_bundles().bundles))
    try:
        a.validate_jwt_svid(sys.argv[2], "partner-api")
        print("ACCEPTED")
    except Exception as e:
        print("REFUSED", e)
"""
    plain = subprocess.run([sys.executable, "-c", plain_code, a.endpoint, ids[2]],
                           capture_output=True, text=True, timeout=60, extra_groups=[5299])
    assert plain.returncode == 0, plain.stderr
    seen, verdict = plain.stdout.splitlines()
    assert seen == "['a.test']"
    assert verdict.startswith("REFUSED") and "does not federate with" in verdict
    assert _federation_status(a, "b.test").startswith("ok: sequence")


def test_the_bundle_endpoint_serves_the_spiffe_format(pair: tuple[Daemon, Daemon, WebCa]) -> None:
    a, _, web = pair
    port = json.loads(a.config_path.read_text().split("listen = ")[1].split("\n")[0]
                      ).rsplit(":", 1)[1]
    with httpx.Client(verify=ssl.create_default_context(cafile=str(web.cert))) as http:
        first = http.get(f"https://127.0.0.1:{port}/.well-known/spiffe-bundle").json()
    uses = sorted({k["use"] for k in first["keys"]})
    assert uses == ["jwt-svid", "x509-svid"]
    assert first["spiffe_refresh_hint"] == 2 and first["spiffe_sequence"] >= 1
    assert all("kid" in k for k in first["keys"] if k["use"] == "jwt-svid")
    assert all("kid" not in k and len(k["x5c"]) == 1 for k in first["keys"]
               if k["use"] == "x509-svid")
    # JWT-SVID keys only: no delegated-token key is in a SPIFFE bundle
    with httpx.Client(verify=ssl.create_default_context(cafile=str(web.cert))) as http:
        jwks = http.get(f"https://127.0.0.1:{port}/jwks").json()
    assert not {k["kid"] for k in jwks["keys"]} & {k.get("kid") for k in first["keys"]}


class _Partner:
    """A bundle endpoint that can serve a good bundle, garbage, an error, or hang."""

    def __init__(self, web: WebCa, document: bytes) -> None:
        self.mode, self.document = "good", document
        self.release = threading.Event()
        partner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if partner.mode == "hang":
                    partner.release.wait(60)
                    return
                body = {"good": partner.document, "garbage": b"<html>not a bundle</html>",
                        "error": b"oops"}[partner.mode]
                self.send_response(500 if partner.mode == "error" else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        cert, key = web.issue("partner")
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()


def test_a_failing_endpoint_keeps_the_last_good_bundle(
        pair: tuple[Daemon, Daemon, WebCa]) -> None:
    _, b, web = pair
    # the partner serves (a copy of) B's real bundle at first, with a 1 s refresh hint
    port = json.loads(b.config_path.read_text().split("listen = ")[1].split("\n")[0]
                      ).rsplit(":", 1)[1]
    doc = json.loads(httpx.get(f"https://127.0.0.1:{port}/.well-known/spiffe-bundle",
                               verify=False).content)
    doc["spiffe_refresh_hint"] = 1
    partner = _Partner(web, json.dumps(doc).encode())
    root = _root()
    try:
        c = make_daemon(root, (
            '[federation]\nfetch_timeout = "2s"\n'
            '[[federation.trust_domains]]\ntrust_domain = "partner.test"\n'
            f'bundle_endpoint_url = "https://127.0.0.1:{partner.port}/bundle"\n'
            f'ca_file = "{web.cert}"\n'), trust_domain="c.test")
        c.register("wc", "unix:uid:0", f"unix:supplementary_gid:{GID}",
                   extra=("--federates-with", "partner.test"))
        good = _wait("the partner bundle arrives", lambda: _x509_response(c).federated_bundles
                     .get("spiffe://partner.test"))
        for mode, says in (("garbage", "not JSON"), ("error", "HTTP 500"),
                           ("hang", "no answer within 2s")):
            partner.mode = mode
            lines = _wait(f"a failed fetch ({mode}) is logged", lambda says=says: [
                json.loads(x) for x in c.log.read_text().splitlines()
                if "federated bundle fetch failed" in x and says in x])
            assert lines[0]["trust_domain"] == "partner.test" and lines[0]["have_bundle"]
            assert _x509_response(c).federated_bundles["spiffe://partner.test"] == good
            status = _federation_status(c, "partner.test")
            assert status.startswith("stale:") and says in status, status
            assert c.alive()
        # a restart while the endpoint hangs serves the kept bundle at once
        c.stop()
        c.start()
        assert _x509_response(c).federated_bundles["spiffe://partner.test"] == good
        partner.release.set()
        partner.mode = "good"
        _wait("the endpoint recovers",
              lambda: _federation_status(c, "partner.test").startswith("ok:"))
        c.stop()
    finally:
        partner.close()
        shutil.rmtree(root, ignore_errors=True)


def test_sds_hands_federated_bundles_to_envoy(pair: tuple[Daemon, Daemon, WebCa]) -> None:
    """An Envoy whose entry federates with b.test gets b.test's bundle in `ALL` (the SPIFFE
    validator config) and under its own name, the same bundle FetchX509SVID hands out."""
    a, _, _ = pair
    _wait("b.test fetched", lambda: _federation_status(a, "b.test").startswith("ok:"))
    got = secrets(fetch(str(a.socket), "ALL", "b.test"))
    config = spv.SPIFFECertValidatorConfig()
    assert got["ALL"].validation_context.custom_validator_config.typed_config.Unpack(config)
    assert [td.name for td in config.trust_domains] == ["a.test", "b.test"]
    ders = _x509_response(a).federated_bundles["spiffe://b.test"]
    expected = [c.public_bytes(Encoding.PEM) for c in load_der_chain(ders)]
    assert config.trust_domains[1].trust_bundle.inline_bytes == b"".join(expected)
    assert got["b.test"].validation_context.trusted_ca.inline_bytes == b"".join(expected)
