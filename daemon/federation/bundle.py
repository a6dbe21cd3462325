"""SPIFFE bundles (SPIFFE_Trust_Domain_and_Bundle.md §4) as served and fetched. Pure: no I/O.

A bundle is a JWK Set: X.509 authorities with `use: x509-svid` and one DER certificate in `x5c`
(no `kid`), JWT authorities with `use: jwt-svid` and a `kid`, plus `spiffe_sequence` and
`spiffe_refresh_hint`. Parsing is strict about what it uses and ignores what the standard says
to ignore (unknown `kty` or `use`); a document that is not a bundle, or holds no X.509 authority,
is refused so that a broken endpoint never replaces a good bundle.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from ensign.daemon import keys

MAX_BUNDLE_BYTES = 1 << 20
MAX_KEYS = 256
X509_USE = "x509-svid"
JWT_USE = "jwt-svid"


class BundleError(ValueError):
    """Not a usable SPIFFE bundle; says which rule it breaks."""


@dataclass(frozen=True, slots=True)
class TrustBundle:
    trust_domain: str
    x509_authorities: tuple[x509.Certificate, ...]
    jwt_authorities: Mapping[str, keys.PublicKey] = field(default_factory=dict)
    sequence: int | None = None
    refresh_hint: int | None = None  # seconds

    def x509_der(self) -> bytes:
        """The authorities as the Workload API carries them: DER certificates, concatenated."""
        return b"".join(c.public_bytes(Encoding.DER) for c in self.x509_authorities)

    def x509_pem(self) -> bytes:
        return b"".join(c.public_bytes(Encoding.PEM) for c in self.x509_authorities)

    def jwks(self) -> bytes:
        """The JWT authorities as the Workload API carries them: a standard JWKS with `kid`."""
        return json.dumps({"keys": [{**_public_jwk(k), "kid": kid}
                                    for kid, k in sorted(self.jwt_authorities.items())]},
                          separators=(",", ":"), sort_keys=True).encode()


def _public_jwk(key: keys.PublicKey) -> dict[str, Any]:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return dict(json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key)))
    return dict(json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key)))


def encode(x509_authorities: Iterable[x509.Certificate], jwt_authorities: Mapping[str, Any],
           *, sequence: int, refresh_hint: int) -> bytes:
    """This trust domain's bundle in the SPIFFE format (the https_web bundle endpoint)."""
    out: list[dict[str, Any]] = [
        {**_public_jwk(_checked_key(c.public_key())), "use": X509_USE,
         "x5c": [base64.b64encode(c.public_bytes(Encoding.DER)).decode()]}
        for c in x509_authorities]
    out += [{**_public_jwk(k), "kid": kid, "use": JWT_USE}
            for kid, k in sorted(jwt_authorities.items())]
    return json.dumps({"keys": out, "spiffe_sequence": sequence,
                       "spiffe_refresh_hint": refresh_hint}, separators=(",", ":"),
                      sort_keys=True).encode()


def _checked_key(key: object) -> keys.PublicKey:
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise BundleError(f"unsupported authority key {type(key).__name__}")
    return key


def parse(trust_domain: str, data: bytes) -> TrustBundle:
    """A SPIFFE bundle document of `trust_domain`, or BundleError."""
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleError(f"bundle larger than {MAX_BUNDLE_BYTES} bytes")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise BundleError(f"not JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise BundleError("not a JWK Set (no keys array)")
    if len(doc["keys"]) > MAX_KEYS:
        raise BundleError(f"more than {MAX_KEYS} keys")
    sequence = _optional_int(doc, "spiffe_sequence", minimum=0)
    hint = _optional_int(doc, "spiffe_refresh_hint", minimum=1)
    certs: list[x509.Certificate] = []
    jwt_keys: dict[str, keys.PublicKey] = {}
    for i, jwk in enumerate(doc["keys"]):
        if not isinstance(jwk, dict) or not isinstance(jwk.get("kty"), str):
            raise BundleError(f"key {i} is not a JWK (no kty)")
        if jwk["kty"] not in ("EC", "RSA"):
            continue  # unknown kty: ignore that key (bundle spec §4.2)
        use = jwk.get("use")
        if use == X509_USE:
            certs.append(_x509_authority(i, jwk))
        elif use == JWT_USE:
            kid, key = _jwt_authority(i, jwk)
            if kid in jwt_keys:
                raise BundleError(f"key id {kid!r} appears twice")
            jwt_keys[kid] = key
    if not certs:
        raise BundleError("no X.509 authority in the bundle")
    return TrustBundle(trust_domain, tuple(certs), jwt_keys, sequence, hint)


def parse_pem(trust_domain: str, data: bytes) -> TrustBundle:
    """X.509 authorities from PEM (a bootstrap bundle file), or BundleError."""
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise BundleError(f"not PEM certificates: {e}") from None
    return TrustBundle(trust_domain, tuple(certs))


def parse_any(trust_domain: str, data: bytes) -> TrustBundle:
    """A SPIFFE bundle document or PEM certificates (`bundle_file`)."""
    if data.lstrip().startswith(b"{"):
        return parse(trust_domain, data)
    return parse_pem(trust_domain, data)


def _optional_int(doc: dict[str, Any], name: str, *, minimum: int) -> int | None:
    value = doc.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise BundleError(f"{name} must be an integer of at least {minimum}")
    return value


def _x509_authority(i: int, jwk: dict[str, Any]) -> x509.Certificate:
    x5c = jwk.get("x5c")
    if not isinstance(x5c, list) or len(x5c) != 1 or not isinstance(x5c[0], str):
        raise BundleError(f"key {i} (x509-svid) must hold exactly one certificate in x5c")
    try:
        cert = x509.load_der_x509_certificate(base64.b64decode(x5c[0], validate=True))
    except (ValueError, binascii.Error) as e:
        raise BundleError(f"key {i} (x509-svid): not a certificate: {e}") from None
    _checked_key(cert.public_key())
    return cert


def _jwt_authority(i: int, jwk: dict[str, Any]) -> tuple[str, keys.PublicKey]:
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid:
        raise BundleError(f"key {i} (jwt-svid) has no kid")
    try:
        key = jwt.PyJWK.from_dict({k: v for k, v in jwk.items() if k != "use"}).key
    except (jwt.PyJWTError, ValueError, TypeError, KeyError) as e:
        raise BundleError(f"key {i} (jwt-svid, kid {kid!r}): {e}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise BundleError(f"key {i} (jwt-svid, kid {kid!r}) is not a public EC or RSA key")
    return kid, key
