"""The tpm attestor: node-level selectors vouched for by the node's TPM.

Unlike the unix and systemd attestors this one says nothing about the caller itself: it adds
what the TPM proves about the node the caller runs on (which TPM, which boot state, whether
that state passes the PCR policy). The TPM work (quotes, policy checks, reconnects) lives in
`ensign.daemon.tpm.service`; this module only reads its latest verified result, so attesting a
caller never waits on the TPM. Selectors (the pipeline adds the `tpm:` prefix):

    ek:<sha256 of the EK public key, DER SubjectPublicKeyInfo>
    pcr:sha256:<index>:<hex value>     one per configured PCR, from the last verified quote
    policy:pass                        only while the last quote matched the golden values
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Set
from datetime import timedelta
from pathlib import Path
from typing import ClassVar, Protocol

from pydantic import Field, field_validator, model_validator

from ensign.daemon.config_types import Duration, StrictModel
from ensign.daemon.models import Attestation, Caller

from .base import AttestorError

PREFIX = "tpm:"


class TpmConfig(StrictModel):
    enabled: bool = False
    #: how to reach the TPM: "device:/dev/tpmrm0" or "swtpm:path=/run/ensign/swtpm.sock";
    #: ignored with `emulator = true` (the daemon's own swtpm socket is used)
    tcti: str = "device:/dev/tpmrm0"
    #: run and own an swtpm under data_dir/tpm (dev and tests)
    emulator: bool = False
    #: PCRs (sha256 bank) quoted, reported as selectors and sealed to
    pcrs: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4, 5, 6, 7])
    #: extended with the sha256 of every executable the first time it is attested
    measure_pcr: int = 23
    #: golden PCR values (JSON); without it `tpm:policy:pass` is never emitted
    policy: Path | None = None
    #: how often a fresh quote is taken and checked against the policy
    quote_interval: Duration = timedelta(seconds=60)
    #: manufacturer CA certificates (PEM) the EK certificate must chain to; empty: not checked
    #: (with `emulator = true` the emulator's own local CA is used)
    ek_ca_files: list[Path] = Field(default_factory=list)
    #: watchdog: a TPM command running longer than this marks the TPM unavailable
    command_timeout: Duration = timedelta(seconds=10)

    @field_validator("pcrs")
    @classmethod
    def _pcr_range(cls, v: list[int]) -> list[int]:
        bad = [p for p in v if not 0 <= p <= 23]
        if bad:
            raise ValueError(f"PCR indexes must be 0..23, got {bad}")
        if len(set(v)) != len(v):
            raise ValueError("PCR indexes must not repeat")
        return sorted(v)

    @field_validator("measure_pcr")
    @classmethod
    def _measure_range(cls, v: int) -> int:
        if not 0 <= v <= 23:
            raise ValueError(f"a PCR index is 0..23, got {v}")
        if 17 <= v <= 22:  # TPM PC Client profile: only localities 2-4 may extend these
            raise ValueError(f"PCR {v} cannot be extended from software (locality 0)")
        return v

    @field_validator("quote_interval")
    @classmethod
    def _interval_bounds(cls, v: timedelta) -> timedelta:
        if not timedelta(seconds=0.1) <= v <= timedelta(days=1):
            raise ValueError("must be between 100ms and 1d")
        return v

    @field_validator("command_timeout")
    @classmethod
    def _timeout_bounds(cls, v: timedelta) -> timedelta:
        if not timedelta(seconds=0.1) <= v <= timedelta(minutes=5):
            raise ValueError("must be between 100ms and 5m")
        return v

    @model_validator(mode="after")
    def _measure_not_quoted_as_state(self) -> TpmConfig:
        # The measurement PCR changes with every new executable: as a selector or a sealing
        # PCR it would withdraw identities and lock the CA key on each agent launch.
        if self.measure_pcr in self.pcrs:
            raise ValueError(f"measure_pcr {self.measure_pcr} must not be one of pcrs")
        return self


def dev_config() -> dict[str, object]:
    """The `[attestors.tpm]` table for `ensign daemon --dev`: an emulator when swtpm exists."""
    if shutil.which("swtpm") and shutil.which("swtpm_setup"):
        return {"enabled": True, "emulator": True}
    return {}


def matches_with_tpm(entries: Iterable[Iterable[str]], have: Set[str]) -> bool:
    """Would some entry match a caller showing `have` if the TPM's selectors were there?

    While the TPM is unreachable such a caller should get UNAVAILABLE (try again) rather than
    PERMISSION_DENIED (no identity): its identity depends on the TPM, not on who it is.
    """
    for selectors in entries:
        wanted = frozenset(selectors)
        tpm = {s for s in wanted if s.startswith(PREFIX)}
        if tpm and wanted - tpm <= have:
            return True
    return False


class NodeState(Protocol):
    """What the attestor reads from the TPM service (ensign.daemon.tpm_service.TpmService)."""

    @property
    def available(self) -> bool: ...

    @property
    def problem(self) -> str | None: ...

    def node_selectors(self) -> frozenset[str]: ...

    @property
    def quote_digest(self) -> str: ...

    @property
    def quote_age(self) -> float | None:
        """Seconds since the last verified quote (None: none yet)."""
        ...


class TpmAttestor:
    name: ClassVar[str] = "tpm"

    def __init__(self, config: TpmConfig, *, service: NodeState | None = None) -> None:
        self._config = config
        self._service = service

    async def attest(self, caller: Caller) -> Attestation:
        if self._service is None:
            raise AttestorError("TPM service not running (construct with service=TpmService)")
        selectors = self._service.node_selectors()
        if not self._service.available or not selectors:
            # Fail this attestor only: entries without tpm selectors still match.
            raise AttestorError(f"TPM unavailable: {self._service.problem or 'not ready'}")
        return Attestation(
            selectors=tuple(sorted(s.removeprefix(PREFIX) for s in selectors)),
            # the audit trail keeps "tpm.quote_digest": which verified quote vouched for the node
            evidence={"quote_digest": self._service.quote_digest},
        )

    def state(self) -> str:
        if self._service is None:
            return "not running"
        if not self._service.available:
            return f"unavailable: {self._service.problem or 'not ready'}"
        age = self._service.quote_age
        when = "no quote yet" if age is None else f"last quote {age:.0f}s ago"
        return f"ready, {when}, digest {self._service.quote_digest[:16]}"

    def problem(self) -> str | None:
        # The node's TPM is reported by the daemon's health as it is (state.py), not here.
        return None

    async def aclose(self) -> None:
        return None  # the service owns the TPM connection
