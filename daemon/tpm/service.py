"""The node's TPM: connection, AK, periodic quotes against the PCR policy, measured launches.

`TpmService` owns the TPM connection (a TpmWorker: one ESAPI context on one thread, with a
watchdog) and, with `emulator = true`, the swtpm process. Every `quote_interval` it takes a
quote over a fresh nonce, verifies it with the same pure-Python code a remote verifier uses,
compares the PCRs with the golden policy and publishes the node selectors:

    tpm:ek:<sha256 of the EK's SubjectPublicKeyInfo>
    tpm:pcr:sha256:<i>:<hex>          for each configured PCR
    tpm:policy:pass                   only while the policy holds

When they change (a PCR left the policy, the TPM went away or came back) it calls
`on_change()`, so open streams re-match at once, and `on_event()` with a TpmEvent for the
audit trail. While the TPM is unreachable the selectors are empty and a background loop
reconnects (re-running the set-up: flush leftovers, EK check, AK load, credential activation).
Evidence for remote verifiers, measured launches and sealing are in the mixins below.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from cryptography import x509

from ensign.attestors.tpm import TpmConfig
from ensign.daemon.errors import ConfigError, EnsignError
from ensign.daemon.tpm import structs as ts
from ensign.daemon.tpm._service_ops import EvidenceMixin, LastQuote, TpmEvent
from ensign.daemon.tpm.ekcert import load_certificates, verify_ek_certificate
from ensign.daemon.tpm.emulator import SwtpmEmulator
from ensign.daemon.tpm.errors import TpmUnavailable
from ensign.daemon.tpm.measure import ZERO, MeasurementLog
from ensign.daemon.tpm.ops import RawQuote, TpmSession, extend, open_session, quote
from ensign.daemon.tpm.policy import PcrPolicy
from ensign.daemon.tpm.worker import TpmWorker

__all__ = ["LastQuote", "TpmEvent", "TpmService"]

log = logging.getLogger(__name__)

BACKOFF_MIN, BACKOFF_MAX = 0.2, 5.0


class TpmService(EvidenceMixin):
    def __init__(
        self,
        config: TpmConfig,
        data_dir: Path,
        on_change: Callable[[], None] = lambda: None,
        on_event: Callable[[TpmEvent], None] = lambda e: None,
    ) -> None:
        self.config = config
        self._dir = data_dir / "tpm"
        self._on_change = on_change
        self._on_event = on_event
        self.emulator = SwtpmEmulator(self._dir) if config.emulator else None
        self.tcti = self.emulator.tcti if self.emulator else config.tcti
        self.policy: PcrPolicy | None = None
        self._anchors: list[x509.Certificate] = []
        self._intermediates: list[x509.Certificate] = []
        self.ek_chain: list[x509.Certificate] = []
        self.ek_check = "not checked (no ek_ca_files)"
        self.worker: TpmWorker[TpmSession] = TpmWorker(
            self.tcti, self._setup, timeout=config.command_timeout.total_seconds())
        self.log = MeasurementLog(self._dir / "measurements.jsonl", config.measure_pcr)
        self._seen: set[str] = set()
        self.pcr_lock = asyncio.Lock()  # PCR-changing sequences vs. quotes and the log
        self.session: TpmSession | None = None
        self.last: LastQuote | None = None
        self._selectors: frozenset[str] = frozenset()
        self._available = False
        self._problem: str | None = "not started"
        self._policy_ok: bool | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    # -- what the daemon reads -------------------------------------------------------------

    @property
    def available(self) -> bool:
        return self._available

    @property
    def problem(self) -> str | None:
        """Why TPM selectors are missing or reduced (unreachable, PCR policy failed)."""
        return self._problem

    def node_selectors(self) -> frozenset[str]:
        return self._selectors

    @property
    def quote_digest(self) -> str:
        """sha256 of the last verified quote (TPMS_ATTEST): the evidence behind the selectors."""
        return self.last.attest_sha256 if self.last else ""

    @property
    def quote_age(self) -> float | None:
        if self.last is None:
            return None
        return (datetime.now(UTC) - self.last.at).total_seconds()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Raise ConfigError for bad configuration; a TPM that cannot be reached is not an
        error here (identities without TPM selectors keep working): see `problem`."""
        if self.config.policy is not None:
            self.policy = PcrPolicy.load(self.config.policy)
            if self.config.measure_pcr in self.policy.pcrs:
                raise ConfigError(f"{self.config.policy}: the policy names measure_pcr "
                                  f"{self.config.measure_pcr}, which changes on every launch")
        self._anchors = load_certificates(self.config.ek_ca_files)
        self.log.load()
        if self.emulator is not None:
            await self._start_emulator()
        with contextlib.suppress(EnsignError):
            await self.refresh()
        self._task = asyncio.create_task(self._run(), name="ensign-tpm")

    async def _start_emulator(self) -> None:
        assert self.emulator is not None
        try:
            await asyncio.to_thread(self.emulator.start)
        except TpmUnavailable as e:
            self._set_unavailable(e)
            return
        if not self._intermediates:  # the emulator's local CA exists once it is manufactured
            self._anchors = load_certificates([*self.config.ek_ca_files,
                                               *self.emulator.ca_files])
            self._intermediates = load_certificates(self.emulator.intermediate_files)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.worker.close()
        if self.emulator is not None:
            await asyncio.to_thread(self.emulator.stop)
        self._available, self._selectors, self._problem = False, frozenset(), "stopped"

    def poke(self) -> None:
        """Quote now instead of at the next interval."""
        self._wake.set()

    async def _run(self) -> None:
        backoff = BACKOFF_MIN
        while True:
            try:
                await self.refresh()
                delay, backoff = self.config.quote_interval.total_seconds(), BACKOFF_MIN
            except EnsignError:
                delay = backoff
                backoff = min(backoff * 2, BACKOFF_MAX, self.config.quote_interval.total_seconds())
                if self.emulator is not None and self.emulator.reap() is not None:
                    log.warning("swtpm exited; restarting it")
                    await self._start_emulator()
            except Exception as e:  # a bug must not stop attestation for good
                log.exception("TPM refresh failed")
                self._set_unavailable(e)
                delay = BACKOFF_MAX
            self._wake.clear()
            # asyncio.wait, not wait_for: on Python 3.11 a wait_for cancelled (by aclose) just
            # as its timeout fires can wait for ever for the inner task (seen in tests).
            sleeper = asyncio.create_task(self._wake.wait())
            try:
                await asyncio.wait({sleeper}, timeout=delay)
            finally:
                sleeper.cancel()

    # -- connecting (runs on the TPM thread) -----------------------------------------------

    def _setup(self, ctx: Any) -> TpmSession:
        return open_session(ctx, self._dir / "ak.json", self._check_ek)

    def _check_ek(self, ek: Any) -> None:
        if not self._anchors:
            self.ek_chain, self.ek_check = [], "not checked (no ek_ca_files)"
            return
        if ek.certificate is None:
            raise TpmUnavailable("the TPM has no EK certificate in NV, but ek_ca_files are set")
        self.ek_chain = verify_ek_certificate(ek.certificate, ek.public, self._anchors,
                                              self._intermediates)
        self.ek_check = f"chains to {self.ek_chain[-1].subject.rfc4514_string()}"

    # -- the periodic check ----------------------------------------------------------------

    async def refresh(self) -> LastQuote:
        """Quote, verify, reconcile the measurement log, apply the policy, publish."""
        nonce = secrets.token_bytes(32)
        pcrs = self.quote_pcrs
        try:
            async with self.pcr_lock:
                session, raw = await self.worker.acall(lambda s: (s, quote(s, pcrs, nonce)))
                q = ts.verify_quote(session.ak_public, raw.attest, raw.signature, nonce,
                                    {ts.ALG_SHA256: raw.pcrs}, pcrs)
                if session is not self.session:
                    self._connected(session)
                await self._reconcile(raw.pcrs[self.config.measure_pcr], q)
        except EnsignError as e:
            self.worker.reset()  # the next attempt reconnects and re-runs the set-up
            self._set_unavailable(e)
            raise
        return self._apply(nonce, q, raw)

    def _connected(self, session: TpmSession) -> None:
        self.session = session
        log.info("TPM ready", extra={"tcti": self.tcti, "ek": session.ek.sha256,
                                     "ek_kind": session.ek.kind, "ek_check": self.ek_check,
                                     "flushed": len(session.flushed)})
        if session.ak_created:
            self._on_event(TpmEvent("tpm.ak_created", details={
                "ak_name": ts.parse_public(session.ak_public).name.hex()}))

    async def _reconcile(self, value: bytes, q: ts.Quote) -> None:
        """Bring the log and the measurement PCR into agreement (see tpm_measure)."""
        epoch, counters = self.log.epoch, (q.reset_count, q.restart_count)
        if epoch is None or (epoch.reset_count, epoch.restart_count) != counters:
            reason = "first start" if epoch is None else "TPM restarted: PCRs were reset"
            await self._new_epoch(value, counters, reason)
            return
        self._seen = self.log.seen()
        done = epoch.applied_prefix(value)
        if done is None:
            await self._new_epoch(value, counters, "PCR value not explained by the log "
                                  "(extended outside Ensign)")
            return
        for m in epoch.entries[done:]:  # logged, then the daemon stopped before extending
            await self.worker.acall(functools.partial(self._extend, bytes.fromhex(m.sha256)))
            log.info("completed a logged measurement", extra={"sha256": m.sha256})

    async def _new_epoch(self, value: bytes, counters: tuple[int, int], reason: str) -> None:
        if value != ZERO and not reason.startswith("PCR value"):
            reason += f"; PCR {self.config.measure_pcr} was already {value.hex()[:16]}.."
        await asyncio.to_thread(self.log.new_epoch, value, counters[0], counters[1], reason)
        self._seen = set()
        result: Literal["success", "failure"] = "success" if value == ZERO else "failure"
        log.log(logging.INFO if value == ZERO else logging.WARNING, "measurement epoch",
                extra={"reason": reason})
        self._on_event(TpmEvent("tpm.epoch", result, reason, {
            "pcr": self.config.measure_pcr, "base": value.hex(),
            "reset_count": counters[0], "restart_count": counters[1]}))

    def _extend(self, digest: bytes, session: TpmSession) -> None:
        extend(session.ctx, self.config.measure_pcr, digest)

    def _apply(self, nonce: bytes, q: ts.Quote, raw: RawQuote) -> LastQuote:
        assert self.session is not None
        mismatches = tuple(self.policy.check(raw.pcrs)) if self.policy else ()
        selectors = {f"tpm:ek:{self.session.ek.sha256}"}
        selectors.update(f"tpm:pcr:sha256:{i}:{raw.pcrs[i].hex()}" for i in self.config.pcrs)
        if self.policy is not None and not mismatches:
            selectors.add("tpm:policy:pass")
        self.last = LastQuote(datetime.now(UTC), nonce, q, raw.pcrs, mismatches,
                              hashlib.sha256(raw.attest).hexdigest())
        was_available, self._available = self._available, True
        self._problem = ("PCR policy failed: " + "; ".join(map(str, mismatches))
                         if mismatches else None)
        if not was_available:
            self._on_event(TpmEvent("tpm.available", details={"tcti": self.tcti}))
        policy_ok = None if self.policy is None else not mismatches
        if policy_ok is not None and policy_ok != self._policy_ok:
            self._on_event(TpmEvent(
                "tpm.policy", "success" if policy_ok else "failure", self._problem or "",
                {"pcrs": [m.pcr for m in mismatches], "mismatches": [
                    {"pcr": m.pcr, "actual": m.actual.hex() if m.actual else None,
                     "expected": [e.hex() for e in m.expected]} for m in mismatches]}))
            (log.info if policy_ok else log.warning)(
                "PCR policy " + ("passes" if policy_ok else "fails"),
                extra={"problem": self._problem})
        self._policy_ok = policy_ok
        self._publish(frozenset(selectors))
        return self.last

    def _set_unavailable(self, err: BaseException) -> None:
        problem = str(err) or type(err).__name__
        if self._available or self._problem != problem:
            log.warning("TPM unavailable", extra={"tcti": self.tcti, "problem": problem})
        if self._available:
            self._on_event(TpmEvent("tpm.unavailable", "failure", problem))
        self._available, self._problem = False, problem
        self.session = None
        self._publish(frozenset())

    def _publish(self, selectors: frozenset[str]) -> None:
        if selectors != self._selectors:
            self._selectors = selectors
            try:
                self._on_change()
            except Exception:
                log.exception("TPM on_change listener failed")
