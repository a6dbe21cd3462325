"""Hand-marshaled TPM structures signed by a software key, for the pure verifier's unit tests.

Real quotes come from swtpm in the other TPM tests; these let the parser and verifier be
checked exhaustively (every field, every failure) in microseconds.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping, Sequence

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from ensign.daemon.tpm import structs as ts


def b2(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def ecc_public(key: ec.EllipticCurvePrivateKey, attrs: int = ts.AK_REQUIRED | ts.USERWITHAUTH
               ) -> bytes:
    n = key.public_key().public_numbers()
    return (struct.pack(">HHI", ts.ALG_ECC, ts.ALG_SHA256, attrs) + b2(b"")
            + struct.pack(">H", ts.ALG_NULL)  # symmetric
            + struct.pack(">HH", ts.ALG_ECDSA, ts.ALG_SHA256)  # scheme
            + struct.pack(">HH", 0x0003, ts.ALG_NULL)  # curve P-256, kdf
            + b2(n.x.to_bytes(32, "big")) + b2(n.y.to_bytes(32, "big")))


def attest(nonce: bytes, pcrs: Sequence[int], values: Mapping[int, bytes], *,
           reset: int = 1, restart: int = 0, magic: int = ts.TPM_GENERATED_VALUE,
           typ: int = ts.TPM_ST_ATTEST_QUOTE) -> bytes:
    bitmap = bytearray(3)
    for p in pcrs:
        bitmap[p // 8] |= 1 << (p % 8)
    digest = hashlib.sha256(b"".join(values[p] for p in sorted(pcrs))).digest()
    return (struct.pack(">IH", magic, typ) + b2(b"\x00\x0b" + bytes(32)) + b2(nonce)
            + struct.pack(">QIIBQ", 1234, reset, restart, 1, 0x20191023)
            + struct.pack(">IHB", 1, ts.ALG_SHA256, 3) + bytes(bitmap) + b2(digest))


def sign(key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA256())))
    return (struct.pack(">HH", ts.ALG_ECDSA, ts.ALG_SHA256)
            + b2(r.to_bytes(32, "big")) + b2(s.to_bytes(32, "big")))
