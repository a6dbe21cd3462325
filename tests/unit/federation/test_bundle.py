"""SPIFFE bundle documents: what this node serves parses back (with py-spiffe too), and what a
broken or hostile endpoint may send is refused with a reason instead of replacing a bundle."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from spiffe import JwtBundle, TrustDomain

from ensign.daemon.config import parse as parse_config
from ensign.daemon.errors import ConfigError
from ensign.daemon.federation import BundleError, encode, parse, parse_any
from ensign.daemon.issuing import new_authority

NOW = datetime.now(UTC)


def _served() -> bytes:
    a = new_authority("partner.test", "ec-p256", timedelta(days=1), NOW)
    return encode([a.cert], {a.jwt_kid: a.jwt_key.public_key()}, sequence=7, refresh_hint=30)


def test_what_we_serve_parses_back_and_py_spiffe_reads_its_jwt_keys() -> None:
    doc = _served()
    b = parse("partner.test", doc)
    assert (b.sequence, b.refresh_hint, len(b.x509_authorities)) == (7, 30, 1)
    uses = sorted(k["use"] for k in json.loads(doc)["keys"])
    assert uses == ["jwt-svid", "x509-svid"]
    jwt_bundle = JwtBundle.parse(TrustDomain("partner.test"), b.jwks())
    assert set(jwt_bundle.jwt_authorities) == set(b.jwt_authorities)
    assert parse_any("partner.test", b.x509_pem()).x509_authorities == b.x509_authorities


@pytest.mark.parametrize(("data", "says"), [
    (b"<html>hi</html>", "not JSON"),
    (b"[]", "no keys array"),
    (b'{"keys": "x"}', "no keys array"),
    (b'{"keys": []}', "no X.509 authority"),
    (b'{"keys": [{"kty": "EC", "use": "x509-svid", "x5c": ["@@"]}]}', "not a certificate"),
    (b'{"keys": [{"kty": "EC", "use": "x509-svid", "x5c": []}]}', "exactly one"),
    (b'{"keys": [{"use": "x509-svid"}]}', "no kty"),
    (b'{"keys": [], "spiffe_sequence": -1}', "spiffe_sequence"),
    (b'{"keys": [], "spiffe_refresh_hint": "5m"}', "spiffe_refresh_hint"),
    (b"{" + b" " * (1 << 20) + b"}", "larger than"),
])
def test_garbage_is_refused_with_a_reason(data: bytes, says: str) -> None:
    with pytest.raises(BundleError, match=says):
        parse("partner.test", data)


def test_unknown_uses_and_key_types_are_ignored_and_duplicate_kids_refused() -> None:
    doc = json.loads(_served())
    doc["keys"] += [{"kty": "OKP", "use": "x509-svid"}, {"kty": "EC", "use": "wit-svid"}]
    assert len(parse("partner.test", json.dumps(doc).encode()).x509_authorities) == 1
    jwt_key = next(k for k in doc["keys"] if k.get("use") == "jwt-svid")
    doc["keys"].append(dict(jwt_key))
    with pytest.raises(BundleError, match="appears twice"):
        parse("partner.test", json.dumps(doc).encode())
    del jwt_key["kid"]
    with pytest.raises(BundleError, match="no kid"):
        parse("partner.test", json.dumps({"keys": [jwt_key]}).encode())


@pytest.mark.parametrize(("toml", "says"), [
    ({"http": {"listen": "127.0.0.1:8443"}}, "issuer is required"),
    ({"http": {"listen": "x", "issuer": "https://a"}}, "host:port"),
    ({"http": {"issuer": "http://a"}}, "https URL"),
    ({"http": {"tls_cert": "/a"}}, "set together"),
    ({"http": {"node_name": "a/b"}}, "starting with a letter or digit"),
    ({"federation": {"trust_domains": [{"trust_domain": "p.test", "profile": "https_spiffe",
                                        "bundle_endpoint_url": "https://p"}]}},
     "needs endpoint_spiffe_id"),
    ({"federation": {"trust_domains": [{"trust_domain": "example.org",
                                        "bundle_endpoint_url": "https://p"}]}},
     "own trust domain"),
    ({"federation": {"trust_domains": [{"trust_domain": "p.test",
                                        "bundle_endpoint_url": "http://p"}]}}, "https URL"),
    ({"delegation": {"signing_alg": "HS256"}}, "signing_alg"),
])
def test_http_and_federation_config_errors_name_the_key(toml: dict[str, object],
                                                         says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        parse_config(toml)
