"""Issue 15 item 10: an issuer's keys come only from the URL the configuration names.

`jwks_url` is parsed, not prefix-matched: https to a host, or plain http to loopback only, with
no user information. Such a URL is refused when the config is loaded (naming the key), and a
redirect to another scheme, host or port is refused when the keys are fetched: a real local
server redirects, the keys it points at are not loaded, and the refusal says why.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from ensign.daemon.config import jwks_url_problem, parse
from ensign.daemon.errors import ConfigError
from tests.support.daemon import ENSIGN, Daemon, make_daemon

BAD = [
    "http://127.0.0.1.evil.example/jwks",  # passed the old startswith("http://127.0.0.1")
    "http://127.0.0.1@evil.example/jwks",  # ... and so did this: the host is evil.example
    "http://127.0.0.1:80@evil.example/",
    "http://evil.example/jwks",
    "http://localhost.evil.example/",
    "http://127.0.0.2/jwks",
    "https://user:pw@idp.example.org/jwks",
    "https:///jwks",
    "http://127.0.0.1:99999/jwks",
    "http://127.0.0.1\\@evil.example/",
    "http://127.0.0.1/ jwks",
    "file:///etc/ensign/jwks.json",
    "ftp://idp.example.org/jwks",
    "//idp.example.org/jwks",
]
GOOD = ["https://idp.example.org/.well-known/jwks.json", "http://127.0.0.1:8080/jwks",
        "http://[::1]:8080/jwks", "http://localhost/jwks", "HTTPS://IDP.example.org/x"]


@pytest.mark.parametrize("url", BAD)
def test_a_jwks_url_to_anywhere_else_is_refused(url: str) -> None:
    assert jwks_url_problem(url) is not None
    with pytest.raises(ConfigError) as e:
        parse({"delegation": {"issuers": [{"issuer": "https://idp.example.org",
                                           "jwks_url": url}]}})
    assert "delegation.issuers.0.jwks_url:" in str(e.value)


@pytest.mark.parametrize("url", GOOD)
def test_https_or_loopback_http_is_accepted(url: str) -> None:
    assert jwks_url_problem(url) is None


def test_config_check_names_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "ensign.toml"
    cfg.write_text('[[delegation.issuers]]\nissuer = "https://idp.example.org"\n'
                   'jwks_url = "http://127.0.0.1.evil.example/jwks"\n')
    out = subprocess.run([*ENSIGN, "config", "check", "--config", str(cfg)],
                         capture_output=True, text=True)
    assert out.returncode == 78
    assert "delegation.issuers.0.jwks_url: must be https" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


class _Idp(http.server.BaseHTTPRequestHandler):
    """/jwks serves the keys; /to/<url> answers 302 with that Location."""

    jwks = b""

    def do_GET(self) -> None:
        if self.path == "/jwks":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(self.jwks)
        elif self.path.startswith("/to/"):
            self.send_response(302)
            self.send_header("Location", self.path[len("/to/"):])
            self.end_headers()
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def idp_server() -> Iterator[tuple[str, ec.EllipticCurvePrivateKey]]:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(pyjwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    handler = type("Idp", (_Idp,), {"jwks": json.dumps(
        {"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "ES256"}]}).encode()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", key
    server.shutdown()
    server.server_close()


def _exchange(d: Daemon, token: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SPIFFE_ENDPOINT_SOCKET": d.endpoint}
    return subprocess.run([*ENSIGN, "token", "exchange", "--subject-token", "-", "--audience",
                           "https://calendar.example.org/v1", "--scope", "calendar.read"],
                          input=token, capture_output=True, text=True, env=env, timeout=30)


def test_redirects_elsewhere_are_not_followed(short_tmp: Path, idp_server: Any) -> None:
    base, key = idp_server
    port = base.rsplit(":", 1)[1]
    sources = {  # issuer -> jwks_url
        "https://same.example": f"{base}/to//jwks",  # a path on the same origin: followed
        "https://host.example": f"{base}/to/http://localhost:{port}/jwks",
        "https://lookalike.example": f"{base}/to/http://127.0.0.1.evil.example:{port}/jwks",
        "https://scheme.example": f"{base}/to/https://127.0.0.1:{port}/jwks",
        "https://port.example": f"{base}/to/http://127.0.0.1:1/jwks",
    }
    issuers = "".join(f'[[delegation.issuers]]\nissuer = "{iss}"\njwks_url = "{url}"\n'
                      f'audience = "ensign"\n' for iss, url in sources.items())
    d = make_daemon(short_tmp, f"[delegation]\nenabled = true\n{issuers}")
    try:
        d.cli("role", "create", "cal", "--audience", "https://calendar.example.org/*",
              "--scope", "calendar.read", "--may-act-for-users")
        agent = d.register("cal-agent", "unix:uid:0", extra=("--role", "cal"))
        outcome = {}
        for iss in sources:
            now = int(time.time())
            token = pyjwt.encode({"iss": iss, "sub": "alice", "aud": "ensign", "iat": now,
                                  "exp": now + 600, "scope": "calendar.read",
                                  "may_act": {"sub": agent["spiffe_id"]}},
                                 key, algorithm="ES256", headers={"kid": "k1"})
            out = _exchange(d, token)
            while "no keys loaded" in out.stderr:  # the first fetch runs in the background
                time.sleep(0.1)
                out = _exchange(d, token)
            outcome[iss] = out
        assert outcome["https://same.example"].returncode == 0, outcome["https://same.example"]
        for iss in list(sources)[1:]:
            out = outcome[iss]
            assert out.returncode == 77, (iss, out.stdout)
            assert f"cannot load keys of {iss}" in out.stderr, out.stderr
            assert "refused" in out.stderr
        log = d.log.read_text()
        assert log.count("issuer keys unavailable") >= len(sources) - 1
    finally:
        d.stop()
