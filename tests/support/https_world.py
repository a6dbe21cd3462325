"""The HTTPS endpoint's test world: one daemon with [http] on, an IdP, agents told apart by
groups, and helpers to exchange, introspect and read the daemon's log (tests/integration/
test_https.py)."""

from __future__ import annotations

import json
import ssl
import time
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.daemon import make_daemon
from tests.support.https import WebCa, free_port, http_config, svid_files

IDP = "https://idp.example.org"
CAL = "https://calendar.example.org"
GID_A, GID_RS, GID_PLAIN = 5101, 5102, 5103


class Idp:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())

    def jwks(self) -> str:
        jwk = json.loads(pyjwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        return json.dumps({"keys": [{**jwk, "kid": "idp-1", "use": "sig", "alg": "ES256"}]})

    def token(self, sub: str = "alice", scope: str = "calendar.read", may_act: Any = None,
              iss: str = IDP, ttl: int = 600) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {"iss": iss, "sub": sub, "aud": "ensign", "iat": now,
                                  "exp": now + ttl, "scope": scope}
        if may_act is not None:
            claims["may_act"] = may_act
        return pyjwt.encode(claims, self.key, algorithm="ES256", headers={"kid": "idp-1"})


class World:
    def __init__(self, root: Path, idp: Idp, alg: str = "ES256") -> None:
        self.root, self.idp = root, idp
        (root / "idp.json").write_text(idp.jwks())
        self.web = WebCa.create(root / "web")
        cert, key = self.web.issue("ensign")
        self.port = free_port()
        self.issuer = f"https://127.0.0.1:{self.port}"
        self.d = make_daemon(root, http_config(self.port, cert, key,
                                               extra='handshake_timeout = "2s"\n') + (
            f'[delegation]\nenabled = true\nsigning_alg = "{alg}"\n'
            f'[[delegation.issuers]]\nissuer = "{IDP}"\njwks_file = "{root / "idp.json"}"\n'))
        d = self.d
        d.cli("role", "create", "cal", "--audience", f"{CAL}*", "--scope", "calendar.read",
              "--may-act-for-users")
        d.cli("role", "create", "rs", "--audience", f"{CAL}*", "--may-introspect")
        self.agent = d.register("agent-a", "unix:uid:0", f"unix:supplementary_gid:{GID_A}",
                                extra=("--role", "cal"))
        self.rs = d.register("calendar-api", "unix:uid:0", f"unix:supplementary_gid:{GID_RS}",
                             extra=("--role", "rs", "--kind", "service"))
        self.plain = d.register("plain", "unix:uid:0", f"unix:supplementary_gid:{GID_PLAIN}",
                                extra=("--kind", "service"))
        self.agent_files = svid_files(d, root / "svid-a", gid=GID_A)
        self.rs_files = svid_files(d, root / "svid-rs", gid=GID_RS)

    def client(self, files: tuple[Path, Path, Path] | None) -> httpx.Client:
        """httpx as an agent uses it: the web CA trusted, its SVID files as client cert."""
        ctx = ssl.create_default_context(cafile=str(self.web.cert))
        if files:
            ctx.load_cert_chain(str(files[0]), str(files[1]))
        return httpx.Client(base_url=self.issuer, verify=ctx, timeout=10)

    def exchange(self, files: tuple[Path, Path, Path] | None = None, **form: str) -> httpx.Response:
        data = {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
                "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
                "audience": f"{CAL}/v1", "scope": "calendar.read", **form}
        with self.client(files or self.agent_files) as c:
            return c.post("/token", data=data)

    def alice(self, **kw: Any) -> str:
        return self.idp.token(may_act={"sub": self.agent["spiffe_id"]}, **kw)

    def introspect(self, token: str, files: tuple[Path, Path, Path] | None = None
                   ) -> httpx.Response:
        with self.client(files or self.rs_files) as c:
            return c.post("/introspect", data={"token": token})

    def log_lines(self, text: str, at_least: int = 0) -> int:
        """How many lines of the daemon's log hold `text`; waits (up to 10 s) for `at_least`,
        since a connection's refusal may be logged after the client saw it end."""
        deadline = time.monotonic() + 10
        while True:
            n = self.d.log.read_text().count(text)
            if n >= at_least or time.monotonic() > deadline:
                return n
            time.sleep(0.05)
