"""Minting X509-SVIDs exactly per the SPIFFE X509-SVID standard. Pure (JWT-SVIDs: jwt_svid.py).

Leaf rules that real clients check (py-spiffe rejects a leaf without them): exactly one URI SAN,
BasicConstraints CA=false and KeyUsage digitalSignature, both critical; EKU server and client.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
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
_SKI_OID = ExtensionOID.SUBJECT_KEY_IDENTIFIER


@dataclass(frozen=True, slots=True)
class _AuthorityParts:
    """What every leaf of one authority repeats: parsed from its certificate once."""

    issuer: x509.Name
    not_before: datetime  # naive UTC, as the certificate builder holds times
    not_after: datetime
    aki: x509.Extension[x509.ExtensionType]
    hash: hashes.SHA256 | hashes.SHA384


@dataclass(frozen=True, slots=True)
class _LeafTemplate:
    """What every leaf of one entry under one authority repeats."""

    subject: x509.Name
    extensions: tuple[x509.Extension[x509.ExtensionType], ...]


# By id() of the authority's certificate, which is held in the value so the id stays its own
# (a CA generation's certificate object lives as long as the generation).
_AUTHORITY_CACHE: dict[int, tuple[x509.Certificate, _AuthorityParts]] = {}
_LEAF_CACHE: dict[tuple[int, str, tuple[str, ...]], tuple[x509.Certificate, _LeafTemplate]] = {}


def _authority_parts(authority: SigningAuthority) -> _AuthorityParts:
    cert = authority.cert
    hit = _AUTHORITY_CACHE.get(id(cert))
    if hit is not None and hit[0] is cert:
        return hit[1]
    if len(_AUTHORITY_CACHE) > 64:
        _AUTHORITY_CACHE.clear()
    aki = _encoded(x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()))
    parts = _AuthorityParts(
        cert.subject, _naive_utc(cert.not_valid_before_utc), _naive_utc(cert.not_valid_after_utc),
        x509.Extension(aki.oid, False, aki), keys.signature_hash(authority.key))
    _AUTHORITY_CACHE[id(cert)] = (cert, parts)
    return parts


def _leaf_template(cert: x509.Certificate, spiffe_id: str,
                   dns_names: tuple[str, ...], aki: x509.Extension[x509.ExtensionType]
                   ) -> _LeafTemplate:
    key = (id(cert), spiffe_id, dns_names)
    hit = _LEAF_CACHE.get(key)
    if hit is not None and hit[0] is cert:
        return hit[1]
    if len(_LEAF_CACHE) >= _CACHE_MAX:
        _LEAF_CACHE.clear()
    subject = _SUBJECT
    if dns_names:
        subject = x509.Name([*_SUBJECT, x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])])
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id)]
    names.extend(x509.DNSName(d) for d in dns_names)
    san = _encoded(x509.SubjectAlternativeName(names))
    template = _LeafTemplate(subject, (
        x509.Extension(_LEAF_CONSTRAINTS.oid, True, _LEAF_CONSTRAINTS),
        x509.Extension(_LEAF_USAGE.oid, True, _LEAF_USAGE),
        x509.Extension(_LEAF_EKU.oid, False, _LEAF_EKU),
        x509.Extension(san.oid, False, san),
        aki,
    ))
    _LEAF_CACHE[key] = (cert, template)
    return template


def _naive_utc(t: datetime) -> datetime:
    """The builder's form of a time (what its setters make of an aware datetime)."""
    offset = t.utcoffset()
    return t.replace(tzinfo=None) - offset if offset else t.replace(tzinfo=None)


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
    template = _leaf_template(authority.cert, str(spiffe_id), dns_names, parts.aki)
    public_key = key.public_key()
    at = _naive_utc(now)
    not_before = max(at - NOT_BEFORE_CUSHION, parts.not_before)
    not_after = min(at + ttl, parts.not_after)
    if not_before >= not_after:
        raise ValueError("the signing authority is not valid at this time")
    # The builder's constructor with every field at once: the chained setters each copy the
    # builder and check what is checked here or is ours already (about a sixth of a mint).
    cert = x509.CertificateBuilder(
        issuer_name=parts.issuer, subject_name=template.subject, public_key=public_key,
        serial_number=x509.random_serial_number(), not_valid_before=not_before,
        not_valid_after=not_after, extensions=[*template.extensions, _ski(public_key)],
    ).sign(authority.key, parts.hash)
    return X509Svid(spiffe_id=str(spiffe_id), cert=cert, chain=authority.chain, key=key)


def _ski(public_key: keys.PublicKey) -> x509.Extension[x509.ExtensionType]:
    """SubjectKeyIdentifier (RFC 5280 4.2.1.2 method 1: SHA-1 of the subjectPublicKey bits),
    encoded here: for an EC key those bits are the uncompressed point."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        point = public_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        digest = hashlib.sha1(point, usedforsecurity=False).digest()  # an identifier, not a MAC
        value = x509.UnrecognizedExtension(_SKI_OID, b"\x04\x14" + digest)
    else:
        value = _encoded(x509.SubjectKeyIdentifier.from_public_key(public_key))
    return x509.Extension(_SKI_OID, False, value)


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
