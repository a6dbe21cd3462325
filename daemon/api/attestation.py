"""`ensign.attestation.v1.Attestation`: TPM evidence for a verifier's nonce, and TPM status.

Served on the Workload API socket behind the front. Any local process may ask (the evidence is
what a remote verifier gets anyway), with the Workload API's `workload.spiffe.io: true` header
so a proxy cannot be tricked into asking; it need not hold an identity. The document model and
its checks live in tpm.evidence; this module only converts to and from the wire.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from grpclib.const import Status
from grpclib.server import Stream

from ensign.daemon.api.front import Call, recv
from ensign.daemon.errors import EnsignError
from ensign.daemon.tpm.evidence import Evidence
from ensign.daemon.tpm.measure import Epoch, Measurement
from ensign.proto import attestation_pb2 as pb

log = logging.getLogger(__name__)


class NoTpm(EnsignError):
    """This node does not attest itself with a TPM."""

    grpc_status = Status.UNAVAILABLE
    exit_code = 69
    public_message = "this node has no TPM attestation"
    detailed = True


class EvidenceSource(Protocol):
    """What the servicer needs (ensign.daemon.tpm_service.TpmService provides it)."""

    async def evidence(self, nonce: bytes,
                       challenge: tuple[bytes, bytes] | None = None) -> Evidence: ...

    async def status(self) -> dict[str, Any]: ...


class AttestationApi:
    def __init__(self, source: EvidenceSource | None) -> None:
        self._source = source

    def _node(self) -> EvidenceSource:
        if self._source is None:
            raise NoTpm("this node has no TPM attestation ([attestors.tpm] enabled = false)")
        return self._source

    async def GetEvidence(self, stream: Stream[pb.GetEvidenceRequest, pb.Evidence],
                          call: Call) -> None:
        request = await recv(stream)
        challenge = None
        if request.HasField("challenge"):
            challenge = (request.challenge.credential_blob, request.challenge.encrypted_secret)
        ev = await self._node().evidence(request.nonce, challenge)
        await stream.send_message(evidence_to_pb(ev))

    async def GetStatus(self, stream: Stream[pb.GetStatusRequest, pb.TpmStatus],
                        call: Call) -> None:
        await recv(stream)
        await stream.send_message(status_to_pb(await self._node().status()))


def evidence_to_pb(ev: Evidence) -> pb.Evidence:
    out = pb.Evidence(
        nonce=ev.nonce, quote=ev.quote, signature=ev.signature, ak_public=ev.ak_public,
        ek_public=ev.ek_public, ek_certificates=list(ev.ek_certificates), pcr_bank="sha256",
        pcrs=ev.pcrs, measure_pcr=ev.measure_pcr, activation_proof=ev.activation_proof,
        produced_at=ev.produced_at,
    )
    if ev.log is not None:
        out.measurement_log.CopyFrom(pb.MeasurementLog(
            pcr=ev.measure_pcr, base=ev.log.base, reset_count=ev.log.reset_count,
            restart_count=ev.log.restart_count, reason=ev.log.reason, at=ev.log.at,
            entries=[pb.Measurement(sha256=m.sha256, path=m.path, at=m.at)
                     for m in ev.log.entries]))
    return out


def evidence_from_pb(msg: pb.Evidence) -> Evidence:
    log_epoch = None
    if msg.HasField("measurement_log"):
        m = msg.measurement_log
        log_epoch = Epoch(m.base, m.reset_count, m.restart_count, m.reason, m.at,
                          [Measurement(e.sha256, e.path, e.at) for e in m.entries])
    return Evidence(
        nonce=msg.nonce, quote=msg.quote, signature=msg.signature, ak_public=msg.ak_public,
        ek_public=msg.ek_public, ek_certificates=tuple(msg.ek_certificates),
        pcrs={int(k): bytes(v) for k, v in msg.pcrs.items()}, log=log_epoch,
        measure_pcr=msg.measure_pcr, activation_proof=msg.activation_proof,
        produced_at=msg.produced_at,
    )


def status_to_pb(s: dict[str, Any]) -> pb.TpmStatus:
    last = s.get("last_quote") or {}
    handles = s.get("handles") or {}
    return pb.TpmStatus(
        available=s["available"], problem=s["problem"], tcti=s["tcti"],
        emulator_pid=s["emulator_pid"], ek_kind=s["ek_kind"], ek_sha256=s["ek_sha256"],
        ek_check=s["ek_check"], ak_name=s["ak_name"],
        flushed_at_connect=s["flushed_at_connect"],
        transient_handles=handles.get("transient", []),
        persistent_handles=handles.get("persistent", []),
        session_handles=handles.get("sessions", []),
        pcrs={int(k): v for k, v in s["pcrs"].items()},
        last_quote_at=last.get("at", ""), last_quote_nonce=last.get("nonce", ""),
        reset_count=last.get("reset_count", 0), restart_count=last.get("restart_count", 0),
        clock_ms=last.get("clock_ms", 0), policy=s["policy"],
        policy_mismatches=s["policy_mismatches"], measure_pcr=s["measure_pcr"],
        measurements=s["measurements"], epoch_reason=s["epoch_reason"],
        selectors=s["selectors"],
    )
