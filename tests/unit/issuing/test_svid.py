"""Minting and validation as pure functions, checked with py-spiffe's own parsers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import jwt as pyjwt
import pytest
from spiffe import JwtBundle, JwtSvid, TrustDomain, X509Svid

from ensign.daemon import keys
from ensign.daemon.errors import InvalidRequest, TokenInvalid
from ensign.daemon.issuing import (
    jwks,
    mint_jwt_svid,
    mint_x509_svid,
    new_authority,
    validate_jwt_svid,
)
from ensign.daemon.spiffe_id import SpiffeId

NOW = datetime.now(UTC).replace(microsecond=0)
TD = "example.org"
WORKLOAD = SpiffeId.parse("spiffe://example.org/agent/a1")


@pytest.fixture(scope="module", params=["ec-p256", "ec-p384", "rsa-2048"])
def authority(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    return new_authority(TD, request.param, timedelta(hours=24), NOW)


def test_x509_svid_passes_py_spiffe(authority) -> None:  # type: ignore[no-untyped-def]
    svid = mint_x509_svid(
        authority=authority.signing(),
        spiffe_id=WORKLOAD,
        key=keys.generate("ec-p256"),
        ttl=timedelta(hours=1),
        now=NOW,
    )
    parsed = X509Svid.parse_raw(svid.chain_der(), keys.to_pkcs8_der(svid.key))
    assert str(parsed.spiffe_id) == str(WORKLOAD)
    assert svid.not_after == NOW + timedelta(hours=1)


def test_x509_svid_never_outlives_its_ca() -> None:
    short = new_authority(TD, "ec-p256", timedelta(minutes=10), NOW)
    svid = mint_x509_svid(
        authority=short.signing(),
        spiffe_id=WORKLOAD,
        key=keys.generate("ec-p256"),
        ttl=timedelta(hours=1),
        now=NOW,
    )
    assert svid.not_after == short.not_after


def test_jwt_svid_header_and_claims(authority) -> None:  # type: ignore[no-untyped-def]
    svid = mint_jwt_svid(
        authority=authority.signing(),
        spiffe_id=WORKLOAD,
        audience=("a", "b"),
        ttl=timedelta(minutes=5),
        now=datetime.now(UTC),  # py-spiffe checks expiry against the wall clock
        issuer="https://agents.example.org",
    )
    header = pyjwt.get_unverified_header(svid.token)
    assert header["kid"] == authority.jwt_kid and header["typ"] == "JWT"
    bundle = JwtBundle.parse(
        TrustDomain(TD), jwks({authority.jwt_kid: authority.jwt_key.public_key()})
    )
    parsed = JwtSvid.parse_and_validate(svid.token, bundle, {"a"})
    assert str(parsed.spiffe_id) == str(WORKLOAD)
    claims = pyjwt.decode(svid.token, options={"verify_signature": False})
    assert claims["iss"] == "https://agents.example.org"
    assert set(claims) >= {"sub", "aud", "exp", "iat", "jti"}


def test_validation_failures() -> None:
    now = datetime.now(UTC)  # pyjwt checks expiry against the wall clock
    a = new_authority(TD, "ec-p256", timedelta(hours=1), now)
    keyset = {a.jwt_kid: a.jwt_key.public_key()}
    token = mint_jwt_svid(
        authority=a.signing(),
        spiffe_id=WORKLOAD,
        audience=("x",),
        ttl=timedelta(minutes=5),
        now=now,
    ).token
    sub, claims = validate_jwt_svid(token, "x", keyset, TD, now)
    assert sub == WORKLOAD and claims["aud"] == ["x"]
    with pytest.raises(TokenInvalid, match="audience"):
        validate_jwt_svid(token, "y", keyset, TD, now)
    with pytest.raises(TokenInvalid, match="not found"):
        validate_jwt_svid(token, "x", {}, TD, now)
    old = mint_jwt_svid(
        authority=a.signing(),
        spiffe_id=WORKLOAD,
        audience=("x",),
        ttl=timedelta(seconds=1),
        now=now - timedelta(minutes=10),
    ).token
    with pytest.raises(TokenInvalid, match="expired"):
        validate_jwt_svid(old, "x", keyset, TD, now)
    hmac = pyjwt.encode(
        {"sub": str(WORKLOAD), "aud": "x", "exp": 9999999999},
        "k" * 32,
        algorithm="HS256",
        headers={"kid": a.jwt_kid},
    )
    with pytest.raises(TokenInvalid, match="algorithm"):
        validate_jwt_svid(hmac, "x", keyset, TD, now)
    foreign = mint_jwt_svid(
        authority=a.signing(),
        spiffe_id=SpiffeId.parse("spiffe://other.org/w"),
        audience=("x",),
        ttl=timedelta(minutes=5),
        now=now,
    ).token
    with pytest.raises(TokenInvalid, match="trust domain"):
        validate_jwt_svid(foreign, "x", keyset, TD, now)


@pytest.mark.parametrize(
    "text",
    [
        "http://example.org/a",
        "spiffe://",
        "spiffe://example.org/a/",
        "spiffe://example.org//a",
        "spiffe://exa mple.org/a",
        "spiffe://example.org/a?b",
        "spiffe://user@example.org/a",
        "spiffe://example.org:8080/a",
        "spiffe://example.org/" + "a" * 2100,
        "\udcff",  # lone surrogates, as JSON "\udcff" in a token's sub decodes
        "spiffe://\udcff.org/a",
        "spiffe://example.org/\ud800",
    ],
)
def test_invalid_spiffe_ids(text: str) -> None:
    with pytest.raises(InvalidRequest):
        SpiffeId.parse(text)


def test_spiffe_id_normalises_scheme_and_domain_case() -> None:
    assert str(SpiffeId.parse("SPIFFE://Example.ORG/Path")) == "spiffe://example.org/Path"
