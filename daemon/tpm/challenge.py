"""The verifier's side of credential activation: a challenge only the right TPM can answer.

TPM2_MakeCredential is plain software (encrypt a secret to the EK's public key, bound to the
AK's Name), done here with tpm2-pytss' implementation: no TPM is involved. The verifier keeps
the secret; the node's answer (GetEvidence with the challenge) carries HMAC(secret, quote).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from ensign.daemon.tpm import structs as ts
from ensign.daemon.tpm.ekcert import verify_ek_certificate
from ensign.daemon.tpm.evidence import Evidence
from ensign.daemon.tpm.structs import EvidenceInvalid

os.environ.setdefault("TSS2_LOG", "all+NONE")

from tpm2_pytss.types import TPM2B_PUBLIC, TPMT_PUBLIC
from tpm2_pytss.utils import make_credential

KIND = "ensign-tpm-challenge"


@dataclass(frozen=True, slots=True)
class Challenge:
    ek_sha256: str
    ak_name: bytes
    credential_blob: bytes  # TPM2B_ID_OBJECT
    encrypted_secret: bytes  # TPM2B_ENCRYPTED_SECRET

    def to_json(self) -> bytes:
        return json.dumps({
            "kind": KIND, "version": 1, "ek_sha256": self.ek_sha256,
            "ak_name": self.ak_name.hex(),
            "credential_blob": base64.b64encode(self.credential_blob).decode(),
            "encrypted_secret": base64.b64encode(self.encrypted_secret).decode(),
        }, indent=1).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> Challenge:
        try:
            doc: dict[str, Any] = json.loads(data)
            if doc.get("kind") != KIND:
                raise EvidenceInvalid(f"not an Ensign TPM challenge: kind {doc.get('kind')!r}")
            return cls(str(doc["ek_sha256"]), bytes.fromhex(doc["ak_name"]),
                       base64.b64decode(doc["credential_blob"]),
                       base64.b64decode(doc["encrypted_secret"]))
        except EvidenceInvalid:
            raise
        except (ValueError, KeyError, TypeError) as e:
            raise EvidenceInvalid(f"malformed challenge: {e}") from None


def make_challenge(ev: Evidence, anchors: Sequence[x509.Certificate]) -> tuple[Challenge, bytes]:
    """A challenge for the EK and AK named in earlier evidence; returns it and the secret.

    The EK certificate is checked first: encrypting to an EK no trusted manufacturer vouches
    for would prove nothing.
    """
    if not ev.ek_certificates:
        raise EvidenceInvalid("the evidence carries no EK certificate")
    verify_ek_certificate(ev.ek_certificates[0], ev.ek_public, anchors,
                          [x509.load_der_x509_certificate(c) for c in ev.ek_certificates[1:]])
    ak = ts.parse_public(ev.ak_public)
    ts.check_attestation_key(ak)
    secret = os.urandom(32)
    ek_public = TPM2B_PUBLIC(publicArea=TPMT_PUBLIC.unmarshal(ev.ek_public)[0])
    blob, encrypted = make_credential(ek_public, secret, ak.name)
    return Challenge(ts.spki_sha256(ev.ek_public), ak.name, bytes(blob.marshal()),
                     bytes(encrypted.marshal())), secret
