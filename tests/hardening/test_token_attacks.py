"""Adversarial: delegation tokens forged, escalated, replayed and expired. Each is refused with
one line, exit 77, and a denied token.exchanged record naming why; the honest chain still works."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.daemon import ENSIGN, Daemon, make_daemon, needs_root, tmp_root
from tests.support.idp import CAL, Idp, exchange

GID_A, GID_B = 5101, 5102


@pytest.fixture(scope="module")
def deleg() -> Iterator[tuple[Daemon, Idp, dict[str, Any], dict[str, Any]]]:
    root = tmp_root()
    idp = Idp()
    d = make_daemon(root, idp.config(root, max_chain_depth=2))
    d.cli("role", "create", "planner", "--audience", f"{CAL}*", "--scope", "calendar.read",
          "--scope", "calendar.write", "--may-act-for-users", "--may-redelegate")
    d.cli("role", "create", "reader", "--audience", f"{CAL}*", "--scope", "calendar.read",
          "--may-act-for-users")
    a = d.register("agent-a", "unix:uid:0", f"unix:supplementary_gid:{GID_A}",
                   extra=("--role", "planner"))
    b = d.register("agent-b", "unix:uid:0", f"unix:supplementary_gid:{GID_B}",
                   extra=("--role", "reader"))
    yield d, idp, a, b
    d.stop()
    shutil.rmtree(root, ignore_errors=True)


def _exchange(d: Daemon, gid: int, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    return exchange(d, gid, token, "--audience", CAL, *args)


def _b64(d: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")


def _refused(d: Daemon, agent: dict[str, Any], out: subprocess.CompletedProcess[str],
             expect: str) -> None:
    assert out.returncode == 77, out.stdout + out.stderr
    assert expect in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    trail = d.audit("--agent", str(agent["id"]), "--type", "token.exchanged")
    assert trail[-1]["result"] == "denied" and expect in trail[-1]["reason"], trail[-1]


def _exchange_svid(d: Daemon) -> str:
    """Agent A's own JWT-SVID (fetched with A's group)."""
    env = {**os.environ, "SPIFFE_ENDPOINT_SOCKET": d.endpoint}
    out = subprocess.run([*ENSIGN, "fetch", "jwt", "--audience", f"{CAL}/x"], env=env,
                         capture_output=True, text=True, extra_groups=[GID_A], timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split()[-1]


@needs_root
def test_delegation_token_attacks(deleg: tuple[Daemon, Idp, dict[str, Any], dict[str, Any]],
                                  ) -> None:
    d, idp, a, b = deleg
    may_act_a = {"sub": a["spiffe_id"]}
    first = _exchange(d, GID_A, idp.token(may_act=may_act_a), "--scope", "calendar.read")
    assert first.returncode == 0, first.stderr
    token = first.stdout.strip()
    header_b64, _, sig = token.split(".")
    claims = pyjwt.decode(token, options={"verify_signature": False})
    header = pyjwt.get_unverified_header(token)

    # Forged: the human's token signed by someone else's key under the IdP's key id.
    forged_idp = idp.token(may_act=may_act_a, key=ec.generate_private_key(ec.SECP256R1()))
    _refused(d, a, _exchange(d, GID_A, forged_idp), "Signature verification failed")
    # Forged: a delegated token re-signed with an attacker key under the CA's key id.
    forged = pyjwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256",
                          headers={"kid": header["kid"], "typ": "at+jwt"})
    _refused(d, b, _exchange(d, GID_B, forged), "rejected")
    # Escalated: scope widened in the payload, the CA's signature kept.
    wider = _b64({**claims, "scope": "calendar.read calendar.write"})
    _refused(d, b, _exchange(d, GID_B, f"{header_b64}.{wider}.{sig}"), "rejected")
    # Escalated: asking more than the delegated token carries.
    _refused(d, b, _exchange(d, GID_B, token, "--scope", "calendar.write"), "calendar.write")
    # Replayed: the agent presents its own delegated token again.
    _refused(d, a, _exchange(d, GID_A, token), "re-delegate to itself")
    # Replayed: a JWT-SVID is not a human's consent.
    svid = _exchange_svid(d)
    _refused(d, a, _exchange(d, GID_A, svid), "is not trusted")
    # Expired: a delegated token past its exp.
    short = _exchange(d, GID_A, idp.token(may_act=may_act_a), "--scope", "calendar.read",
                      "--ttl", "1s")
    assert short.returncode == 0, short.stderr
    time.sleep(2.1)
    _refused(d, b, _exchange(d, GID_B, short.stdout.strip()), "expired")
    # The honest chain still works: A's token, presented by B, for what A holds.
    ok = _exchange(d, GID_B, token, "--scope", "calendar.read")
    assert ok.returncode == 0, ok.stderr
