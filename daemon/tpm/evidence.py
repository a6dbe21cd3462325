"""TPM evidence for a remote verifier: the document, and its verification. Pure.

A document answers one verifier nonce. It carries the quote (TPMS_ATTEST) and its signature,
the AK and EK public areas, the EK certificate chain, the quoted PCR values, the current epoch
of the measurement log and, when the verifier sent a credential challenge, an activation proof.
It is JSON so it can be stored, mailed and diffed; `ensign tpm verify-evidence` checks it with
this module alone (no TPM, no tpm2-tss).

Why the activation proof: an EK cannot sign, so nothing the node produces on its own proves
that the AK signing the quote lives in the TPM the EK certificate is about. The verifier makes
a credential for (EK, AK name) with a secret only that TPM can recover (TPM2_ActivateCredential
checks both), and the node returns HMAC(secret, quote). A quote from any other AK, or an AK
from another TPM, cannot carry a matching proof.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ensign.daemon.tpm import structs as ts
from ensign.daemon.tpm.ekcert import verify_ek_certificate
from ensign.daemon.tpm.measure import ZERO, Epoch, Measurement
from ensign.daemon.tpm.policy import PcrPolicy
from ensign.daemon.tpm.structs import EvidenceInvalid

VERSION = 1
KIND = "ensign-tpm-evidence"
PROOF_LABEL = b"ensign-activation-v1\0"
MIN_NONCE, MAX_NONCE = 8, 64  # TPM2B_DATA in a quote holds at most 64 bytes (sha512 size)


def activation_proof(secret: bytes, attest: bytes) -> bytes:
    return hmac.new(secret, PROOF_LABEL + attest, hashlib.sha256).digest()


def spki(key: Any) -> bytes:
    der: bytes = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return der


@dataclass(frozen=True, slots=True)
class Evidence:
    nonce: bytes
    quote: bytes  # TPMS_ATTEST
    signature: bytes  # TPMT_SIGNATURE
    ak_public: bytes  # TPMT_PUBLIC
    ek_public: bytes  # TPMT_PUBLIC
    ek_certificates: tuple[bytes, ...]  # DER: the EK certificate first, then its issuers
    pcrs: dict[int, bytes]  # sha256 bank
    log: Epoch | None  # the measurement log's current epoch
    measure_pcr: int
    activation_proof: bytes = b""
    produced_at: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        b64 = base64.b64encode
        return {
            "kind": KIND, "version": VERSION, "produced_at": self.produced_at,
            "nonce": self.nonce.hex(),
            "quote": b64(self.quote).decode(), "signature": b64(self.signature).decode(),
            "ak_public": b64(self.ak_public).decode(), "ek_public": b64(self.ek_public).decode(),
            "ek_certificates": [b64(c).decode() for c in self.ek_certificates],
            "pcr_bank": "sha256",
            "pcrs": {str(i): v.hex() for i, v in sorted(self.pcrs.items())},
            "measure_pcr": self.measure_pcr,
            "measurement_log": self.log.as_dict() if self.log is not None else None,
            "activation_proof": self.activation_proof.hex(),
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> Evidence:
        try:
            doc = json.loads(data)
            if doc.get("kind") != KIND or doc.get("version") != VERSION:
                raise EvidenceInvalid(f"not an Ensign TPM evidence document (version "
                                      f"{VERSION}): kind {doc.get('kind')!r}")
            if doc.get("pcr_bank") != "sha256":
                raise EvidenceInvalid(f"unsupported PCR bank {doc.get('pcr_bank')!r}")
            raw_log = doc.get("measurement_log")
            log = None
            if raw_log is not None:
                log = Epoch(bytes.fromhex(raw_log["base"]), int(raw_log["reset_count"]),
                            int(raw_log["restart_count"]), str(raw_log.get("reason", "")),
                            str(raw_log.get("at", "")),
                            [Measurement(str(m["sha256"]), str(m["path"]), str(m["at"]))
                             for m in raw_log["entries"]])
            d64 = base64.b64decode
            return cls(
                nonce=bytes.fromhex(doc["nonce"]), quote=d64(doc["quote"]),
                signature=d64(doc["signature"]), ak_public=d64(doc["ak_public"]),
                ek_public=d64(doc["ek_public"]),
                ek_certificates=tuple(d64(c) for c in doc["ek_certificates"]),
                pcrs={int(k): bytes.fromhex(v) for k, v in doc["pcrs"].items()},
                log=log, measure_pcr=int(doc["measure_pcr"]),
                activation_proof=bytes.fromhex(doc.get("activation_proof") or ""),
                produced_at=str(doc.get("produced_at", "")),
            )
        except EvidenceInvalid:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise EvidenceInvalid(f"malformed evidence document: {type(e).__name__}: {e}"
                                  ) from None


@dataclass(frozen=True, slots=True)
class Verdict:
    quote: ts.Quote
    ek_sha256: str
    ak_name: str
    trusted_by: str  # "pinned AK" | "EK certificate + credential activation"
    policy_pcrs: tuple[int, ...]
    measured: tuple[Measurement, ...]
    ek_chain: tuple[str, ...] = ()  # subjects, EK first


def verify_evidence(
    ev: Evidence,
    nonce: bytes,
    *,
    policy: PcrPolicy | None,
    trusted_ak: bytes | None = None,
    ek_anchors: Sequence[x509.Certificate] | None = None,
    challenge_secret: bytes | None = None,
    now: datetime | None = None,
) -> Verdict:
    """Verify evidence against a nonce. Raises EvidenceInvalid naming the first failure.

    Trust in the AK comes from `trusted_ak` (its SubjectPublicKeyInfo, pinned at enrolment),
    or from `ek_anchors` (manufacturer CAs) plus the secret of the verifier's credential
    challenge; with both, both must hold.
    """
    if trusted_ak is None and ek_anchors is None:
        raise EvidenceInvalid("nothing to trust the AK by: give a pinned AK or EK CAs")
    ak = ts.parse_public(ev.ak_public)
    ek_sha, chain_names, trusted_by = "", [], []
    # (1) the AK: pinned, or bound to a manufacturer-certified EK by credential activation
    if trusted_ak is not None:
        if spki(ak.key) != trusted_ak:
            raise EvidenceInvalid("the evidence's AK is not the pinned AK")
        trusted_by.append("pinned AK")
    if ev.ek_public:
        ek_sha = hashlib.sha256(spki(ts.parse_public(ev.ek_public).key)).hexdigest()
    if ek_anchors is not None:
        if not ev.ek_certificates:
            raise EvidenceInvalid("the evidence carries no EK certificate")
        chain = verify_ek_certificate(ev.ek_certificates[0], ev.ek_public, ek_anchors,
                                      [x509.load_der_x509_certificate(c)
                                       for c in ev.ek_certificates[1:]], now)
        chain_names = [c.subject.rfc4514_string() or "(EK)" for c in chain]
        if challenge_secret is None:
            raise EvidenceInvalid("the AK is not proven to be bound to the EK: verify with the "
                                  "secret of a credential challenge (`ensign tpm challenge`)")
        if not ev.activation_proof or not hmac.compare_digest(
                ev.activation_proof, activation_proof(challenge_secret, ev.quote)):
            raise EvidenceInvalid("the AK is not bound to the EK: the activation proof does not "
                                  "match this challenge")
        trusted_by.append("EK certificate + credential activation")
    # (2) the quote: signature, TPM origin, nonce, PCR digest
    quote = ts.verify_quote(ak, ev.quote, ev.signature, nonce, {ts.ALG_SHA256: ev.pcrs})
    if set(ev.pcrs) != set(quote.pcrs):
        raise EvidenceInvalid(f"PCR values given for {sorted(ev.pcrs)}, quote covers "
                              f"{sorted(quote.pcrs)}")
    # (3) golden values
    policy_pcrs: tuple[int, ...] = ()
    if policy is not None:
        mismatches = policy.check(ev.pcrs)
        if mismatches:
            raise EvidenceInvalid("PCR policy fails: " + "; ".join(map(str, mismatches)))
        policy_pcrs = tuple(policy.pcrs)
    # (4) the measurement log replays to the quoted measurement PCR, in this boot
    measured: tuple[Measurement, ...] = ()
    if ev.log is not None:
        measured = tuple(verify_log(ev.log, ev.measure_pcr, ev.pcrs, quote))
    return Verdict(quote, ek_sha, ak.name.hex(), " and ".join(trusted_by), policy_pcrs,
                   measured, tuple(chain_names))


def verify_log(log: Epoch, pcr: int, pcrs: dict[int, bytes], quote: ts.Quote) -> list[Measurement]:
    if pcr not in pcrs:
        raise EvidenceInvalid(f"the quote does not cover the measurement PCR {pcr}")
    if (log.reset_count, log.restart_count) != (quote.reset_count, quote.restart_count):
        raise EvidenceInvalid(
            f"the measurement log is from another boot (log reset/restart counts "
            f"{log.reset_count}/{log.restart_count}, quote {quote.reset_count}/"
            f"{quote.restart_count})")
    if log.base != ZERO:
        raise EvidenceInvalid(f"the measurement log starts from PCR {pcr} = {log.base.hex()}, "
                              f"not zero: it was extended outside the log ({log.reason})")
    for m in log.entries:
        if len(bytes.fromhex(m.sha256)) != 32:
            raise EvidenceInvalid(f"measurement {m.path}: not a sha256 digest")
    if log.expected() != pcrs[pcr]:
        raise EvidenceInvalid(f"the measurement log does not replay to PCR {pcr} "
                              f"(replay {log.expected().hex()}, quoted {pcrs[pcr].hex()})")
    return list(log.entries)
