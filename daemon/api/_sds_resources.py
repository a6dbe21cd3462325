"""What an SDS request names, as Envoy `Secret`s built from the caller's identities. Pure.

Names, as SPIRE's agent serves them: one of the caller's SPIFFE IDs, or `default` (its first
identity) → a `tls_certificate`; `ROOTCA` or a trust domain (`example.org` or
`spiffe://example.org`) → a `validation_context` with that bundle; `ALL` → a validation context
whose SPIFFE certificate validator holds every trust domain's bundle. Bundles go only to callers
holding an identity, as on the Workload API.

A certificate name (`default` or a workload SPIFFE ID) that the caller does not hold gets a
withdrawn placeholder: a throwaway self-signed certificate without a SPIFFE ID that no trust
domain accepts. Envoy ignores the absence of a secret (and refuses an empty one), so this is the
only way to make it stop presenting a certificate whose identity was suspended or deleted: its
new connections then fail. Every caller gets the same placeholder, so it says nothing about
whom a name belongs to. Any other name gets nothing.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from envoy.config.core.v3 import base_pb2, extension_pb2
from envoy.extensions.transport_sockets.tls.v3 import (
    common_pb2,
    secret_pb2,
    tls_spiffe_validator_config_pb2,
)
from google.protobuf import any_pb2

from ensign.daemon.errors import EnsignError, InvalidRequest
from ensign.daemon.issuing import X509Svid
from ensign.daemon.keys import to_pem
from ensign.daemon.registry import Entry
from ensign.daemon.spiffe_id import SpiffeId

SECRET_TYPE_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
SPIFFE_VALIDATOR = "envoy.tls.cert_validator.spiffe"
DEFAULT = "default"
ROOTCA = "ROOTCA"
ALL = "ALL"
MAX_NAMES = 64
MAX_NAME_BYTES = 2048  # the longest SPIFFE ID a peer must support

#: entry → its current X.509-SVID (the cache, with the entry's TTL caps)
SvidFor = Callable[[Entry], X509Svid]


@dataclass
class Composed:
    """The resources for one request, and what they disclose."""

    resources: list[any_pb2.Any] = field(default_factory=list)
    served: list[tuple[Entry, X509Svid]] = field(default_factory=list)  # to audit
    digest: str = ""  # of the names and public parts: changes when the content does


def check_names(type_url: str, names: Sequence[str]) -> tuple[str, ...]:
    """The requested names, bounded; INVALID_ARGUMENT for a type this service does not serve."""
    if type_url and type_url != SECRET_TYPE_URL:
        raise InvalidRequest(f"unsupported type_url {type_url[:200]!r}: this service serves "
                             f"{SECRET_TYPE_URL}")
    if len(names) > MAX_NAMES:
        raise InvalidRequest(f"at most {MAX_NAMES} resource names per request, got {len(names)}")
    for n in names:
        if len(n.encode()) > MAX_NAME_BYTES:
            raise InvalidRequest(f"resource names are limited to {MAX_NAME_BYTES} bytes")
    return tuple(dict.fromkeys(names))  # duplicates once, first order kept


def compose(names: Sequence[str], entries: Sequence[Entry], svid_for: SvidFor,
            own_td: str, bundles: Mapping[str, bytes]) -> Composed:
    """Secrets for `names` (all of the caller's when empty, the SotW wildcard).

    `bundles` maps each trust domain name to its PEM bundle, `own_td` first among them; it
    holds only this node's trust domain today, federated ones slot in beside it. A caller
    without identities (`entries` empty) gets placeholders for certificate names, nothing else.
    """
    if not names:
        names = [*dict.fromkeys(e.spiffe_id for e in entries), f"spiffe://{own_td}"]
    by_id: dict[str, Entry] = {}
    for e in entries:
        by_id.setdefault(e.spiffe_id, e)
    out = Composed()
    h = hashlib.sha256()
    for name in names:
        secret: secret_pb2.Secret | None = None
        if (name == DEFAULT and entries) or name in by_id:
            entry = entries[0] if name == DEFAULT else by_id[name]
            svid = svid_for(entry)
            out.served.append((entry, svid))
            secret = _certificate(name, svid)
            h.update(b"c" + name.encode() + b"\0" + svid.chain_der())
        elif is_certificate_name(name):
            secret = _withdrawn(name)
            h.update(b"w" + name.encode())
        elif not entries:
            pass
        elif name == ALL:
            secret = _all_bundles(name, bundles)
            h.update(b"a" + name.encode() + b"\0" + b"".join(bundles.values()))
        else:
            td = own_td if name == ROOTCA else name.removeprefix("spiffe://")
            if td in bundles:
                secret = _validation_context(name, bundles[td])
                h.update(b"v" + name.encode() + b"\0" + bundles[td])
        if secret is not None:
            packed = any_pb2.Any()
            packed.Pack(secret)
            out.resources.append(packed)
    out.digest = h.hexdigest()[:16] if out.resources else ""
    return out


def is_certificate_name(name: str) -> bool:
    """`default`, or a SPIFFE ID with a path (a workload's, not a trust domain's)."""
    if name == DEFAULT:
        return True
    try:
        return SpiffeId.parse(name).is_workload
    except EnsignError:
        return False


@functools.cache
def _withdrawn_pem() -> tuple[bytes, bytes]:
    """One per daemon: self-signed, expired, no SAN, not a CA. Presenting it proves nothing."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ensign: identity withdrawn")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(datetime(2000, 1, 1, tzinfo=UTC))
            .not_valid_after(datetime(2000, 1, 2, tzinfo=UTC))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(Encoding.PEM), to_pem(key)


def _withdrawn(name: str) -> Any:
    chain, key = _withdrawn_pem()
    return secret_pb2.Secret(name=name, tls_certificate=common_pb2.TlsCertificate(
        certificate_chain=base_pb2.DataSource(inline_bytes=chain),
        private_key=base_pb2.DataSource(inline_bytes=key)))


#: id(svid) -> (svid, chain PEM, key PEM): each SVID encoded once, however many streams get it
_PEMS: dict[int, tuple[X509Svid, bytes, bytes]] = {}
MAX_PEMS = 1024


def _pems(svid: X509Svid) -> tuple[bytes, bytes]:
    hit = _PEMS.get(id(svid))
    if hit is not None and hit[0] is svid:
        return hit[1], hit[2]
    if len(_PEMS) >= MAX_PEMS:
        _PEMS.clear()
    chain, key = svid.chain_pem(), to_pem(svid.key)
    _PEMS[id(svid)] = (svid, chain, key)  # held, so the id stays its own
    return chain, key


def _certificate(name: str, svid: X509Svid) -> Any:
    chain, key = _pems(svid)
    return secret_pb2.Secret(name=name, tls_certificate=common_pb2.TlsCertificate(
        certificate_chain=base_pb2.DataSource(inline_bytes=chain),
        private_key=base_pb2.DataSource(inline_bytes=key)))


def _validation_context(name: str, pem: bytes) -> Any:
    return secret_pb2.Secret(name=name, validation_context=common_pb2.CertificateValidationContext(
        trusted_ca=base_pb2.DataSource(inline_bytes=pem)))


def _all_bundles(name: str, bundles: Mapping[str, bytes]) -> Any:
    spiffe = tls_spiffe_validator_config_pb2.SPIFFECertValidatorConfig(trust_domains=[
        tls_spiffe_validator_config_pb2.SPIFFECertValidatorConfig.TrustDomain(
            name=td, trust_bundle=base_pb2.DataSource(inline_bytes=pem))
        for td, pem in bundles.items()])
    config = extension_pb2.TypedExtensionConfig(name=SPIFFE_VALIDATOR)
    config.typed_config.Pack(spiffe)
    return secret_pb2.Secret(name=name, validation_context=common_pb2.CertificateValidationContext(
        custom_validator_config=config))
