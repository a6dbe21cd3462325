"""A test identity provider for delegation, and token exchange through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.daemon import ENSIGN, Daemon

IDP = "https://idp.example.org"
CAL = "https://calendar.example.org"


class Idp:
    """An OIDC-like issuer: an ES256 key published as a JWKS file, and a second key it does not
    publish (for forgeries)."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.other = ec.generate_private_key(ec.SECP256R1())

    def jwks(self) -> str:
        jwk = json.loads(pyjwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        return json.dumps({"keys": [{**jwk, "kid": "idp-1", "use": "sig", "alg": "ES256"}]})

    def config(self, root: Path, *, max_chain_depth: int | None = None) -> str:
        """Write the JWKS under `root`; the daemon config that trusts it for delegation."""
        jwks = root / "idp-jwks.json"
        jwks.write_text(self.jwks())
        depth = "" if max_chain_depth is None else f"max_chain_depth = {max_chain_depth}\n"
        return (f"[delegation]\nenabled = true\n{depth}"
                f'[[delegation.issuers]]\nissuer = "{IDP}"\n'
                f'jwks_file = "{jwks}"\naudience = "ensign"\n')

    def token(self, sub: str = "alice", scope: str = "calendar.read calendar.write",
              may_act: Any = None, ttl: int = 600, iss: str = IDP, key: Any = None,
              kid: str = "idp-1") -> str:
        """The human's token; `may_act` names the agent allowed to act for them."""
        now = int(time.time())
        claims: dict[str, Any] = {"iss": iss, "sub": sub, "aud": "ensign", "iat": now,
                                  "exp": now + ttl, "scope": scope}
        if may_act is not None:
            claims["may_act"] = may_act
        return pyjwt.encode(claims, key or self.key, algorithm="ES256", headers={"kid": kid})


def exchange(d: Daemon, gid: int | None, token: str,
             *args: str) -> subprocess.CompletedProcess[str]:
    """`ensign token exchange` with `token` on stdin, run with supplementary group `gid` (the
    tests tell agents apart by group; None runs with this process's groups)."""
    env = {**os.environ, "SPIFFE_ENDPOINT_SOCKET": d.endpoint}
    return subprocess.run([*ENSIGN, "token", "exchange", "--subject-token", "-", *args],
                          input=token, capture_output=True, text=True, env=env,
                          extra_groups=None if gid is None else [gid], timeout=30)
