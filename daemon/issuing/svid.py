"""Minting X509-SVIDs exactly per the SPIFFE X509-SVID standard. Pure (JWT-SVIDs: jwt_svid.py).

Leaf rules that real clients check (py-spiffe rejects a leaf without them): exactly one URI SAN,
BasicConstraints CA=false and KeyUsage digitalSignature, both critical; EKU server and client.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from ensign.daemon import keys
from ensign.daemon.spiffe_id import SpiffeId

#: Backdate notBefore a little so peers with a slightly slow clock accept a fresh SVID (SPIRE: 10s).
NOT_BEFORE_CUSHION = timedelta(seconds=10)


@dataclass(frozen=True, slots=True)
class SigningAuthority:
    """What minting needs from a CA generation: its certificate, keys and JWT key id."""

    cert: x509.Certificate
    key: keys.PrivateKey
    chain: tuple[x509.Certificate, ...]  # intermediates to send after the leaf (upstream CA)
    jwt_key: keys.PrivateKey
    jwt_kid: str


@dataclass(frozen=True, slots=True)
class X509Svid:
    spiffe_id: str
    cert: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    key: keys.PrivateKey

    @property
    def not_after(self) -> datetime:
        return self.cert.not_valid_after_utc

    @property
    def not_before(self) -> datetime:
        return self.cert.not_valid_before_utc

    def chain_der(self) -> bytes:
        """Leaf first, then intermediates, concatenated DER (Workload API `x509_svid`)."""
        return b"".join(c.public_bytes(Encoding.DER) for c in (self.cert, *self.chain))

    def chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(Encoding.PEM) for c in (self.cert, *self.chain))


def _encoded(ext: x509.ExtensionType) -> x509.UnrecognizedExtension:
    """An extension with its DER computed once. The certificate is byte-for-byte the same; the
    encoder copies the bytes instead of calling back into Python for every field of every mint
    (about a fifth of a mint's time)."""
    return x509.UnrecognizedExtension(ext.oid, ext.public_bytes())


# The leaf extensions every X509-SVID carries, encoded once.
_LEAF_USAGE_VALUE = x509.KeyUsage(
    digital_signature=True, content_commitment=False, key_encipherment=True,
    data_encipherment=False, key_agreement=True, key_cert_sign=False,
    crl_sign=False, encipher_only=False, decipher_only=False,
)
_LEAF_CONSTRAINTS = _encoded(x509.BasicConstraints(ca=False, path_length=None))
_LEAF_USAGE = _encoded(_LEAF_USAGE_VALUE)
_LEAF_EKU = _encoded(x509.ExtendedKeyUsage(
    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]))
_SUBJECT = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Ensign")])
_CACHE_MAX = 4096


@dataclass(frozen=True, slots=True)
class _AuthorityParts:
    """What every leaf of one authority repeats: parsed from its certificate once."""
    issuer: x509.Name
    not_before: datetime
    not_after: datetime
    aki: x509.UnrecognizedExtension


_AUTHORITY_CACHE: dict[int, _AuthorityParts] = {}
_SAN_CACHE: dict[tuple[str, tuple[str, ...]], x509.UnrecognizedExtension] = {}
# What every leaf of one entry under one authority repeats, as a builder (builders are
# immutable: each step returns a new one). Saves most of a mint's Python work.
_BUILDER_CACHE: dict[tuple[int, str, tuple[str, ...]], x509.CertificateBuilder] = {}


def _authority_parts(authority: SigningAuthority) -> _AuthorityParts:
    key = authority.cert.serial_number  # random 159 bits: one per authority
    hit = _AUTHORITY_CACHE.get(key)
    if hit is None:
        if len(_AUTHORITY_CACHE) > 64:
            _AUTHORITY_CACHE.clear()
        cert = authority.cert
        hit = _AUTHORITY_CACHE[key] = _AuthorityParts(
            cert.subject, cert.not_valid_before_utc, cert.not_valid_after_utc,
            _encoded(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                authority.key.public_key())))
    return hit


def _san(spiffe_id: str, dns_names: tuple[str, ...]) -> x509.UnrecognizedExtension:
    """An entry's SAN is the same on every leaf it gets."""
    key = (spiffe_id, dns_names)
    hit = _SAN_CACHE.get(key)
    if hit is None:
        if len(_SAN_CACHE) >= _CACHE_MAX:
            _SAN_CACHE.clear()
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id)]
        names.extend(x509.DNSName(d) for d in dns_names)
        hit = _SAN_CACHE[key] = _encoded(x509.SubjectAlternativeName(names))
    return hit


def mint_x509_svid(
    *,
    authority: SigningAuthority,
    spiffe_id: SpiffeId,
    key: keys.PrivateKey,
    ttl: timedelta,
    now: datetime,
    dns_names: tuple[str, ...] = (),
) -> X509Svid:
    if not spiffe_id.is_workload:
        raise ValueError("an X509-SVID needs a SPIFFE ID with a path")
    parts = _authority_parts(authority)
    public_key = key.public_key()
    builder = (
        _leaf_builder(authority, parts, str(spiffe_id), dns_names)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(now - NOT_BEFORE_CUSHION, parts.not_before))
        .not_valid_after(min(now + ttl, parts.not_after))
        .add_extension(_ski(public_key), critical=False)
    )
    cert = builder.sign(authority.key, keys.signature_hash(authority.key))
    return X509Svid(spiffe_id=str(spiffe_id), cert=cert, chain=authority.chain, key=key)


def _leaf_builder(authority: SigningAuthority, parts: _AuthorityParts, spiffe_id: str,
                  dns_names: tuple[str, ...]) -> x509.CertificateBuilder:
    key = (authority.cert.serial_number, spiffe_id, dns_names)
    hit = _BUILDER_CACHE.get(key)
    if hit is None:
        if len(_BUILDER_CACHE) >= _CACHE_MAX:
            _BUILDER_CACHE.clear()
        subject = _SUBJECT
        if dns_names:
            subject = x509.Name([*_SUBJECT,
                                 x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])])
        hit = _BUILDER_CACHE[key] = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(parts.issuer)
            .add_extension(_LEAF_CONSTRAINTS, critical=True)
            .add_extension(_LEAF_USAGE, critical=True)
            .add_extension(_LEAF_EKU, critical=False)
            .add_extension(_san(spiffe_id, dns_names), critical=False)
            .add_extension(parts.aki, critical=False)
        )
    return hit


def _ski(public_key: keys.PublicKey) -> x509.UnrecognizedExtension:
    """SubjectKeyIdentifier (RFC 5280 4.2.1.2 method 1: SHA-1 of the subjectPublicKey bits),
    encoded here: for an EC key those bits are the uncompressed point."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        point = public_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        digest = hashlib.sha1(point, usedforsecurity=False).digest()  # an identifier, not a MAC
        return x509.UnrecognizedExtension(ExtensionOID.SUBJECT_KEY_IDENTIFIER,
                                          b"\x04\x14" + digest)
    return _encoded(x509.SubjectKeyIdentifier.from_public_key(public_key))


def split_der(data: bytes) -> list[bytes]:
    """Split concatenated DER certificates (the Workload API's chain and bundle encoding)."""
    out = []
    i = 0
    while i < len(data):
        if data[i] != 0x30 or i + 2 > len(data):
            raise ValueError("not a DER certificate sequence")
        first = data[i + 1]
        if first < 0x80:
            header, length = 2, first
        else:
            n = first & 0x7F
            if n == 0 or n > 4 or i + 2 + n > len(data):
                raise ValueError("bad DER length")
            header, length = 2 + n, int.from_bytes(data[i + 2 : i + 2 + n], "big")
        end = i + header + length
        if end > len(data):
            raise ValueError("truncated DER certificate")
        out.append(data[i:end])
        i = end
    return out


def load_der_chain(data: bytes) -> list[x509.Certificate]:
    return [x509.load_der_x509_certificate(d) for d in split_der(data)]
