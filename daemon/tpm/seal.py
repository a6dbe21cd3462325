"""Envelope format for secrets sealed to PCR values (the CA key with `seal_with_tpm`). Pure.

A TPM sealed-data object holds at most 128 bytes, less than a CA key's PEM, so the TPM seals a
random 256-bit key-encryption key (KEK) under a PolicyPCR policy, and the secret itself is
encrypted with AES-256-GCM under that KEK. The PCR values at sealing time are recorded beside
the blobs, so a failed unseal can name which PCRs changed instead of only "policy check failed".
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ensign.daemon.tpm.errors import TpmSealError

KIND = "ensign-tpm-sealed"
VERSION = 1
AAD_LABEL = b"ensign-tpm-sealed-v1\0"


@dataclass(frozen=True, slots=True)
class SealedBlob:
    pcrs: tuple[int, ...]
    pcr_values: dict[int, bytes]  # at sealing time (sha256 bank)
    private: bytes  # TPM2B_PRIVATE of the sealed KEK
    public: bytes  # TPM2B_PUBLIC of the sealed KEK (its authPolicy is the PolicyPCR digest)
    nonce: bytes
    ciphertext: bytes

    def encode(self) -> bytes:
        b64 = base64.b64encode
        return json.dumps({
            "kind": KIND, "version": VERSION, "bank": "sha256", "pcrs": list(self.pcrs),
            "pcr_values": {str(k): v.hex() for k, v in sorted(self.pcr_values.items())},
            "private": b64(self.private).decode(), "public": b64(self.public).decode(),
            "nonce": b64(self.nonce).decode(), "ciphertext": b64(self.ciphertext).decode(),
        }, indent=1).encode()

    @classmethod
    def decode(cls, data: bytes) -> SealedBlob:
        try:
            doc: dict[str, Any] = json.loads(data)
            if doc.get("kind") != KIND or doc.get("version") != VERSION:
                raise TpmSealError("not a TPM-sealed blob of this version")
            d64 = base64.b64decode
            return cls(
                pcrs=tuple(int(p) for p in doc["pcrs"]),
                pcr_values={int(k): bytes.fromhex(v) for k, v in doc["pcr_values"].items()},
                private=d64(doc["private"]), public=d64(doc["public"]),
                nonce=d64(doc["nonce"]), ciphertext=d64(doc["ciphertext"]),
            )
        except TpmSealError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise TpmSealError(f"malformed TPM-sealed blob: {e}") from None

    def changed(self, current: dict[int, bytes]) -> list[str]:
        """Human-readable PCR changes since sealing, e.g. "PCR 7 was 00.. now 3a..."."""
        return [f"PCR {p} was {self.pcr_values[p].hex()[:16]}.. now "
                f"{current[p].hex()[:16] if p in current else '(unreadable)'}.."
                for p in self.pcrs if current.get(p) != self.pcr_values.get(p)]


def encrypt(kek: bytes, plaintext: bytes, public: bytes) -> tuple[bytes, bytes]:
    nonce = os.urandom(12)
    return nonce, AESGCM(kek).encrypt(nonce, plaintext, AAD_LABEL + public)


def decrypt(kek: bytes, blob: SealedBlob) -> bytes:
    try:
        return AESGCM(kek).decrypt(blob.nonce, blob.ciphertext, AAD_LABEL + blob.public)
    except InvalidTag:
        raise TpmSealError("sealed secret does not decrypt: the blob was altered") from None
