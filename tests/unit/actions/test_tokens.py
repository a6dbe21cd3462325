"""Which token an action was done with: one this trust domain issued (a delegated token under
the delegation keys, a JWT-SVID under the JWT-SVID keys, never the other way round), expired
or not, or not ours at all, and why. Never an exception, whatever the token."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from ensign.daemon.actions import TokenCheck
from ensign.daemon.delegation import DelegationKeys
from ensign.daemon.delegation.tokens import mint
from ensign.daemon.issuing import mint_jwt_svid, new_authority
from ensign.daemon.spiffe_id import SpiffeId

NOW = datetime.now(UTC).replace(microsecond=0)
ISS = "https://ensign.example.org"
AGENT = "spiffe://example.org/agent/agt_1"
HELPER = "spiffe://example.org/agent/agt_2"


class Keys:
    def __init__(self, tmp: Path) -> None:
        self.delegation = DelegationKeys(tmp, alg="ES256", period=timedelta(days=1),
                                         token_ttl=timedelta(minutes=5))
        self.delegation.load_or_create()
        self.authority = new_authority("example.org", "ec-p256", timedelta(days=1), NOW)
        self.check = TokenCheck(
            trust_domain="example.org", issuer_names={ISS, "spiffe://example.org"},
            delegation_keys=self.delegation.verification_keys,
            jwt_keys=lambda: {self.authority.jwt_kid: self.authority.jwt_key.public_key()},
            clock=lambda: NOW)

    def delegated(self, ttl: int = 300, **claims: Any) -> str:
        body = {"iss": ISS, "sub": "alice", "aud": "https://docs", "iat": int(NOW.timestamp()),
                "exp": int(NOW.timestamp()) + ttl, "jti": "d-1", "scope": "docs.read",
                "client_id": "agt_2", "act": {"sub": HELPER, "act": {"sub": AGENT}}, **claims}
        return mint(self.delegation.signing(), body)

    def svid(self, ttl: timedelta = timedelta(minutes=5), sub: str = AGENT) -> str:
        return mint_jwt_svid(authority=self.authority.signing(), spiffe_id=SpiffeId.parse(sub),
                             audience=("https://docs",), ttl=ttl, now=NOW).token


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path)


def test_a_delegated_token_is_ours_and_names_its_current_actor(keys: Keys) -> None:
    c = keys.check.check(keys.delegated())
    assert (c.kind, c.verified, c.jti, c.subject, c.reason) == ("delegated", True, "d-1", HELPER,
                                                                "")
    assert len(c.fingerprint) == 32


def test_a_jwt_svid_is_ours_and_names_its_workload(keys: Keys) -> None:
    token = keys.svid()
    c = keys.check.check(token)
    assert (c.kind, c.verified, c.subject) == ("jwt-svid", True, AGENT)
    assert c.jti == jwt.decode(token, options={"verify_signature": False})["jti"]


def test_expired_tokens_still_verify_and_carry_their_expiry(keys: Keys) -> None:
    c = keys.check.check(keys.delegated(ttl=-60))
    assert c.verified and c.expires_at == int(NOW.timestamp()) - 60
    s = keys.check.check(keys.svid(ttl=timedelta(seconds=-30)))
    assert s.verified and s.expires_at < NOW.timestamp()


def _resigned(token: str, key: Any, **header: Any) -> str:
    h = jwt.get_unverified_header(token)
    return jwt.encode(jwt.decode(token, options={"verify_signature": False}), key,
                      algorithm="ES256", headers={"kid": h["kid"], "typ": h.get("typ"), **header})


def test_forgeries_and_other_issuers_are_not_ours_with_the_reason(keys: Keys) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    cases = {
        "forged delegated": (_resigned(keys.delegated(), other),
                             "does not verify against this trust domain's keys"),
        "forged svid": (_resigned(keys.svid(), other), "not a token of this trust domain"),
        "another issuer": (_resigned(keys.delegated(iss="https://evil.example"), other),
                           "issued by 'https://evil.example', not by this trust domain"),
        "another domain": (keys.svid(sub="spiffe://partner.example/x"),
                           "JWT-SVID of another trust domain (partner.example)"),
        # typ confusion: a JWT-SVID key never vouches for a delegated token, nor the reverse
        "svid key, at+jwt": (_resigned(keys.svid(), keys.authority.jwt_key, typ="at+jwt"),
                             "is not a delegated-token key"),
        "delegation key, JWT": (jwt.encode(
            {"sub": AGENT, "aud": "x", "exp": int(NOW.timestamp()) + 60},
            keys.delegation.signing().key, algorithm="ES256",
            headers={"kid": keys.delegation.signing().kid, "typ": "JWT"}),
            "not found in the trust bundle"),
        "alg none": (jwt.encode({"sub": AGENT, "aud": "x", "exp": 2**31}, None, algorithm="none"),
                     "unsupported token algorithm 'none'"),
        "malformed": ("a.b", "malformed token"),
        "empty": ("", "no token given"),
    }
    for name, (token, why) in cases.items():
        c = keys.check.check(token)
        assert not c.verified and why in c.reason, (name, c)
        assert c.jti == "" and c.subject == "", name


@given(st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_any_string_is_checked_without_an_exception(text: str) -> None:
    check = TokenCheck(trust_domain="example.org", issuer_names={ISS}, delegation_keys=dict,
                       jwt_keys=dict, clock=lambda: NOW)
    c = check.check(text)
    assert not c.verified and c.reason


def test_a_token_is_checked_once_then_served_from_the_cache(keys: Keys) -> None:
    token = keys.delegated()
    first = keys.check.check(token)
    keys.delegation._keys = []  # keys gone: a cached result does not need them
    assert keys.check.check(token) is first


def test_in_a_fleet_a_token_signed_by_another_nodes_key_names_that_node(keys: Keys) -> None:
    other = new_authority("example.org", "ec-p256", timedelta(days=1), NOW)
    check = TokenCheck(
        trust_domain="example.org", issuer_names={ISS}, delegation_keys=dict,
        jwt_keys=lambda: {keys.authority.jwt_kid: keys.authority.jwt_key.public_key(),
                          other.jwt_kid: other.jwt_key.public_key()},
        clock=lambda: NOW, key_owner=lambda kid: {other.jwt_kid: "node-2"}.get(kid, ""))
    theirs = mint_jwt_svid(authority=other.signing(), spiffe_id=SpiffeId.parse(AGENT),
                           audience=("https://docs",), ttl=timedelta(minutes=5), now=NOW).token
    c = check.check(theirs)
    assert (c.verified, c.subject, c.node) == (True, AGENT, "node-2")
    assert check.check(keys.svid()).node == ""  # this node's own key
