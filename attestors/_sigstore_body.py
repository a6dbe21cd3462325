"""What sigstore-python leaves to its caller: the failure type, signatures made with a managed
key, the consistency of a log entry's body with the bundle for the entry kinds it does not
check itself, and the in-toto statement inside a DSSE envelope.

A log entry proves that what it records was logged; it proves nothing about the bundle unless
the bundle's signature, signer and signed content are the ones recorded (CVE-2022-36056). Every
field the body records and the bundle carries is compared; anything else fails.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

INTOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
INTOTO_STATEMENT_TYPES = ("https://in-toto.io/Statement/v1", "https://in-toto.io/Statement/v0.1")
_DETAIL_MAX = 300

Signer = x509.Certificate | PublicKeyTypes


class CheckFailed(Exception):
    """Verification failed; `check` names which one (for the audit trail and the CLI).

    The detail may quote the bundle: it is cut to one printable line."""

    def __init__(self, check: str, detail: str) -> None:
        lines = detail.splitlines() or [""]
        clean = "".join(c if c.isprintable() else "?" for c in lines[0])[:_DETAIL_MAX]
        super().__init__(f"{check}: {clean}")
        self.check = check
        self.detail = clean


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: what a DSSE signature covers."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def _ec_hash(key: ec.EllipticCurvePublicKey) -> hashes.HashAlgorithm:
    size = key.curve.key_size
    return hashes.SHA256() if size <= 256 else hashes.SHA384() if size <= 384 else \
        hashes.SHA512()


def verify_signature(key: PublicKeyTypes, signature: bytes, *, data: bytes | None = None,
                     sha256: bytes | None = None) -> None:
    """`signature` by `key` over `data`, or over the SHA-256 digest `sha256` (prehashed)."""
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            if sha256 is not None:
                key.verify(signature, sha256, ec.ECDSA(Prehashed(hashes.SHA256())))
            else:
                key.verify(signature, data or b"", ec.ECDSA(_ec_hash(key)))
        elif isinstance(key, rsa.RSAPublicKey):
            algorithm: Any = Prehashed(hashes.SHA256()) if sha256 is not None else hashes.SHA256()
            key.verify(signature, sha256 if sha256 is not None else data or b"",
                       padding.PKCS1v15(), algorithm)
        elif isinstance(key, ed25519.Ed25519PublicKey) and sha256 is None:
            key.verify(signature, data or b"")
        else:
            raise CheckFailed("signature", f"unsupported key type {type(key).__name__} for "
                              f"{'a message digest' if sha256 is not None else 'DSSE'}")
    except InvalidSignature:
        raise CheckFailed("signature", "the signature does not verify with the signer's key") \
            from None


def load_public_key(pem: bytes) -> PublicKeyTypes:
    """A PEM (or DER) public key, as `cosign public-key` writes it."""
    try:
        if pem.lstrip().startswith(b"-----"):
            return serialization.load_pem_public_key(pem)
        return serialization.load_der_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise CheckFailed("key", f"not a public key: {e}") from None


def signer_der(signer: Signer) -> bytes:
    if isinstance(signer, x509.Certificate):
        return signer.public_bytes(serialization.Encoding.DER)
    return signer.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo)


def _pem_matches(pem_b64: Any, signer: Signer) -> bool:
    """A base64 PEM (certificate or key, as Rekor v1 bodies record it) names `signer`."""
    pem = _b64(pem_b64)
    try:
        if isinstance(signer, x509.Certificate):
            return x509.load_pem_x509_certificate(pem) == signer
        return signer_der(serialization.load_pem_public_key(pem)) == signer_der(signer)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False


def _v2_verifier_matches(verifier: Any, signer: Signer) -> bool:
    """A Rekor v2 `verifier` ({x509Certificate|publicKey: {rawBytes}}) names `signer`."""
    field = "x509Certificate" if isinstance(signer, x509.Certificate) else "publicKey"
    return _b64(verifier[field]["rawBytes"]) == signer_der(signer)


def _b64(value: Any) -> bytes:
    if not isinstance(value, str):
        raise TypeError("not a string")
    return base64.b64decode(value, validate=True)


def _sha256_field(value: Any, expected: bytes, *, v2: bool) -> bool:
    """A recorded hash: {algorithm: sha256, value: hex} (v1) or {algorithm: SHA2_256,
    digest: base64} (v2)."""
    if v2:
        return bool(value["algorithm"] == "SHA2_256" and _b64(value["digest"]) == expected)
    return bool(value["algorithm"] == "sha256" and value["value"] == expected.hex())


def _one(items: Any) -> Any:
    if not isinstance(items, list) or len(items) != 1:
        raise ValueError("expected exactly one signature")
    return items[0]


def check_body(kind: str, version: str, body: bytes, *, signer: Signer, signature: bytes,
               digest: bytes | None = None, payload: bytes | None = None,
               payload_type: str = "") -> None:
    """The entry body records this signature by this signer over this content: the artifact's
    SHA-256 `digest` (message signatures) or the DSSE `payload` of `payload_type`."""
    kv = f"{kind}/{version}"
    dsse = payload is not None
    allowed = {"hashedrekord/0.0.1", "hashedrekord/0.0.2"} | (
        {"dsse/0.0.1", "dsse/0.0.2", "intoto/0.0.2"} if dsse else set())
    if kv not in allowed:
        raise CheckFailed("transparency-log", f"log entry kind {kv} cannot record a "
                          f"{'DSSE envelope' if dsse else 'message signature'}")
    try:
        doc = json.loads(body)
        if doc["kind"] != kind or doc["apiVersion"] != version:
            raise ValueError("kind or version differs from the bundle's")
        spec = doc["spec"]
        ok = _check(kv, spec, signer, signature, digest, payload, payload_type)
    except CheckFailed:
        raise
    except (ValueError, KeyError, TypeError, IndexError, binascii.Error) as e:
        raise CheckFailed("transparency-log", f"malformed {kv} log entry body: {e}") from None
    if not ok:
        raise CheckFailed("transparency-log",
                          "the log entry is inconsistent with the bundle (signature, signer or "
                          "signed content differ)")


def _check(kv: str, spec: Any, signer: Signer, sig: bytes, digest: bytes | None,
           payload: bytes | None, payload_type: str) -> bool:
    if kv.startswith("hashedrekord/"):
        # Over a DSSE envelope, hashedrekord records the digest of its PAE (client spec).
        expected = hashlib.sha256(pae(payload_type, payload)).digest() if payload is not None \
            else digest or b""
        if kv.endswith("0.0.1"):
            return (_sha256_field(spec["data"]["hash"], expected, v2=False)
                    and _b64(spec["signature"]["content"]) == sig
                    and _pem_matches(spec["signature"]["publicKey"]["content"], signer))
        rec = spec["hashedRekordV002"]
        return (_sha256_field(rec["data"], expected, v2=True)
                and _b64(rec["signature"]["content"]) == sig
                and _v2_verifier_matches(rec["signature"]["verifier"], signer))
    payload_hash = hashlib.sha256(payload or b"").digest()
    if kv == "dsse/0.0.1":
        # envelopeHash covers non-canonical JSON and cannot be recomputed; the rest can.
        entry = _one(spec["signatures"])
        return (_sha256_field(spec["payloadHash"], payload_hash, v2=False)
                and _b64(entry["signature"]) == sig and _pem_matches(entry["verifier"], signer))
    if kv == "dsse/0.0.2":
        rec = spec["dsseV002"]
        entry = _one(rec["signatures"])
        return (_sha256_field(rec["payloadHash"], payload_hash, v2=True)
                and _b64(entry["content"]) == sig
                and _v2_verifier_matches(entry["verifier"], signer))
    # intoto/0.0.2: signatures and the payload are base64 of base64 in the canonical body.
    content = spec["content"]
    envelope = content["envelope"]
    entry = _one(envelope["signatures"])
    return (envelope["payloadType"] == payload_type
            and _sha256_field(content["payloadHash"], payload_hash, v2=False)
            and ("payload" not in envelope or _b64(_b64(envelope["payload"]).decode()) == payload)
            and _b64(_b64(entry["sig"]).decode()) == sig
            and _pem_matches(entry["publicKey"], signer))


def check_statement(payload_type: str, payload: bytes, sha256_hex: str,
                    predicate_types: tuple[str, ...] | None) -> tuple[str, str]:
    """The envelope holds an in-toto statement about the artifact; returns (builder id,
    predicate type). `predicate_types` None accepts any."""
    if payload_type != INTOTO_PAYLOAD_TYPE:
        raise CheckFailed("attestation", f"payload type {payload_type!r} is not in-toto")
    try:
        statement = json.loads(payload)
    except (ValueError, RecursionError):
        raise CheckFailed("attestation", "in-toto statement is not JSON") from None
    if not isinstance(statement, dict):
        raise CheckFailed("attestation", "in-toto statement is not a JSON object")
    if statement.get("_type") not in INTOTO_STATEMENT_TYPES:
        raise CheckFailed("attestation", f"unknown statement type {statement.get('_type')!r}")
    subjects = statement.get("subject")
    digests = [s["digest"].get("sha256") for s in subjects or []
               if isinstance(s, dict) and isinstance(s.get("digest"), dict)] \
        if isinstance(subjects, list) else []
    if sha256_hex not in digests:
        raise CheckFailed("attestation-subject",
                          f"no subject has the artifact's sha256 {sha256_hex[:16]}...")
    ptype = statement.get("predicateType")
    if not isinstance(ptype, str) or (predicate_types is not None
                                      and ptype not in predicate_types):
        raise CheckFailed("predicate-type", f"predicate type {ptype!r} is not accepted")
    predicate = statement.get("predicate")
    builder: Any = ""
    if isinstance(predicate, dict):
        for path in (("runDetails", "builder", "id"), ("builder", "id")):
            node: Any = predicate
            for key in path:
                node = node.get(key) if isinstance(node, dict) else None
            if isinstance(node, str) and node:
                builder = node
                break
    return str(builder), ptype
