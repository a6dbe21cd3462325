"""Delegated-token rules a resource server relies on (issue 17, JWT rules): RFC 9068 `typ`
values, the `cnf` binding checked against the presenter's certificate, a bound token never
outliving its certificate, and `may_act` naming the agent by `iss` as well as `sub`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ensign.daemon.delegation import (
    DelegationDenied,
    DelegationKeys,
    Delegator,
    Request,
    decide,
    verify_delegated,
    x5t_s256,
)
from ensign.daemon.delegation.tokens import mint
from ensign.daemon.errors import TokenInvalid
from ensign.daemon.issuing import mint_x509_svid, new_authority
from ensign.daemon.keys import generate
from ensign.daemon.registry import Entry, Role
from ensign.daemon.spiffe_id import SpiffeId

NOW = datetime.now(UTC).replace(microsecond=0)
ISS = "https://ensign.example.org"
AGENT = Entry(id="agt_1", name="a", kind="agent", spiffe_id="spiffe://example.org/agent/agt_1",
              selectors=("unix:uid:1",), roles=("cal",))
ROLES = {"cal": Role(name="cal", audiences=("https://cal",), scopes=("read",),
                     may_act_for_users=True)}


@pytest.fixture
def keys(tmp_path: Path) -> DelegationKeys:
    ks = DelegationKeys(tmp_path, alg="ES256", period=timedelta(days=1),
                        token_ttl=timedelta(minutes=5))
    ks.load_or_create()
    return ks


def _cert(ttl: timedelta) -> x509.Certificate:
    authority = new_authority("example.org", "ec-p256", timedelta(days=1), NOW)
    return mint_x509_svid(authority=authority.signing(),
                          spiffe_id=SpiffeId.parse(AGENT.spiffe_id),
                          key=generate("ec-p256"), ttl=ttl, now=NOW).cert


def _decide(may_act: Any = None, *, cnf_not_after: datetime | None = None,
            token_exp: timedelta = timedelta(minutes=10)) -> dict[str, Any]:
    delegator = Delegator(subject="alice", issuer="https://idp", scopes=("read",),
                          expires_at=int((NOW + token_exp).timestamp()),
                          may_act=may_act if may_act is not None else {"sub": AGENT.spiffe_id})
    return decide(agent=AGENT, roles=ROLES, delegator=delegator, grant=None,
                  request=Request(audience="https://cal", scopes=("read",), ttl=None,
                                  allow_narrowing=False),
                  issuer=ISS, cnf_thumbprint="x", cnf_not_after=cnf_not_after,
                  max_ttl=timedelta(minutes=5), max_chain_depth=3, now=NOW,
                  registry_lookup={AGENT.id: AGENT}).claims


def _token(keys: DelegationKeys, claims: dict[str, Any], typ: str = "at+jwt") -> str:
    k = keys.signing()
    return jwt.encode(claims, k.key, algorithm=k.alg, headers={"kid": k.kid, "typ": typ})


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "Application/AT+JWT"])
def test_rfc9068_typ_values_are_accepted(keys: DelegationKeys, typ: str) -> None:
    token = _token(keys, _decide(), typ)
    t = verify_delegated(token, "https://cal", keys.verification_keys(), now=NOW, issuer=ISS)
    assert t.subject == "alice" and t.actors == (AGENT.spiffe_id,)


def test_expiry_is_judged_by_the_clock_it_is_given(keys: DelegationKeys) -> None:
    """The daemon's clock, not the wall clock: a token minted an hour ago by that clock is
    expired although the wall clock says otherwise, and one valid at `now` stays valid."""
    claims = _decide()
    token = _token(keys, {**claims, "exp": int(NOW.timestamp()) + 60})
    jwks = keys.verification_keys()
    assert verify_delegated(token, "https://cal", jwks, now=NOW).subject == "alice"
    with pytest.raises(TokenInvalid, match="token has expired"):
        verify_delegated(token, "https://cal", jwks, now=NOW + timedelta(seconds=60))
    for exp in ("soon", True):
        with pytest.raises(TokenInvalid, match="exp must be a number"):
            verify_delegated(_token(keys, {**claims, "exp": exp}), "https://cal", jwks, now=NOW)


@pytest.mark.parametrize("typ", ["JWT", "jwt", "at+jwt2", ""])
def test_other_typ_values_are_refused(keys: DelegationKeys, typ: str) -> None:
    with pytest.raises(TokenInvalid, match="not a delegated token"):
        verify_delegated(_token(keys, _decide(), typ), "https://cal", keys.verification_keys(),
                         now=NOW)


def test_cnf_is_checked_against_the_presenters_certificate(keys: DelegationKeys) -> None:
    holder, other = _cert(timedelta(hours=1)), _cert(timedelta(hours=1))
    claims = {**_decide(), "cnf": {"x5t#S256": x5t_s256(holder.public_bytes(Encoding.DER))}}
    token = mint(keys.signing(), claims)
    jwks = keys.verification_keys()
    ok = verify_delegated(token, "https://cal", jwks, now=NOW,
                          presenter_cert=holder.public_bytes(Encoding.DER))
    assert ok.claims["cnf"] == claims["cnf"]
    with pytest.raises(TokenInvalid, match="bound to another certificate"):
        verify_delegated(token, "https://cal", jwks, now=NOW,
                         presenter_cert=other.public_bytes(Encoding.DER))
    # without a known presenter the binding is the resource server's to check
    assert verify_delegated(token, "https://cal", jwks, now=NOW).subject == "alice"
    jkt = mint(keys.signing(), {**_decide(), "cnf": {"jkt": "abc"}})
    with pytest.raises(TokenInvalid, match="other than x5t#S256"):
        verify_delegated(jkt, "https://cal", jwks, now=NOW,
                         presenter_cert=holder.public_bytes(Encoding.DER))


def test_a_bound_token_never_outlives_its_certificate() -> None:
    cert = _cert(timedelta(minutes=2))
    claims = _decide(cnf_not_after=cert.not_valid_after_utc)
    assert claims["exp"] <= int(cert.not_valid_after_utc.timestamp())
    assert claims["exp"] < int((NOW + timedelta(minutes=5)).timestamp())
    with pytest.raises(DelegationDenied, match="expires too soon"):
        _decide(cnf_not_after=NOW - timedelta(seconds=1))


@pytest.mark.parametrize(("may_act", "named"), [
    ({"sub": AGENT.spiffe_id}, True),
    ({"sub": AGENT.spiffe_id, "iss": ISS}, True),
    ({"sub": AGENT.id, "iss": ISS}, True),
    ([{"sub": "someone"}, {"sub": AGENT.spiffe_id, "iss": ISS}], True),
    ({"sub": AGENT.spiffe_id, "iss": "https://other-ensign.example.org"}, False),
    ({"sub": AGENT.id}, False),  # a bare agent id names no agent without its issuer
    ({"sub": AGENT.id, "iss": "https://other-ensign.example.org"}, False),
])
def test_may_act_names_the_agent_by_iss_and_sub(may_act: Any, named: bool) -> None:
    if named:
        assert _decide(may_act)["dlg"]["may_act"] is True
    else:
        with pytest.raises(DelegationDenied, match="has not allowed agent") as e:
            _decide(may_act)
        assert e.value.oauth_error == "invalid_request"


def test_jwt_svid_keys_never_verify_a_delegated_token(tmp_path: Path,
                                                      keys: DelegationKeys) -> None:
    authority = new_authority("example.org", "ec-p256", timedelta(days=1), NOW)
    forged = jwt.encode(_decide(), authority.jwt_key, algorithm="ES256",
                        headers={"kid": authority.jwt_kid, "typ": "at+jwt"})
    with pytest.raises(TokenInvalid, match="not a delegated-token key"):
        verify_delegated(forged, "https://cal", keys.verification_keys(), now=NOW)


def test_expiry_is_judged_at_the_time_given_not_the_wall_clock(keys: DelegationKeys) -> None:
    token = _token(keys, _decide())
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    just_before = datetime.fromtimestamp(exp - 1, UTC)
    assert verify_delegated(token, "https://cal", keys.verification_keys(), now=just_before,
                            issuer=ISS).expires_at == exp
    with pytest.raises(TokenInvalid, match="token has expired"):
        verify_delegated(token, "https://cal", keys.verification_keys(),
                         now=datetime.fromtimestamp(exp, UTC), issuer=ISS)
