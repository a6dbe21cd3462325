"""Offline Sigstore verification of one artifact digest against one bundle. No I/O but the
trusted root file, no network, no TUF cache (a writable cache would control trust).

Built on sigstore-python: certificate bundles go through its Verifier (Rekor v1 and v2 entries,
signed entry timestamps, RFC 3161 timestamps, SCTs, checkpoints). Three things it does not do
are added here, each held to the same checks: DSSE envelopes logged as dsse/0.0.2 (Rekor v2),
hashedrekord/0.0.1 or intoto/0.0.2 (its own signing-certificate checks first, then the envelope
signature and the entry body, `_sigstore_body`); managed-key bundles (`_sigstore_key`); and the
in-toto statement inside an envelope. sigstore-python raises many exception types (pydantic
errors for a bad root, AttributeError inside DSSE parsing, ...): anything that is not a normal
return is a failure, reported with the check that failed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from ._sigstore_body import (
    INTOTO_STATEMENT_TYPES,
    CheckFailed,
    check_body,
    check_statement,
    load_public_key,
    pae,
    signer_der,
    verify_signature,
)
from ._sigstore_key import signed_times, verify_with_key
from .sigstore_config import DEFAULT_PREDICATE_TYPES

__all__ = [
    "DEFAULT_PREDICATE_TYPES", "INTOTO_STATEMENT_TYPES", "MAX_BUNDLE_BYTES", "CheckFailed",
    "Trust", "Verified", "identity_policy", "load_public_key", "load_verifier", "verify",
]

OID_ISSUER_V1 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
OID_ISSUER_V2 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
#: Fulcio v2 extensions we turn into selectors (DER UTF8String values).
OID_SELECTORS = {
    x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.12"): "repository",
    x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.14"): "ref",
    x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.18"): "workflow",
}
#: Real bundles are a few KiB; a larger file is refused before any parsing.
MAX_BUNDLE_BYTES = 4 << 20
#: DSSE entry kinds sigstore-python checks itself; the others are checked in `_sigstore_body`.
_LIBRARY_DSSE_ENTRIES = {("hashedrekord", "0.0.2"), ("dsse", "0.0.1")}
_CLIENT_TRUST_CONFIG = "application/vnd.dev.sigstore.clienttrustconfig"


@dataclass(frozen=True, slots=True)
class Verified:
    identity: str  # certificate SAN; "" for a key bundle
    issuer: str
    kind: str  # "message-signature" | "dsse"
    facts: dict[str, str] = field(default_factory=dict)  # repository, ref, workflow
    builder_id: str = ""
    predicate_type: str = ""
    log_index: int = -1
    log_entry: str = ""  # kind/version, e.g. "hashedrekord/0.0.2" (Rekor v2)
    signed_time: datetime | None = None  # the earliest verified time
    time_source: str = ""  # "timestamp-authority" | "transparency-log" | ""
    key_id: str = ""  # sha256 of the key's SubjectPublicKeyInfo, for key bundles


class Trust:
    """A trusted root (or the root inside a ClientTrustConfig), and the sigstore Verifier
    for certificate bundles, made on first use: a root with only log keys (for key bundles)
    has no certificate authority to build one from."""

    def __init__(self, root: Any, source: Path) -> None:
        self.root = root
        self.source = source
        self._verifier: Any = None

    def verifier(self) -> Any:
        if self._verifier is None:
            from sigstore.verify import Verifier

            try:
                self._verifier = Verifier(trusted_root=self.root)
            except Exception as e:
                raise CheckFailed("trusted-root", f"{self.source} cannot verify certificate "
                                  f"bundles: {e}") from None
        return self._verifier


def load_verifier(trusted_root: Path, *, certificates: bool = True) -> Trust:
    """Read a TrustedRoot or a ClientTrustConfig (its `trustedRoot` is used). With
    `certificates`, the root must be able to verify certificate bundles, and a root that
    cannot fails here rather than at every verification (the attestor reports it at once)."""
    from sigstore.models import ClientTrustConfig, TrustedRoot
    from sigstore_models.trustroot.v1 import TrustedRoot as RawRoot

    try:
        text = trusted_root.read_text()
        doc = json.loads(text)
        if isinstance(doc, dict) and str(doc.get("mediaType", "")).startswith(
                _CLIENT_TRUST_CONFIG):
            root = ClientTrustConfig.from_json(text).trusted_root
        else:
            root = TrustedRoot(RawRoot.from_json(text))
    except Exception as e:  # OSError, ValueError, pydantic ValidationError, ...
        raise CheckFailed("trusted-root", f"cannot load {trusted_root}: {e}") from None
    trust = Trust(root, trusted_root)
    if certificates:
        trust.verifier()
    return trust


class _AcceptAnyIdentity:
    """A policy that accepts every signer: the identity becomes a selector instead, and the
    registry entry decides which identities may have an SVID."""

    def verify(self, cert: Any) -> None:
        return None


class _IdentityPolicy:
    """The signer's identity (exact, or a regular expression found anywhere in a SAN, as
    cosign's --certificate-identity-regexp) and OIDC issuer (v2 extension, else v1; exact or
    a regular expression, likewise)."""

    def __init__(self, identity: str | None, identity_regexp: str | None,
                 issuer: str | None, issuer_regexp: str | None) -> None:
        self._identity = identity
        self._regexp = re.compile(identity_regexp) if identity_regexp is not None else None
        self._issuer = issuer
        self._issuer_regexp = re.compile(issuer_regexp) if issuer_regexp is not None else None

    def verify(self, cert: Any) -> None:
        from sigstore.errors import VerificationError

        crypto_cert = cert if isinstance(cert, x509.Certificate) else cert.to_cryptography()
        sans = san_values(crypto_cert)
        if self._identity is not None and self._identity not in sans:
            raise VerificationError(
                f"certificate identity does not match (got {sans}, expected {self._identity!r})")
        if self._regexp is not None and not any(self._regexp.search(s) for s in sans):
            raise VerificationError(f"no certificate identity matches /{self._regexp.pattern}/"
                                    f" (got {sans})")
        issuer = oidc_issuer(crypto_cert)
        if self._issuer is not None and issuer != self._issuer:
            raise VerificationError(
                f"OIDC issuer does not match (got {issuer!r}, expected {self._issuer!r})")
        if self._issuer_regexp is not None and not self._issuer_regexp.search(issuer):
            raise VerificationError(f"OIDC issuer {issuer!r} does not match "
                                    f"/{self._issuer_regexp.pattern}/")


def identity_policy(identity: str | None, identity_regexp: str | None, issuer: str | None,
                    issuer_regexp: str | None = None) -> Any:
    """Raises re.error for an invalid pattern."""
    return _IdentityPolicy(identity, identity_regexp, issuer, issuer_regexp)


def _der_utf8(value: bytes) -> str:
    """Decode a DER UTF8String; fall back to the raw bytes (the v1 extensions are raw). Never
    raises: the certificate is verified, but its extension values are the signer's choice."""
    if len(value) >= 2 and value[0] == 0x0C:
        n = value[1]
        start = 2
        if n & 0x80:
            count = n & 0x7F
            n = int.from_bytes(value[2:2 + count], "big")
            start = 2 + count
        value = value[start:start + n]
    return value.decode(errors="replace")


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
        return _der_utf8(raw) if oid == OID_ISSUER_V2 else raw.decode(errors="replace")
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


def verify(
    verifier: Trust,
    bundle_json: bytes,
    sha256_hex: str,
    *,
    policy: Any = None,
    key: PublicKeyTypes | None = None,
    predicate_types: tuple[str, ...] | None = DEFAULT_PREDICATE_TYPES,
    require_provenance: bool = False,
) -> Verified:
    """Verify `bundle_json` for the artifact whose SHA-256 is `sha256_hex`: signed by a
    certificate accepted by `policy` (default: any signer, reported), or by `key`.
    `predicate_types` None accepts any in-toto predicate."""
    if len(bundle_json) > MAX_BUNDLE_BYTES:
        raise CheckFailed("bundle", f"larger than {MAX_BUNDLE_BYTES} bytes")
    if not re.fullmatch(r"[0-9a-f]{64}", sha256_hex):
        raise CheckFailed("artifact-digest", "not a SHA-256 hex digest")
    if key is not None:
        found = verify_with_key(verifier.root, key, bundle_json, sha256_hex)
        builder_id = predicate_type = ""
        if require_provenance and found.kind != "dsse":
            raise CheckFailed("provenance", "bundle holds a plain signature, not an attestation")
        if found.kind == "dsse":
            builder_id, predicate_type = check_statement(found.payload_type, found.payload,
                                                         sha256_hex, predicate_types)
        first = min(found.times, default=None)
        return Verified(identity="", issuer="", kind=found.kind, builder_id=builder_id,
                        predicate_type=predicate_type, log_index=found.log_index,
                        log_entry=found.log_entry, signed_time=first[0] if first else None,
                        time_source=first[1] if first else "",
                        key_id=_key_id(key))
    return _verify_certificate(verifier, bundle_json, sha256_hex, policy or _AcceptAnyIdentity(),
                               predicate_types, require_provenance)


def _key_id(key: PublicKeyTypes) -> str:
    import hashlib

    return hashlib.sha256(signer_der(key)).hexdigest()


def _verify_certificate(trust: Trust, bundle_json: bytes, sha256_hex: str, policy: Any,
                        predicate_types: tuple[str, ...] | None,
                        require_provenance: bool) -> Verified:
    from sigstore.errors import VerificationError
    from sigstore.hashes import Hashed
    from sigstore.models import Bundle
    from sigstore_models.common.v1 import HashAlgorithm

    try:
        bundle = Bundle.from_json(bundle_json)
    except Exception as e:
        if b'"publicKey"' in bundle_json:
            raise CheckFailed("bundle", "the bundle is signed with a key, not a certificate: "
                              "verify it with --key") from None
        raise CheckFailed("bundle", f"not a valid Sigstore bundle: {e}") from None
    envelope = bundle._inner.dsse_envelope
    if require_provenance and envelope is None:
        raise CheckFailed("provenance", "bundle holds a plain signature, not an attestation")
    verifier = trust.verifier()
    entry = bundle.log_entry._inner
    kind, version = entry.kind_version.kind, entry.kind_version.version
    builder_id = predicate_type = ""
    try:
        if envelope is not None:
            if (kind, version) in _LIBRARY_DSSE_ENTRIES:
                ptype, payload = verifier.verify_dsse(bundle, policy)
            else:
                ptype, payload = _verify_dsse_other(verifier, bundle, policy, kind, version)
            builder_id, predicate_type = check_statement(ptype, payload, sha256_hex,
                                                         predicate_types)
        else:
            digest = Hashed(algorithm=HashAlgorithm.SHA2_256, digest=bytes.fromhex(sha256_hex))
            verifier.verify_artifact(digest, bundle, policy)
        times = signed_times(trust.root, bundle._inner, bundle.signature)
    except CheckFailed:
        raise
    except VerificationError as e:
        raise CheckFailed(_classify(str(e)), str(e)) from None
    except Exception as e:
        raise CheckFailed("bundle", f"{type(e).__name__}: {e}") from None
    cert = bundle.signing_certificate
    sans = san_values(cert)
    first = min(times, default=None)
    return Verified(
        identity=sans[0] if sans else "",
        issuer=oidc_issuer(cert),
        kind="dsse" if envelope is not None else "message-signature",
        facts=cert_facts(cert),
        builder_id=builder_id,
        predicate_type=predicate_type,
        log_index=int(entry.log_index),
        log_entry=f"{kind}/{version}",
        signed_time=first[0] if first else None,
        time_source=first[1] if first else "",
    )


def _verify_dsse_other(verifier: Any, bundle: Any, policy: Any, kind: str,
                       version: str) -> tuple[str, bytes]:
    """A DSSE bundle whose entry kind sigstore-python does not check: its certificate, time,
    SCT, policy and log checks (steps 0-6 of verify_dsse), then the envelope signature and
    the entry body here."""
    verifier._verify_common_signing_cert(bundle, policy)
    envelope = bundle._inner.dsse_envelope
    if len(envelope.signatures) != 1:
        raise CheckFailed("signature", "expected exactly one DSSE signature")
    signature = envelope.signatures[0].sig
    cert = bundle.signing_certificate
    verify_signature(cert.public_key(), signature, data=pae(envelope.payload_type,
                                                             envelope.payload))
    check_body(kind, version, bundle.log_entry._inner.canonicalized_body, signer=cert,
               signature=signature, payload=envelope.payload,
               payload_type=envelope.payload_type)
    return envelope.payload_type, envelope.payload


def _classify(message: str) -> str:
    """The check a sigstore-python VerificationError is about (the order matters)."""
    text = message.lower()
    if "digest mismatch" in text or "signature is invalid for input" in text:
        return "artifact-digest"
    if "sct" in text:
        return "certificate-transparency"
    if "certificate chain" in text or "expired" in text or "usage" in text:
        return "certificate-chain"
    if "sans" in text or "identity" in text:
        return "identity"
    if "issuer" in text:
        return "issuer"
    if "log entry" in text or "inclusion" in text or "checkpoint" in text \
            or "transparency" in text:
        return "transparency-log"
    if "time" in text:
        return "signed-time"
    if "signature" in text:
        return "signature"
    return "bundle"
