"""Offline Sigstore verification of one artifact digest against one bundle. No I/O but the
trusted root file, no network, no TUF cache (a writable cache would control trust).

sigstore-python raises many exception types (pydantic errors for a bad root, AttributeError
inside DSSE parsing, ...): anything that is not a normal return is a failure, reported with
the check that failed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

OID_ISSUER_V1 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
OID_ISSUER_V2 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
#: Fulcio v2 extensions we turn into selectors (DER UTF8String values).
OID_SELECTORS = {
    x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.12"): "repository",
    x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.14"): "ref",
    x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.18"): "workflow",
}
DEFAULT_PREDICATE_TYPES = (
    "https://slsa.dev/provenance/v1",
    "https://slsa.dev/provenance/v0.2",
)
INTOTO_STATEMENT_TYPES = ("https://in-toto.io/Statement/v1", "https://in-toto.io/Statement/v0.1")


class CheckFailed(Exception):
    """Verification failed; `check` names which one (for the audit trail and the CLI)."""

    def __init__(self, check: str, detail: str) -> None:
        super().__init__(f"{check}: {detail}")
        self.check = check
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Verified:
    identity: str
    issuer: str
    kind: str  # "message-signature" | "dsse"
    facts: dict[str, str] = field(default_factory=dict)  # repository, ref, workflow
    builder_id: str = ""
    predicate_type: str = ""
    log_index: int = -1
    integrated_time: int = 0


class _AcceptAnyIdentity:
    """A policy that accepts every signer: the identity becomes a selector instead, and the
    registry entry decides which identities may have an SVID."""

    def verify(self, cert: Any) -> None:
        return None


class _IdentityPolicy:
    """Exact identity or a full-match regular expression, and the OIDC issuer (v2 or v1)."""

    def __init__(self, identity: str | None, identity_regexp: str | None, issuer: str) -> None:
        self._identity = identity
        self._regexp = re.compile(identity_regexp) if identity_regexp else None
        self._issuer = issuer

    def verify(self, cert: Any) -> None:
        from sigstore.errors import VerificationError

        crypto_cert = cert if isinstance(cert, x509.Certificate) else cert.to_cryptography()
        sans = san_values(crypto_cert)
        if self._identity is not None and self._identity not in sans:
            raise VerificationError(
                f"certificate identity does not match (got {sans}, expected {self._identity!r})")
        if self._regexp is not None and not any(self._regexp.fullmatch(s) for s in sans):
            raise VerificationError(f"no certificate identity matches /{self._regexp.pattern}/"
                                    f" (got {sans})")
        issuer = oidc_issuer(crypto_cert)
        if issuer != self._issuer:
            raise VerificationError(
                f"OIDC issuer does not match (got {issuer!r}, expected {self._issuer!r})")


def identity_policy(identity: str | None, identity_regexp: str | None, issuer: str) -> Any:
    return _IdentityPolicy(identity, identity_regexp, issuer)


def _der_utf8(value: bytes) -> str:
    """Decode a DER UTF8String; fall back to the raw bytes (the v1 extensions are raw)."""
    if len(value) >= 2 and value[0] == 0x0C:
        n = value[1]
        start = 2
        if n & 0x80:
            count = n & 0x7F
            n = int.from_bytes(value[2:2 + count], "big")
            start = 2 + count
        return value[start:start + n].decode()
    return value.decode()


def san_values(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    values: list[str] = []
    values += san.get_values_for_type(x509.UniformResourceIdentifier)
    values += san.get_values_for_type(x509.RFC822Name)
    return values


def oidc_issuer(cert: x509.Certificate) -> str:
    for oid in (OID_ISSUER_V2, OID_ISSUER_V1):
        try:
            ext = cert.extensions.get_extension_for_oid(oid).value
        except x509.ExtensionNotFound:
            continue
        raw = ext.value if isinstance(ext, x509.UnrecognizedExtension) else b""
        return _der_utf8(raw) if oid == OID_ISSUER_V2 else raw.decode()
    return ""


def cert_facts(cert: x509.Certificate) -> dict[str, str]:
    facts = {}
    for oid, name in OID_SELECTORS.items():
        try:
            ext = cert.extensions.get_extension_for_oid(oid).value
        except x509.ExtensionNotFound:
            continue
        if isinstance(ext, x509.UnrecognizedExtension):
            facts[name] = _der_utf8(ext.value)
    return facts


def load_verifier(trusted_root: Path) -> Any:
    from sigstore.models import TrustedRoot
    from sigstore.verify import Verifier

    try:
        return Verifier(trusted_root=TrustedRoot.from_file(str(trusted_root)))
    except Exception as e:  # OSError, pydantic ValidationError, ...
        raise CheckFailed("trusted-root", f"cannot load {trusted_root}: {e}".splitlines()[0]) \
            from None


def verify(
    verifier: Any,
    bundle_json: bytes,
    sha256_hex: str,
    *,
    policy: Any = None,
    predicate_types: tuple[str, ...] = DEFAULT_PREDICATE_TYPES,
    require_provenance: bool = False,
) -> Verified:
    from sigstore.errors import VerificationError
    from sigstore.hashes import Hashed
    from sigstore.models import Bundle
    from sigstore_models.common.v1 import HashAlgorithm

    policy = policy or _AcceptAnyIdentity()
    try:
        bundle = Bundle.from_json(bundle_json)
    except Exception as e:
        raise CheckFailed("bundle", f"not a valid Sigstore bundle: {e}".splitlines()[0]) from None
    is_dsse = b'"dsseEnvelope"' in bundle_json
    if require_provenance and not is_dsse:
        raise CheckFailed("provenance", "bundle holds a plain signature, not an attestation")
    builder_id = predicate_type = ""
    try:
        if is_dsse:
            ptype, payload = verifier.verify_dsse(bundle, policy)
            builder_id, predicate_type = _check_statement(ptype, payload, sha256_hex,
                                                          predicate_types)
        else:
            digest = Hashed(algorithm=HashAlgorithm.SHA2_256, digest=bytes.fromhex(sha256_hex))
            verifier.verify_artifact(digest, bundle, policy)
    except CheckFailed:
        raise
    except VerificationError as e:
        raise CheckFailed(_classify(str(e)), str(e).splitlines()[0]) from None
    except Exception as e:
        raise CheckFailed("bundle", f"{type(e).__name__}: {e}".splitlines()[0]) from None
    cert = bundle.signing_certificate
    # NOTE: sigstore exposes the Rekor entry's fields only on its inner model.
    entry = getattr(bundle.log_entry, "_inner", bundle.log_entry)
    sans = san_values(cert)
    return Verified(
        identity=sans[0] if sans else "",
        issuer=oidc_issuer(cert),
        kind="dsse" if is_dsse else "message-signature",
        facts=cert_facts(cert),
        builder_id=builder_id,
        predicate_type=predicate_type,
        log_index=int(getattr(entry, "log_index", -1)),
        integrated_time=int(getattr(entry, "integrated_time", 0)),
    )


def _classify(message: str) -> str:
    text = message.lower()
    if "digest mismatch" in text or "signature is invalid" in text:
        return "artifact-digest"
    if "identity" in text or "san" in text:
        return "identity"
    if "issuer" in text:
        return "issuer"
    if "certificate" in text or "chain" in text:
        return "certificate-chain"
    if "log" in text or "inclusion" in text or "checkpoint" in text:
        return "transparency-log"
    return "signature"


def _check_statement(payload_type: str, payload: bytes, sha256_hex: str,
                     predicate_types: tuple[str, ...]) -> tuple[str, str]:
    if payload_type != "application/vnd.in-toto+json":
        raise CheckFailed("attestation", f"payload type {payload_type!r} is not in-toto")
    try:
        statement = json.loads(payload)
    except ValueError:
        raise CheckFailed("attestation", "in-toto statement is not JSON") from None
    if statement.get("_type") not in INTOTO_STATEMENT_TYPES:
        raise CheckFailed("attestation", f"unknown statement type {statement.get('_type')!r}")
    digests = [s.get("digest", {}).get("sha256", "") for s in statement.get("subject", [])]
    if sha256_hex not in digests:
        raise CheckFailed("attestation-subject",
                          f"no subject has the artifact's sha256 {sha256_hex[:16]}...")
    ptype = str(statement.get("predicateType", ""))
    if ptype not in predicate_types:
        raise CheckFailed("predicate-type", f"predicate type {ptype!r} is not accepted")
    predicate = statement.get("predicate", {}) or {}
    builder = (predicate.get("runDetails", {}).get("builder", {}).get("id")
               or predicate.get("builder", {}).get("id") or "")
    return str(builder), ptype


