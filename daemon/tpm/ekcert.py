"""EK certificates: does this TPM's endorsement key come from a manufacturer we trust? Pure.

The TPM manufacturer certifies each EK's public key (TCG EK Credential Profile). The chain is
checked signature by signature with `verify_directly_issued_by` rather than with a TLS path
validator: EK certificates carry a critical SubjectAltName of TPM directory attributes and no
subject, which general-purpose web-PKI validators refuse.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ensign.daemon.errors import ConfigError
from ensign.daemon.tpm import structs as ts
from ensign.daemon.tpm.structs import EvidenceInvalid

MAX_DEPTH = 6


def load_certificates(paths: Iterable[Path]) -> list[x509.Certificate]:
    """Certificates from PEM (any number per file) or DER files."""
    out: list[x509.Certificate] = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ConfigError(f"{path}: cannot read certificate file: {e.strerror}") from None
        try:
            out.extend(x509.load_pem_x509_certificates(data) if b"-----BEGIN" in data
                       else [x509.load_der_x509_certificate(data)])
        except ValueError as e:
            raise ConfigError(f"{path}: not a PEM or DER certificate: {e}") from None
    return out


def _spki(key: Any) -> bytes:
    der: bytes = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return der


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return cert.version == x509.Version.v1  # old roots without extensions


def verify_ek_certificate(
    ek_cert_der: bytes,
    ek_public: bytes,
    anchors: Sequence[x509.Certificate],
    intermediates: Sequence[x509.Certificate] = (),
    now: datetime | None = None,
) -> list[x509.Certificate]:
    """Check that the EK certificate names this EK and chains to one of `anchors`.

    Returns the chain, EK certificate first and the anchor last. Raises EvidenceInvalid.
    """
    now = now or datetime.now(UTC)
    try:
        cert = x509.load_der_x509_certificate(ek_cert_der)
    except ValueError as e:
        raise EvidenceInvalid(f"EK certificate is not valid DER: {e}") from None
    # (1) the certificate is about this very key, not some other TPM's
    if _spki(cert.public_key()) != _spki(ts.parse_public(ek_public).key):
        raise EvidenceInvalid("EK certificate names another key than the TPM's EK")
    # (2) signature by signature up to a trusted anchor, each link a CA within its validity
    chain = [cert]
    pool = [c for c in intermediates if _is_ca(c)] + [c for c in anchors if _is_ca(c)]
    current = cert
    for _ in range(MAX_DEPTH):
        if not current.not_valid_before_utc <= now <= current.not_valid_after_utc:
            raise EvidenceInvalid(f"certificate {current.subject.rfc4514_string() or '(EK)'} "
                                  f"is not valid at {now.isoformat()}")
        issuer = next((c for c in anchors if _issued_by(current, c)), None)
        if issuer is not None:
            chain.append(issuer)
            return chain
        issuer = next((c for c in pool if c not in chain and _issued_by(current, c)), None)
        if issuer is None:
            raise EvidenceInvalid(
                f"EK certificate does not chain to a trusted manufacturer CA (no trusted "
                f"issuer for {current.issuer.rfc4514_string()})")
        chain.append(issuer)
        current = issuer
    raise EvidenceInvalid("EK certificate chain is too long")

