"""The delegated-token key set: stable kids, rotation that publishes before it signs, retired
keys kept until their tokens expired, and no key shared with the CA's JWT-SVID keys."""

from __future__ import annotations

import stat
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import KeySet

from ensign.daemon.config import CaConfig
from ensign.daemon.delegation import DelegationKeys, thumbprint, verify_delegated
from ensign.daemon.delegation.tokens import mint
from ensign.daemon.issuing import CertificateAuthority
from ensign.daemon.keys import public_spki

T0 = datetime(2026, 1, 1, tzinfo=UTC)
PERIOD = timedelta(hours=1)
TTL = timedelta(minutes=5)


def _keys(path: Path, now: list[datetime], alg: str = "ES256") -> DelegationKeys:
    ks = DelegationKeys(path, alg=alg, period=PERIOD, token_ttl=TTL,  # type: ignore[arg-type]
                        clock=lambda: now[0])
    ks.load_or_create()
    return ks


@pytest.mark.parametrize("alg", ["ES256", "RS256"])
def test_kid_is_the_rfc7638_thumbprint_and_survives_a_restart(tmp_path: Path, alg: str) -> None:
    now = [T0]
    ks = _keys(tmp_path, now, alg)
    jwks = ks.public_jwks()
    # joserfc computes the thumbprint on its own: the same kid on every node holding the key
    for jwk in KeySet.import_key_set(jwks).keys:
        assert jwk.kid == jwk.thumbprint()
    assert [k["use"] for k in jwks["keys"]] == ["sig"]
    assert jwks["keys"][0]["alg"] == alg and "d" not in jwks["keys"][0]
    assert _keys(tmp_path, now, alg).signing().kid == ks.signing().kid
    state = tmp_path / "delegation" / "keys.json"
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.parent.stat().st_mode) == 0o700


def test_rotation_publishes_before_signing_and_keeps_retired_keys(tmp_path: Path) -> None:
    now = [T0]
    ks = _keys(tmp_path, now)
    first = ks.signing().kid
    seen_published: dict[str, datetime] = {first: T0}
    signers = [first]
    step = timedelta(minutes=1)
    for _ in range(int(5 * PERIOD / step)):
        now[0] += step
        ks.maintain()
        published = {k["kid"] for k in ks.public_jwks()["keys"]}
        for kid in published:
            seen_published.setdefault(kid, now[0])
        signer = ks.signing().kid
        assert signer in published
        if signer != signers[-1]:
            # published at least half a period before it signed anything
            assert now[0] - seen_published[signer] >= PERIOD / 2 - step
            retired = signers[-1]
            assert retired in published  # its tokens (at most TTL old) still verify
            signers.append(signer)
        assert len(published) <= 3
    assert 5 <= len(signers) <= 6
    # a key retired more than TTL (+ skew) ago is gone
    assert signers[0] not in {k["kid"] for k in ks.public_jwks()["keys"]}


def test_changing_the_algorithm_signs_with_the_new_one_and_keeps_the_old(tmp_path: Path) -> None:
    now = [T0]
    es = _keys(tmp_path, now, "ES256")
    old = es.signing().kid
    now[0] += timedelta(minutes=1)
    rs = _keys(tmp_path, now, "RS256")
    assert rs.signing().alg == "RS256"
    assert old in rs.verification_keys()  # tokens it signed a minute ago still verify
    now[0] += TTL + timedelta(minutes=2)
    rs.maintain()
    assert old not in rs.verification_keys()
    assert {k["alg"] for k in rs.public_jwks()["keys"]} == {"RS256"}


def test_delegation_keys_are_never_jwt_svid_keys(tmp_path: Path) -> None:
    now = [T0]
    ca = CertificateAuthority(CaConfig(), "example.org", tmp_path, clock=lambda: now[0])
    ca.load_or_create()
    ks = _keys(tmp_path, now)
    svid_keys = {public_spki(k) for k in ca.jwt_keys().values()}
    token_keys = {public_spki(k) for k in ks.verification_keys().values()}
    assert len(token_keys) == 1 and not svid_keys & token_keys
    assert not set(ks.verification_keys()) & set(ca.jwt_keys())


def test_a_corrupt_state_file_is_a_clear_error(tmp_path: Path) -> None:
    now = [T0]
    _keys(tmp_path, now)
    (tmp_path / "delegation" / "keys.json").write_text("{not json")
    with pytest.raises(Exception, match="cannot load delegation keys"):
        _keys(tmp_path, now)


def test_a_fleet_nodes_keys_verify_and_are_served_beside_ours(tmp_path: Path) -> None:
    """In a fleet the other nodes' published keys verify delegated tokens and are served at
    jwks_uri with ours, until they expire; only our own keys sign; a published key whose kid is
    not its thumbprint, or of another algorithm, is ignored, and our kid stays our key."""
    now = [T0]
    ours = _keys(tmp_path / "a", now)
    other = _keys(tmp_path / "b", now, "RS256")
    theirs = other.signing()
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    own_kid = ours.signing().kid
    changed = ours.set_others([
        (theirs.kid, theirs.key.public_key(), T0 + timedelta(minutes=10)),
        ("not-a-thumbprint", theirs.key.public_key(), T0 + timedelta(minutes=10)),
        (thumbprint(p384), p384, T0 + timedelta(minutes=10)),
        (own_kid, theirs.key.public_key(), T0 + timedelta(minutes=10)),  # a kid that is ours
    ])
    assert changed is True
    assert set(ours.verification_keys()) == {own_kid, theirs.kid}
    assert public_spki(ours.verification_keys()[own_kid]) == public_spki(
        ours.signing().key.public_key())
    served = {k["kid"]: k for k in ours.public_jwks()["keys"]}
    assert set(served) == {own_kid, theirs.kid}
    assert (served[theirs.kid]["alg"], served[theirs.kid]["use"]) == ("RS256", "sig")
    assert ours.algorithms == ["ES256", "RS256"]
    assert [k.kid for k in ours.published()] == [own_kid]  # what this node publishes: its own
    issued = int(time.time())  # PyJWT checks exp against the real clock
    token = mint(theirs, {"iss": "spiffe://example.org", "sub": "alice", "aud": "x",
                          "exp": issued + 240, "iat": issued, "jti": "j1", "client_id": "c",
                          "act": {"sub": "spiffe://example.org/agent/a"}})
    assert verify_delegated(token, "x", ours.verification_keys(), now=T0,
                            issuer="spiffe://example.org").subject == "alice"
    assert ours.set_others([(theirs.kid, theirs.key.public_key(),
                             T0 + timedelta(minutes=10))]) is False  # the same set
    now[0] = T0 + timedelta(minutes=11)  # their key's tokens can no longer be valid
    assert set(ours.verification_keys()) == {own_kid}
    assert [k["kid"] for k in ours.public_jwks()["keys"]] == [own_kid]
