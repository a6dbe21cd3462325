"""What the TPM service does on request: measured launches, evidence, sealing, status.

Kept apart from tpm_service (connection, periodic quote, node selectors) to keep each module
about one job; `TpmService` inherits these and provides the attributes declared below.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from cryptography.hazmat.primitives.serialization import Encoding
from tpm2_pytss import TSS2_Exception

from ensign.attestors.tpm import TpmConfig
from ensign.daemon.errors import InvalidRequest
from ensign.daemon.tpm import structs as ts
from ensign.daemon.tpm.emulator import SwtpmEmulator
from ensign.daemon.tpm.errors import TpmSealError, TpmUnavailable
from ensign.daemon.tpm.evidence import MAX_NONCE, MIN_NONCE, Evidence, activation_proof
from ensign.daemon.tpm.measure import Epoch, MeasurementLog
from ensign.daemon.tpm.ops import (
    TpmSession,
    activate,
    extend,
    handles,
    parse_challenge,
    quote,
    read_pcrs,
    seal,
    unseal,
)
from ensign.daemon.tpm.policy import Mismatch, PcrPolicy
from ensign.daemon.tpm.seal import SealedBlob, decrypt, encrypt
from ensign.daemon.tpm.worker import TpmWorker, is_transport_error

if TYPE_CHECKING:
    from cryptography import x509

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TpmEvent:
    """Something the audit trail should record (maps onto AuditEvent(type, result, ...))."""

    type: Literal["tpm.available", "tpm.unavailable", "tpm.policy", "tpm.measured",
                  "tpm.epoch", "tpm.ak_created"]
    result: Literal["success", "failure"] = "success"
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LastQuote:
    at: datetime
    nonce: bytes
    quote: ts.Quote
    pcrs: dict[int, bytes]
    mismatches: tuple[Mismatch, ...]
    attest_sha256: str


class ChallengeRefused(InvalidRequest):
    """The verifier's credential does not activate on this TPM (wrong EK or AK name)."""


class EvidenceMixin:
    config: TpmConfig
    worker: TpmWorker[TpmSession]
    log: MeasurementLog
    policy: PcrPolicy | None
    session: TpmSession | None
    last: LastQuote | None
    emulator: SwtpmEmulator | None
    tcti: str
    ek_chain: list[x509.Certificate]
    ek_check: str
    pcr_lock: asyncio.Lock
    _seen: set[str]
    _available: bool
    _problem: str | None
    _selectors: frozenset[str]

    _on_event: Callable[[TpmEvent], None]

    @property
    def quote_pcrs(self) -> list[int]:
        policy = self.policy.pcrs if self.policy else []
        return sorted({*self.config.pcrs, *policy, self.config.measure_pcr})

    @property
    def seal_pcrs(self) -> list[int]:
        return self.policy.pcrs if self.policy else list(self.config.pcrs)

    # -- measured launches -----------------------------------------------------------------

    async def measure(self, sha256_hex: str, path: str) -> None:
        """Extend `measure_pcr` with an executable's sha256 the first time it is attested.

        Logged (durably) before the extension. A no-op for digests already measured since the
        TPM's last reset; raises TpmUnavailable while the TPM cannot be reached (the digest is
        then measured the next time it is attested).
        """
        if sha256_hex in self._seen:
            return
        try:
            digest = bytes.fromhex(sha256_hex)
        except ValueError:
            digest = b""
        if len(digest) != 32:
            raise InvalidRequest(f"not a sha256 digest: {sha256_hex!r}")
        async with self.pcr_lock:
            if sha256_hex in self._seen:
                return
            if not self._available or self.log.epoch is None:
                raise TpmUnavailable(f"cannot measure {path}: {self._problem or 'TPM not ready'}")
            await asyncio.to_thread(self.log.append, sha256_hex, path)
            self._seen.add(sha256_hex)
            pcr = self.config.measure_pcr
            await self.worker.acall(lambda s: extend(s.ctx, pcr, digest))
        log.info("measured launch", extra={"sha256": sha256_hex, "path": path, "pcr": pcr})
        self._on_event(TpmEvent("tpm.measured", details={
            "sha256": sha256_hex, "path": path, "pcr": pcr}))

    # -- evidence --------------------------------------------------------------------------

    async def evidence(self, nonce: bytes,
                       challenge: tuple[bytes, bytes] | None = None) -> Evidence:
        """A fresh quote over the verifier's nonce with everything needed to check it.

        `challenge` is (credential_blob, encrypted_secret) from the verifier's MakeCredential
        for this TPM's EK and AK name; the answer then carries HMAC(secret, quote).
        """
        if not MIN_NONCE <= len(nonce) <= MAX_NONCE:
            raise InvalidRequest(f"nonce must be {MIN_NONCE}..{MAX_NONCE} bytes, "
                                 f"got {len(nonce)}")
        pcrs = self.quote_pcrs
        credential = None
        if challenge is not None:
            try:
                credential = parse_challenge(*challenge)
            except ValueError as e:
                raise ChallengeRefused(f"malformed credential challenge: {e}") from None

        def op(s: TpmSession) -> tuple[TpmSession, Any, bytes]:
            raw = quote(s, pcrs, nonce)
            proof = b""
            if credential is not None:
                try:
                    proof = activation_proof(activate(s, *credential), raw.attest)
                except TSS2_Exception as e:
                    if is_transport_error(e):
                        raise
                    raise ChallengeRefused(f"the credential challenge does not activate on "
                                           f"this TPM (made for another EK or AK?): {e}"
                                           ) from None
            return s, raw, proof

        async with self.pcr_lock:  # the log snapshot must match the quoted PCR
            session, raw, proof = await self.worker.acall(op)
            epoch = self.log.epoch
            snapshot = None if epoch is None else Epoch(
                epoch.base, epoch.reset_count, epoch.restart_count, epoch.reason, epoch.at,
                list(epoch.entries))
        certs = [c.public_bytes(Encoding.DER) for c in self.ek_chain]
        if not certs and session.ek.certificate:
            certs = [session.ek.certificate]
        return Evidence(
            nonce=nonce, quote=raw.attest, signature=raw.signature,
            ak_public=session.ak_public, ek_public=session.ek.public,
            ek_certificates=tuple(certs), pcrs=raw.pcrs, log=snapshot,
            measure_pcr=self.config.measure_pcr, activation_proof=proof,
            produced_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        )

    # -- sealing (blocking: the CA loads and rotates its key synchronously) -----------------

    def seal(self, secret: bytes) -> bytes:
        """Encrypt `secret` under a fresh key that only this TPM can release, and only while
        the sealing PCRs hold their current values. Refused while the PCR policy fails."""
        pcrs = self.seal_pcrs
        values = self.worker.call(lambda s: read_pcrs(s.ctx, pcrs))
        if self.policy is not None and (bad := self.policy.check(values)):
            raise TpmSealError("refusing to seal to a boot state the PCR policy rejects: "
                               + "; ".join(map(str, bad)))
        kek = os.urandom(32)
        policy_digest = ts.policy_pcr_digest(ts.ALG_SHA256, pcrs, values)
        private, public = self.worker.call(lambda s: seal(s.ctx, kek, policy_digest))
        nonce, ciphertext = encrypt(kek, secret, public)
        return SealedBlob(tuple(pcrs), values, private, public, nonce, ciphertext).encode()

    def unseal(self, blob: bytes) -> bytes:
        """Recover a sealed secret; TpmSealError naming the changed PCRs if the boot state
        differs from sealing time (the TPM refuses the policy session then anyway)."""
        sealed = SealedBlob.decode(blob)

        def op(s: TpmSession) -> tuple[dict[int, bytes], bytes | None, str]:
            current = read_pcrs(s.ctx, sealed.pcrs)
            if current != sealed.pcr_values:
                return current, None, ""
            try:
                return current, unseal(s.ctx, sealed.private, sealed.public, sealed.pcrs), ""
            except TSS2_Exception as e:
                if is_transport_error(e):
                    raise
                return current, None, str(e)

        current, kek, refusal = self.worker.call(op)
        if kek is None:
            changes = "; ".join(sealed.changed(current)) or f"the TPM refused: {refusal}"
            raise TpmSealError(
                f"cannot unseal the TPM-sealed key: the boot state changed since it was sealed "
                f"({changes}). Restore the expected boot state, or re-provision the key.")
        return decrypt(kek, sealed)

    # -- status ----------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        """For `ensign tpm status`: connection, keys, live handles, PCRs, the last quote."""
        live: dict[str, list[int]] = {}
        if self._available:
            try:
                live = await self.worker.acall(lambda s: {
                    kind: handles(s.ctx, code) for kind, code in
                    (("transient", 0x80), ("persistent", 0x81), ("sessions", 0x02))})
            except Exception as e:  # status must report, not fail
                log.info("status: cannot list handles", extra={"error": str(e)})
        s, last, epoch = self.session, self.last, self.log.epoch
        return {
            "available": self._available, "problem": self._problem or "", "tcti": self.tcti,
            "emulator_pid": self.emulator.pid if self.emulator and self.emulator.pid else 0,
            "ek_kind": s.ek.kind if s else "", "ek_sha256": s.ek.sha256 if s else "",
            "ek_check": self.ek_check,
            "ak_name": ts.parse_public(s.ak_public).name.hex() if s else "",
            "flushed_at_connect": [f"0x{h:08x}" for h in s.flushed] if s else [],
            "handles": {k: [f"0x{h:08x}" for h in v] for k, v in live.items()},
            "pcrs": {i: v.hex() for i, v in sorted(last.pcrs.items())} if last else {},
            "last_quote": {} if last is None else {
                "at": last.at.isoformat(timespec="seconds"), "nonce": last.nonce.hex(),
                "reset_count": last.quote.reset_count, "restart_count": last.quote.restart_count,
                "clock_ms": last.quote.clock, "verified": True},
            "policy": ("none" if self.policy is None else
                       "fail" if last is None or last.mismatches else "pass"),
            "policy_mismatches": [str(m) for m in last.mismatches] if last else [],
            "measure_pcr": self.config.measure_pcr,
            "measurements": len(epoch.entries) if epoch else 0,
            "epoch_reason": epoch.reason if epoch else "",
            "selectors": sorted(self._selectors),
        }
