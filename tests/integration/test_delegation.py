"""Token exchange: agents acting for humans and for other agents, against a test IdP."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ensign.proto import delegation_pb2 as dpb
from ensign.proto import workload_pb2 as pb
from tests.support.clients import HEADER, channel, stream
from tests.support.daemon import ENSIGN, Daemon, make_daemon
from tests.support.idp import CAL, IDP, Idp, exchange

GID_A, GID_B, GID_C, GID_NONE = 5001, 5002, 5003, 5999

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="agents are told apart by groups")


def _none_token() -> str:
    enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")  # noqa: E731
    return (enc({"alg": "none", "typ": "JWT"}) + "." + enc(
        {"iss": IDP, "sub": "alice", "aud": "ensign", "exp": int(time.time()) + 600,
         "scope": "calendar.read"}) + ".")


@pytest.fixture(scope="module")
def idp() -> Idp:
    return Idp()


@pytest.fixture
def world(short_tmp: Path, idp: Idp) -> Any:
    d = make_daemon(short_tmp, idp.config(short_tmp, max_chain_depth=2))
    d.cli("role", "create", "calendar-agent", "--audience", f"{CAL}*", "--scope", "calendar.read",
          "--scope", "calendar.write", "--may-act-for-users", "--may-redelegate")
    d.cli("role", "create", "calendar-helper", "--audience", f"{CAL}*", "--scope",
          "calendar.read", "--may-act-for-users", "--may-redelegate")
    a = d.register("agent-a", "unix:uid:0", f"unix:supplementary_gid:{GID_A}",
                   extra=("--role", "calendar-agent"))
    b = d.register("agent-b", "unix:uid:0", f"unix:supplementary_gid:{GID_B}",
                   extra=("--role", "calendar-helper"))
    c = d.register("agent-c", "unix:uid:0", f"unix:supplementary_gid:{GID_C}",
                   extra=("--role", "calendar-helper"))
    d.register("observer", "unix:uid:0", extra=("--kind", "service"))
    yield d, a, b, c
    d.stop()


def _jwt_bundle(d: Daemon) -> dict[str, Any]:
    """The JWT-SVID keys, as any SPIFFE client receives them."""
    with channel(str(d.socket)) as ch:
        resp = pb.JWTBundlesResponse.FromString(next(stream(ch, "FetchJWTBundles", timeout=10)))
    keys = json.loads(resp.bundles["spiffe://example.org"])["keys"]
    return {k["kid"]: pyjwt.PyJWK.from_dict(k).key for k in keys}


def _token_keys(d: Daemon) -> dict[str, Any]:
    """The delegated-token keys (ensign.delegation.v1 TokenKeys; jwks_uri serves the same)."""
    with channel(str(d.socket)) as ch:
        raw = ch.unary_unary("/ensign.delegation.v1.Delegation/TokenKeys")(
            dpb.TokenKeysRequest().SerializeToString(), metadata=HEADER, timeout=10)
    keys = json.loads(dpb.TokenKeysResponse.FromString(raw).jwks)["keys"]
    assert all(k["use"] == "sig" and k["alg"] == "ES256" for k in keys)
    return {k["kid"]: pyjwt.PyJWK.from_dict(k).key for k in keys}


def test_agent_acts_for_alice(world: Any, idp: Idp) -> None:
    d, a, _, _ = world
    alice = idp.token(may_act={"sub": a["spiffe_id"]})
    out = exchange(d, GID_A, alice, "--audience", f"{CAL}/v1", "--scope", "calendar.read")
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    header = pyjwt.get_unverified_header(token)
    assert header["typ"] == "at+jwt"
    keys = _token_keys(d)
    # Delegated tokens and JWT-SVIDs never share a key: the JWT bundle cannot verify it.
    assert header["kid"] not in _jwt_bundle(d) and not set(keys) & set(_jwt_bundle(d))
    claims = pyjwt.decode(token, keys[header["kid"]], algorithms=["ES256"], audience=f"{CAL}/v1")
    assert claims["sub"] == "alice" and claims["act"]["sub"] == a["spiffe_id"]
    assert claims["scope"] == "calendar.read" and claims["client_id"] == a["id"]
    assert claims["exp"] <= pyjwt.decode(alice, options={"verify_signature": False})["exp"]
    assert claims["dlg"]["may_act"] is True and "x5t#S256" in claims["cnf"]
    verified = d.cli("token", "verify", token, "--audience", f"{CAL}/v1")
    assert verified.stdout.startswith(f"valid: alice via {a['spiffe_id']}")
    # A delegated token is not a JWT-SVID: ValidateJWTSVID refuses it.
    refused = d.cli("validate", "jwt", "--audience", f"{CAL}/v1", "--token", token, check=False)
    assert refused.returncode == 65  # a data error: TokenInvalid, named by the daemon


def test_absurd_ttls_are_refused_with_a_message(world: Any, idp: Idp) -> None:
    # Past 3650 days a TTL overflows Python's timedelta: refused up front, never INTERNAL.
    d, a, _, _ = world
    token = idp.token(may_act={"sub": a["spiffe_id"]})
    out = exchange(d, GID_A, token, "--audience", f"{CAL}/v1", "--scope", "calendar.read",
                   "--ttl", "4000d")
    assert out.returncode == 64 and "requested TTL must be between" in out.stderr, out.stderr
    out = exchange(d, GID_A, token, "--audience", f"{CAL}/v1", "--ttl", "1000000000d")
    assert out.returncode == 64 and "is too long" in out.stderr, out.stderr  # a usage error
    grant = d.cli("delegation", "grant", "--subject", "alice", "--issuer", IDP, "--agent",
                  a["id"], "--scope", "calendar.read", "--ttl", "4000d", check=False)
    assert grant.returncode == 64 and "ttl must be between" in grant.stderr, grant.stderr
    role = d.cli("role", "create", "forever", "--audience", "x", "--max-ttl", "4000d",
                 check=False)
    assert role.returncode == 64 and "max_ttl must be between" in role.stderr, role.stderr
    agent = d.cli("agent", "register", "--name", "forever", "--owner", "o", "--selector",
                  "unix:uid:9", "--x509-ttl", "4000d", check=False)
    assert agent.returncode == 64 and "TTLs must be at most" in agent.stderr, agent.stderr
    assert exchange(d, GID_A, token, "--audience", f"{CAL}/v1", "--scope",
                    "calendar.read").returncode == 0  # and the daemon goes on serving


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("scope-not-held", "calendar.admin not allowed"),
        ("audience-not-in-roles", "not allowed by the agent's roles"),
        ("expired", "expired"),
        ("unknown-key", "unknown key"),
        ("untrusted-issuer", "not trusted"),
        ("alg-none", "algorithm 'none'"),
        ("not-named", "has not allowed agent"),
    ],
)
def test_refusals(world: Any, idp: Idp, case: str, expect: str) -> None:
    d, a, _, _ = world
    may_act = {"sub": a["spiffe_id"]}
    token, aud, scopes = idp.token(may_act=may_act), f"{CAL}/v1", ["calendar.read"]
    if case == "scope-not-held":
        scopes = ["calendar.admin"]
    elif case == "audience-not-in-roles":
        aud = "https://mail.example.org"
    elif case == "expired":
        token = idp.token(may_act=may_act, ttl=-10)
    elif case == "unknown-key":
        token = idp.token(may_act=may_act, key=idp.other, kid="idp-2")
    elif case == "untrusted-issuer":
        token = idp.token(may_act=may_act, iss="https://evil.example.org")
    elif case == "alg-none":
        token = _none_token()
    elif case == "not-named":
        token = idp.token(may_act={"sub": "spiffe://example.org/agent/someone-else"})
    args = ["--audience", aud, *[x for s in scopes for x in ("--scope", s)]]
    out = exchange(d, GID_A, token, *args)
    assert out.returncode == 77, out.stdout + out.stderr
    assert expect in out.stderr and len(out.stderr.strip().splitlines()) == 1
    trail = d.audit("--agent", a["id"], "--type", "token.exchanged")
    assert trail[-1]["result"] == "denied" and expect in trail[-1]["reason"]


def test_grants_suspension_and_strangers(world: Any, idp: Idp) -> None:
    d, a, _, _ = world
    token = idp.token()  # no may_act: a standing grant is needed
    args = ("--audience", CAL, "--scope", "calendar.read")
    assert exchange(d, GID_A, token, *args).returncode == 77
    grant = d.cli("delegation", "grant", "--subject", "alice", "--issuer", IDP, "--agent",
                  a["id"], "--scope", "calendar.read").stdout.strip()
    ok = exchange(d, GID_A, token, *args)
    assert ok.returncode == 0, ok.stderr
    claims = pyjwt.decode(ok.stdout.strip(), options={"verify_signature": False})
    assert claims["dlg"]["grant"] == grant
    d.cli("delegation", "revoke", grant, "--reason", "alice left")
    revoked = exchange(d, GID_A, token, *args)
    assert revoked.returncode == 77 and "no grant" in revoked.stderr
    d.cli("agent", "suspend", a["id"], "--reason", "test")
    suspended = exchange(d, GID_A, idp.token(may_act={"sub": a["spiffe_id"]}), *args)
    assert suspended.returncode == 77 and "not a registered, active agent" in suspended.stderr
    stranger = exchange(d, GID_NONE, idp.token(may_act={"sub": a["spiffe_id"]}), *args)
    assert stranger.returncode == 77 and "not a registered, active agent" in stranger.stderr


def test_agent_to_agent_chain(world: Any, idp: Idp) -> None:
    d, a, b, _ = world
    alice = idp.token(may_act={"sub": a["spiffe_id"]})
    first = exchange(d, GID_A, alice, "--audience", CAL, "--scope", "calendar.read",
                     "--scope", "calendar.write")
    assert first.returncode == 0, first.stderr
    second = exchange(d, GID_B, first.stdout.strip(), "--audience", CAL, "--scope",
                      "calendar.read")
    assert second.returncode == 0, second.stderr
    claims = pyjwt.decode(second.stdout.strip(), options={"verify_signature": False})
    assert claims["sub"] == "alice" and claims["scope"] == "calendar.read"
    assert claims["act"]["sub"] == b["spiffe_id"]
    assert claims["act"]["act"]["sub"] == a["spiffe_id"]
    wider = exchange(d, GID_B, first.stdout.strip(), "--audience", CAL, "--scope",
                     "calendar.write")
    assert wider.returncode == 77 and "calendar.write not allowed" in wider.stderr
    too_deep = exchange(d, GID_C, second.stdout.strip(), "--audience", CAL, "--scope",
                        "calendar.read")
    assert too_deep.returncode == 77 and "the limit is 2" in too_deep.stderr
    trail = d.audit("--agent", b["id"], "--type", "token.exchanged")
    ok = [r for r in trail if r["result"] == "success"][-1]
    assert ok["delegator"] == "alice"
    assert ok["details"]["previous_actors"] == [a["spiffe_id"]]
    assert ok["details"]["act"] == [b["spiffe_id"], a["spiffe_id"]]


def test_grant_json_and_grants_to_decommissioned_agents(world: Any) -> None:
    d, a, _, c = world
    made = json.loads(d.cli("delegation", "grant", "--subject", "bob", "--issuer", IDP,
                            "--agent", a["id"], "--scope", "calendar.read", "--ttl", "1h",
                            "-o", "json").stdout)
    assert "ttl_seconds" not in made and made["revoked_at"] is None
    created = datetime.fromisoformat(made["created_at"].replace("Z", "+00:00"))
    expires = datetime.fromisoformat(made["expires_at"].replace("Z", "+00:00"))
    assert (expires - created).total_seconds() == 3600
    table = d.cli("delegation", "list").stdout.splitlines()
    assert table[0].split() == ["ID", "SUBJECT", "AGENT", "SCOPES", "EXPIRES", "STATE"]
    d.cli("agent", "decommission", c["id"], "--reason", "retired")
    refused = d.cli("delegation", "grant", "--subject", "bob", "--issuer", IDP, "--agent",
                    c["id"], "--scope", "calendar.read", check=False)
    assert refused.returncode == 65 and "decommissioned" in refused.stderr
    assert [g["agent_id"] for g in json.loads(d.cli("delegation", "list", "--all", "-o",
                                                    "json").stdout)] == [a["id"]]


def test_a_jwt_svid_key_never_vouches_for_a_delegated_token(world: Any, idp: Idp) -> None:
    """Whoever holds a JWT-SVID signing key cannot make a token the delegation chain or
    `token verify` accepts: only the delegated-token keys sign those."""
    d, a, _, _ = world
    first = exchange(d, GID_A, idp.token(may_act={"sub": a["spiffe_id"]}), "--audience", CAL,
                     "--scope", "calendar.read")
    assert first.returncode == 0, first.stderr
    claims = pyjwt.decode(first.stdout.strip(), options={"verify_signature": False})
    state = json.loads((d.data_dir / "ca" / "state.json").read_text())["authorities"][-1]
    ca_key = serialization.load_pem_private_key(state["jwt_key"].encode(), None)
    forged = pyjwt.encode(claims, ca_key, algorithm="ES256",  # type: ignore[arg-type]
                          headers={"kid": state["jwt_kid"], "typ": "at+jwt"})
    chained = exchange(d, GID_B, forged, "--audience", CAL, "--scope", "calendar.read")
    assert chained.returncode == 77, chained.stderr
    assert "not a delegated-token key" in chained.stderr
    verified = d.cli("token", "verify", forged, "--audience", CAL, check=False)
    assert verified.returncode == 65 and "not a delegated-token key" in verified.stderr
    # the genuine token still chains
    ok = exchange(d, GID_B, first.stdout.strip(), "--audience", CAL, "--scope", "calendar.read")
    assert ok.returncode == 0, ok.stderr


def test_token_keys_keep_their_kid_across_a_restart(world: Any, idp: Idp) -> None:
    d, a, _, _ = world
    token = exchange(d, GID_A, idp.token(may_act={"sub": a["spiffe_id"]}), "--audience", CAL,
                     "--scope", "calendar.read").stdout.strip()
    before = _token_keys(d)
    d.stop()
    d.start()
    assert _token_keys(d) == before
    out = d.cli("token", "verify", token, "--audience", CAL)
    assert out.stdout.startswith(f"valid: alice via {a['spiffe_id']}")


def test_may_act_naming_another_issuer_does_not_name_our_agent(world: Any, idp: Idp) -> None:
    d, a, _, _ = world
    other = idp.token(may_act={"sub": a["spiffe_id"], "iss": "https://elsewhere.example.org"})
    out = exchange(d, GID_A, other, "--audience", CAL, "--scope", "calendar.read")
    assert out.returncode == 77 and "has not allowed agent" in out.stderr, out.stderr
    ours = idp.token(may_act={"sub": a["spiffe_id"], "iss": "spiffe://example.org"})
    assert exchange(d, GID_A, ours, "--audience", CAL, "--scope",
                    "calendar.read").returncode == 0


def test_a_bound_token_lives_no_longer_than_the_agents_certificate(
        short_tmp: Path, idp: Idp) -> None:
    jwks = short_tmp / "idp-jwks.json"
    jwks.write_text(idp.jwks())
    d = make_daemon(short_tmp, '[svid]\nx509_ttl = "90s"\n[delegation]\nenabled = true\n'
                               'token_ttl = "10m"\n'
                               f'[[delegation.issuers]]\nissuer = "{IDP}"\n'
                               f'jwks_file = "{jwks}"\naudience = "ensign"\n')
    try:
        d.cli("role", "create", "cal", "--audience", f"{CAL}*", "--scope", "calendar.read",
              "--may-act-for-users")
        a = d.register("agent-a", "unix:uid:0", f"unix:supplementary_gid:{GID_A}",
                       extra=("--role", "cal"))
        out = exchange(d, GID_A, idp.token(may_act={"sub": a["spiffe_id"]}, ttl=3600),
                       "--audience", CAL, "--scope", "calendar.read")
        assert out.returncode == 0, out.stderr
        token = out.stdout.strip()
        claims = pyjwt.decode(token, options={"verify_signature": False})
        svid = subprocess.run([*ENSIGN, "fetch", "x509", "-o", "json"], capture_output=True,
                              text=True, env={**os.environ, "SPIFFE_ENDPOINT_SOCKET": d.endpoint},
                              extra_groups=[GID_A], timeout=30, check=True)
        not_after = datetime.fromisoformat(json.loads(svid.stdout)[0]["not_after"])
        assert claims["exp"] - claims["iat"] <= 90
        assert claims["exp"] <= not_after.timestamp()
        # and `token verify --cert` checks the binding against the presenter's certificate
        other = short_tmp / "other.pem"
        other.write_bytes(_self_signed_pem())
        bound = d.cli("token", "verify", token, "--audience", CAL, "--cert", str(other),
                      check=False)
        assert bound.returncode == 65 and "bound to another certificate" in bound.stderr
    finally:
        d.stop()


def _self_signed_pem() -> bytes:
    import datetime as dt

    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "other")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(hours=1)).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)
