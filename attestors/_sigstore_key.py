"""Managed-key bundles (`cosign sign-blob --key`, `verificationMaterial.publicKey`), which
sigstore-python does not verify, and the signed times of any bundle.

A key bundle is checked as cosign checks it by default: the signature under the given key, a
transparency-log entry whose inclusion proof and checkpoint (or, for Rekor v1, signed entry
timestamp) verify against the trusted root's log keys, and whose body records this signature,
this key and this content. Signed timestamps, when present, must verify against the root's
timestamp authorities. The log and timestamp checks reuse sigstore-python's own code.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from ._sigstore_body import CheckFailed, check_body, pae, verify_signature

MAX_TIMESTAMPS = 32  # as sigstore-python and sigstore-go: bounds the work per bundle


@dataclass(frozen=True, slots=True)
class KeyResult:
    kind: str  # "message-signature" | "dsse"
    payload_type: str
    payload: bytes
    log_index: int
    log_entry: str  # e.g. "hashedrekord/0.0.2"
    times: list[tuple[datetime, str]]


def signed_times(root: Any, inner: Any, signature: bytes) -> list[tuple[datetime, str]]:
    """Verified signing times: RFC 3161 timestamps over `signature` that verify against the
    root's timestamp authorities (within each authority's validity), and Rekor v1 integrated
    time when a signed entry timestamp binds it (the caller has verified that promise)."""
    from rfc3161_client import VerificationError, VerifierBuilder, decode_timestamp_response

    times: list[tuple[datetime, str]] = []
    vm = inner.verification_material
    tokens = vm.timestamp_verification_data.rfc3161_timestamps \
        if vm.timestamp_verification_data else []
    if len(tokens) > MAX_TIMESTAMPS:
        raise CheckFailed("signed-time", f"{len(tokens)} signed timestamps (at most "
                          f"{MAX_TIMESTAMPS})")
    authorities = root.get_timestamp_authorities()
    for token in tokens:
        try:
            response = decode_timestamp_response(token.signed_timestamp)
        except ValueError:
            raise CheckFailed("signed-time", "a signed timestamp is not an RFC 3161 response") \
                from None
        for ca in authorities:
            certs = ca.certificates(allow_expired=True)
            if len(certs) < 2:
                continue
            builder = VerifierBuilder().tsa_certificate(certs[0]).add_root_certificate(certs[-1])
            for cert in certs[1:-1]:
                builder = builder.add_intermediate_certificate(cert)
            try:
                builder.build().verify_message(response, signature)
            except VerificationError:
                continue
            when = response.tst_info.gen_time
            end = ca.validity_period_end
            if ca.validity_period_start <= when and (end is None or when < end):
                times.append((when, "timestamp-authority"))
                break
    entry = vm.tlog_entries[0]
    if entry.integrated_time and entry.inclusion_promise:
        times.append((datetime.fromtimestamp(entry.integrated_time, UTC), "transparency-log"))
    return times


def verify_with_key(root: Any, key: PublicKeyTypes, bundle_json: bytes,
                    sha256_hex: str) -> KeyResult:
    from sigstore._internal.trust import KeyringPurpose
    from sigstore.errors import Error as SigstoreError
    from sigstore.models import TransparencyLogEntry
    from sigstore_models.bundle.v1 import Bundle as RawBundle

    try:
        inner = RawBundle.from_json(bundle_json)
    except Exception as e:  # pydantic ValidationError, ValueError, RecursionError, ...
        raise CheckFailed("bundle", f"not a valid Sigstore bundle: {e}") from None
    vm = inner.verification_material
    if vm.public_key is None:
        raise CheckFailed("key", "the bundle is signed with a certificate, not a key: verify it "
                          "with --cert-identity and --cert-oidc-issuer")
    if len(vm.tlog_entries) != 1:
        raise CheckFailed("transparency-log",
                          f"expected exactly one log entry, found {len(vm.tlog_entries)}")
    try:
        entry = TransparencyLogEntry(vm.tlog_entries[0])
    except SigstoreError as e:
        raise CheckFailed("transparency-log", str(e)) from None
    digest = bytes.fromhex(sha256_hex)
    payload_type, payload = "", b""
    if inner.dsse_envelope is not None:
        envelope = inner.dsse_envelope
        if len(envelope.signatures) != 1:
            raise CheckFailed("signature", f"expected one DSSE signature, found "
                              f"{len(envelope.signatures)}")
        signature = envelope.signatures[0].sig
        payload_type, payload = envelope.payload_type, envelope.payload
        verify_signature(key, signature, data=pae(payload_type, payload))
    else:
        message = inner.message_signature
        assert message is not None  # the model requires exactly one of the two
        signature = message.signature
        recorded = message.message_digest
        if recorded is not None and recorded.digest != digest:
            raise CheckFailed("artifact-digest", "the bundle's message digest is not the "
                              "artifact's")
        try:
            verify_signature(key, signature, sha256=digest)
        except CheckFailed as e:
            raise CheckFailed("artifact-digest", e.detail) from None
    try:
        entry._verify(root.rekor_keyring(KeyringPurpose.VERIFY))
    except Exception as e:  # VerificationError, MetadataError (no log keys), ValueError, ...
        raise CheckFailed("transparency-log", f"invalid log entry: {e}") from None
    kind, version = entry._inner.kind_version.kind, entry._inner.kind_version.version
    check_body(kind, version, entry._inner.canonicalized_body, signer=key, signature=signature,
               digest=None if inner.dsse_envelope is not None else digest,
               payload=payload if inner.dsse_envelope is not None else None,
               payload_type=payload_type)
    times = signed_times(root, inner, signature)
    tokens = vm.timestamp_verification_data.rfc3161_timestamps \
        if vm.timestamp_verification_data else []
    if tokens and not any(source == "timestamp-authority" for _, source in times):
        raise CheckFailed("signed-time", "no signed timestamp verifies against the trusted "
                          "root's timestamp authorities")
    return KeyResult(kind="dsse" if inner.dsse_envelope is not None else "message-signature",
                     payload_type=payload_type, payload=payload,
                     log_index=int(entry._inner.log_index), log_entry=f"{kind}/{version}",
                     times=times)
