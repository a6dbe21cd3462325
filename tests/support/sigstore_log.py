"""A transparency log for the private Sigstore in tests: RFC 6962 Merkle tree, inclusion
proofs, and signed checkpoints (signed notes) with optional witness cosignatures."""

from __future__ import annotations

import base64
import hashlib
import os
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

P256 = "PKIX_ECDSA_P256_SHA_256"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def spki(key: Any) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _root(leaves: list[bytes]) -> bytes:
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return _node(_root(leaves[:k]), _root(leaves[k:]))


def _audit_path(m: int, leaves: list[bytes]) -> list[bytes]:
    if len(leaves) == 1:
        return []
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    if m < k:
        return [*_audit_path(m, leaves[:k]), _root(leaves[k:])]
    return [*_audit_path(m - k, leaves[k:]), _root(leaves[:k])]



class TransparencyLog:
    """One transparency log: its key, its leaves, and how it writes checkpoints."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.key_id = hashlib.sha256(spki(self.key.public_key())).digest()
        self.leaves = [os.urandom(32) for _ in range(5)]

    def append(self, body: bytes, witnesses: int) -> dict[str, Any]:
        self.leaves.append(_leaf(body))
        index, size = len(self.leaves) - 1, len(self.leaves)
        root = _root(self.leaves)
        note = f"{self.origin}\n{size}\n{b64(root)}\n"
        sig = self.key.sign(note.encode(), ec.ECDSA(hashes.SHA256()))
        name = self.origin.split(" ")[0]
        lines = [f"\u2014 {name} {b64(self.key_id[:4] + sig)}\n"]
        for i in range(witnesses):  # cosignatures by witnesses the verifier does not know
            wkey = ec.generate_private_key(ec.SECP256R1())
            wsig = wkey.sign(note.encode(), ec.ECDSA(hashes.SHA256()))
            line = f"\u2014 witness{i}.test.invalid {b64(os.urandom(4) + wsig)}\n"
            lines.insert(0 if i % 2 else len(lines), line)
        return {
            "logIndex": str(index),
            "rootHash": b64(root),
            "treeSize": str(size),
            "hashes": [b64(h) for h in _audit_path(index, self.leaves)],
            "checkpoint": {"envelope": note + "\n" + "".join(lines)},
        }

    def instance(self, start: str) -> dict[str, Any]:
        return {
            "baseUrl": f"https://{self.origin.split(' ')[0]}",
            "hashAlgorithm": "SHA2_256",
            "publicKey": {"rawBytes": b64(spki(self.key.public_key())), "keyDetails": P256,
                          "validFor": {"start": start}},
            "logId": {"keyId": b64(self.key_id)},
        }
