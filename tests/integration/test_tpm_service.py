"""TpmService against a real swtpm: selectors, PCR policy, measured launches, reconnects,
the watchdog, the daemon-owned emulator and sealing. No mocks: the TPM is swtpm."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ensign.attestors.base import AttestorError
from ensign.attestors.tpm import TpmAttestor, TpmConfig
from ensign.daemon.errors import InvalidRequest
from ensign.daemon.models import Caller
from ensign.daemon.tpm import structs as ts
from ensign.daemon.tpm.emulator import SwtpmEmulator
from ensign.daemon.tpm.errors import TpmSealError, TpmUnavailable
from ensign.daemon.tpm.evidence import spki, verify_evidence
from ensign.daemon.tpm.policy import PcrPolicy
from ensign.daemon.tpm.service import TpmEvent, TpmService
from ensign.daemon.tpm.structs import EvidenceInvalid
from tests.support.tpm import (
    ca_files,
    data_dir,
    extend_out_of_band,
    manufactured_tpm,
    needs_swtpm,
    pause,
    resume,
    swtpm,
)

pytestmark = [needs_swtpm, pytest.mark.timeout(60)]
__all__ = ["data_dir", "manufactured_tpm", "swtpm"]  # fixtures used by name

T = TypeVar("T")
ZERO = bytes(32)
EXE_A, EXE_B = hashlib.sha256(b"agent a").hexdigest(), hashlib.sha256(b"agent b").hexdigest()


class Recorder:
    def __init__(self) -> None:
        self.changes = 0
        self.events: list[TpmEvent] = []

    def change(self) -> None:
        self.changes += 1

    def types(self) -> list[str]:
        return [e.type for e in self.events]


def service(data_dir: Path, rec: Recorder | None = None, **cfg: Any) -> TpmService:
    rec = rec or Recorder()
    return TpmService(TpmConfig(enabled=True, **cfg), data_dir, rec.change, rec.events.append)


def external(emu: SwtpmEmulator, **cfg: Any) -> dict[str, Any]:
    return {"tcti": emu.tcti, "ek_ca_files": ca_files(emu.dir), **cfg}


def run(fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(fn())  # type: ignore[arg-type]


async def wait_for(cond: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def zero_policy(path: Path, pcrs: range = range(8)) -> Path:
    path.write_text(json.dumps(PcrPolicy.document({i: ZERO for i in pcrs})))
    return path


async def verified(svc: TpmService, policy: PcrPolicy | None = None) -> Any:
    nonce = secrets.token_bytes(32)
    ev = await svc.evidence(nonce)
    ak = spki(ts.parse_public(ev.ak_public).key)
    return verify_evidence(ev, nonce, policy=policy, trusted_ak=ak)


def test_emulator_selectors_and_identity_across_restarts(data_dir: Path) -> None:
    rec = Recorder()

    async def first() -> tuple[frozenset[str], str]:
        svc = service(data_dir, rec, emulator=True)
        await svc.start()
        try:
            assert svc.available and svc.problem is None
            sel = svc.node_selectors()
            assert {s.split(":")[1] for s in sel} == {"ek", "pcr"}
            assert f"tpm:pcr:sha256:7:{ZERO.hex()}" in sel and "tpm:policy:pass" not in sel
            attested = await TpmAttestor(svc.config, service=svc).attest(Caller(1, 0, 0, 1))
            assert set(attested.selectors) == {s.removeprefix("tpm:") for s in sel}
            assert attested.evidence == {"quote_digest": svc.quote_digest}
            assert len(svc.quote_digest) == 64
            status = await svc.status()
            assert status["ek_check"].startswith("chains to CN=swtpm-localca")
            assert len(status["handles"]["transient"]) == 1  # only the AK stays loaded
            return sel, status["ak_name"]
        finally:
            await svc.aclose()

    sel, ak = run(first)
    assert rec.types() == ["tpm.ak_created", "tpm.epoch", "tpm.available"]
    assert not any(p.read_text().strip() and Path(f"/proc/{p.read_text().strip()}").exists()
                   for p in data_dir.rglob("swtpm.pid")), "swtpm left running"

    async def again() -> tuple[frozenset[str], str]:
        svc = service(data_dir, rec2, emulator=True)
        await svc.start()
        try:
            return svc.node_selectors(), (await svc.status())["ak_name"]
        finally:
            await svc.aclose()

    rec2 = Recorder()
    assert run(again) == (sel, ak)  # same EK, same saved AK
    assert "tpm.ak_created" not in rec2.types()
    with pytest.raises(AttestorError, match="not running"):
        run(lambda: TpmAttestor(TpmConfig()).attest(Caller(1, 0, 0, 1)))


def test_policy_failure_withdraws_policy_pass_within_one_period(
        swtpm: SwtpmEmulator, data_dir: Path) -> None:
    rec = Recorder()

    async def go() -> None:
        svc = service(data_dir, rec, policy=zero_policy(data_dir / "p.json"),
                      quote_interval=timedelta(milliseconds=200), **external(swtpm))
        await svc.start()
        try:
            assert "tpm:policy:pass" in svc.node_selectors() and svc.problem is None
            before = rec.changes
            extend_out_of_band(swtpm.tcti, 7)
            t0 = time.monotonic()
            await wait_for(lambda: "tpm:policy:pass" not in svc.node_selectors())
            assert time.monotonic() - t0 < 1.0
            assert rec.changes > before and svc.available
            assert svc.problem and svc.problem.startswith("PCR policy failed: PCR 7 is ")
            passed, failed = [e for e in rec.events if e.type == "tpm.policy"]
            assert passed.result == "success" and failed.result == "failure"
            assert failed.details["pcrs"] == [7] and "PCR 7 is" in failed.reason
            with pytest.raises(EvidenceInvalid, match="PCR policy fails: PCR 7"):
                await verified(svc, svc.policy)
        finally:
            await svc.aclose()

    run(go)


def test_leftover_transient_handles_are_flushed_at_start(
        swtpm: SwtpmEmulator, data_dir: Path) -> None:
    from tpm2_pytss import ESAPI
    from tpm2_pytss.constants import ESYS_TR

    with ESAPI(swtpm.tcti) as ctx:  # a "crashed" client leaves two keys loaded
        for _ in range(2):
            ctx.create_primary(None, "ecc256", ESYS_TR.OWNER)

    async def go() -> None:
        svc = service(data_dir, **external(swtpm))
        await svc.start()
        try:
            status = await svc.status()
            assert status["flushed_at_connect"] == ["0x80000000", "0x80000001"]
            assert len(status["handles"]["transient"]) == 1
        finally:
            await svc.aclose()

    run(go)


def test_measured_launches_replay_and_survive_a_crash_between_log_and_extend(
        swtpm: SwtpmEmulator, data_dir: Path) -> None:
    async def first() -> None:
        svc = service(data_dir, **external(swtpm))
        await svc.start()
        try:
            for sha in (EXE_A, EXE_B, EXE_A):
                await svc.measure(sha, f"/opt/{sha[:4]}")
            v = await verified(svc)
            assert [m.sha256 for m in v.measured] == [EXE_A, EXE_B]
        finally:
            await svc.aclose()

    run(first)
    # the daemon logged a third launch, then died before extending the PCR
    crash = hashlib.sha256(b"agent c").hexdigest()
    log = data_dir / "tpm" / "measurements.jsonl"
    with log.open("a") as f:
        f.write(json.dumps({"event": "measure", "pcr": 23, "sha256": crash, "path": "/opt/c",
                            "at": "2026-01-01T00:00:00Z"}) + "\n")

    async def second() -> None:
        svc = service(data_dir, **external(swtpm))
        await svc.start()
        try:
            v = await verified(svc)
            assert [m.path for m in v.measured] == [f"/opt/{EXE_A[:4]}", f"/opt/{EXE_B[:4]}",
                                                    "/opt/c"]
            await svc.measure(crash, "/opt/c")  # already measured: no second extension
            assert len((await verified(svc)).measured) == 3
        finally:
            await svc.aclose()

    run(second)


def test_out_of_band_extension_of_the_measure_pcr_is_not_hidden(
        swtpm: SwtpmEmulator, data_dir: Path) -> None:
    rec = Recorder()

    async def go() -> None:
        svc = service(data_dir, rec, **external(swtpm))
        await svc.start()
        try:
            await svc.measure(EXE_A, "/opt/a")
            extend_out_of_band(swtpm.tcti, 23)
            await svc.refresh()
            assert rec.events[-1].type == "tpm.epoch" and rec.events[-1].result == "failure"
            with pytest.raises(EvidenceInvalid, match="extended outside the log"):
                await verified(svc)
        finally:
            await svc.aclose()

    run(go)


def test_tpm_gone_and_back(swtpm: SwtpmEmulator, data_dir: Path) -> None:
    rec = Recorder()

    async def go() -> None:
        svc = service(data_dir, rec, **external(swtpm))
        await svc.start()
        try:
            await svc.measure(EXE_A, "/opt/a")
            swtpm.stop()
            with pytest.raises(TpmUnavailable):
                await svc.refresh()
            assert not svc.available and svc.node_selectors() == frozenset()
            assert "connection failed" in (svc.problem or "")
            with pytest.raises(TpmUnavailable):
                await svc.measure(EXE_B, "/opt/b")
            assert rec.types()[-1] == "tpm.unavailable"
            swtpm.start()  # same state: same EK and AK; PCRs reset like a reboot
            await svc.refresh()
            assert svc.available and any(s.startswith("tpm:ek:") for s in svc.node_selectors())
            assert svc.log.epoch is not None and svc.log.epoch.reason.startswith("TPM restarted")
            await svc.measure(EXE_A, "/opt/a")  # a new boot: measured again
            assert [m.sha256 for m in (await verified(svc)).measured] == [EXE_A]
        finally:
            await svc.aclose()

    run(go)


def test_watchdog_abandons_a_hung_tpm_and_recovers(swtpm: SwtpmEmulator, data_dir: Path) -> None:
    async def go() -> None:
        svc = service(data_dir, command_timeout=timedelta(milliseconds=500), **external(swtpm))
        await svc.start()
        try:
            pause(swtpm)
            t0 = time.monotonic()
            with pytest.raises(TpmUnavailable, match=r"did not answer within 0\.5s"):
                await svc.refresh()
            assert time.monotonic() - t0 < 1.5
            with pytest.raises(TpmUnavailable, match="watchdog"):  # no second stuck thread
                await svc.refresh()
            resume(swtpm)
            await wait_for(lambda: svc.available, timeout=10)  # the background loop retries
        finally:
            resume(swtpm)
            await svc.aclose()

    run(go)


def test_queued_work_and_garbage_are_not_taken_for_a_dead_tpm(
        swtpm: SwtpmEmulator, data_dir: Path) -> None:
    async def go() -> None:
        svc = service(data_dir, command_timeout=timedelta(seconds=1.5), **external(swtpm))
        await svc.start()
        try:
            session = svc.session
            # 3s of queued commands, none longer than 0.1s: the watchdog times each command,
            # not its wait in the queue (a burst of requests is not a hung TPM)
            t0 = time.monotonic()
            await asyncio.gather(*(svc.worker.acall(lambda s: time.sleep(0.1))
                                   for _ in range(30)), svc.refresh(), svc.status())
            assert time.monotonic() - t0 > 3.0 and svc.available
            with pytest.raises(InvalidRequest, match="malformed credential challenge"):
                await svc.evidence(b"n" * 16, (b"\x00\x09junk", b"\x00\x01x"))
            with pytest.raises(InvalidRequest, match="does not activate on this TPM"):
                await svc.evidence(b"n" * 16, (b"\x00\x05junk!", b"\x00\x01x"))
            await svc.refresh()
            assert svc.available and svc.session is session  # never reconnected
            # one command that does overrun, with others queued behind it
            slow = svc.worker.acall(lambda s: time.sleep(2.0))
            queued = svc.worker.acall(lambda s: None)
            results = await asyncio.gather(slow, queued, return_exceptions=True)
            assert all(isinstance(r, TpmUnavailable) for r in results), results
            await wait_for(lambda: svc.available)  # a fresh connection once it returns
        finally:
            await svc.aclose()

    run(go)


def test_owned_emulator_is_restarted_when_it_dies(data_dir: Path) -> None:
    import os
    import signal

    async def go() -> None:
        svc = service(data_dir, emulator=True, quote_interval=timedelta(milliseconds=200))
        await svc.start()
        try:
            assert svc.emulator is not None and svc.emulator.pid
            old = svc.emulator.pid
            os.kill(old, signal.SIGKILL)
            await wait_for(lambda: not svc.available)
            await wait_for(lambda: svc.available)
            assert svc.emulator.pid not in (None, old)
        finally:
            await svc.aclose()

    run(go)


def test_sealed_secret_follows_the_boot_state(swtpm: SwtpmEmulator, data_dir: Path) -> None:
    secret = secrets.token_bytes(300)  # larger than a TPM sealed object can hold

    async def go() -> bytes:
        svc = service(data_dir, **external(swtpm))
        await svc.start()
        try:
            blob = await asyncio.to_thread(svc.seal, secret)
            assert await asyncio.to_thread(svc.unseal, blob) == secret
            extend_out_of_band(swtpm.tcti, 3)
            with pytest.raises(TpmSealError, match=r"PCR 3 was 0000000000000000\.\. now"):
                await asyncio.to_thread(svc.unseal, blob)
            return blob
        finally:
            await svc.aclose()

    blob = run(go)

    async def after_daemon_restart() -> None:
        svc = service(data_dir, **external(swtpm))
        await svc.start()
        try:
            with pytest.raises(TpmSealError, match="boot state changed"):
                svc.unseal(blob)
        finally:
            await svc.aclose()

    run(after_daemon_restart)
    swtpm.stop()
    swtpm.start()  # a reboot: PCR 3 is back to its sealed value

    async def after_reboot() -> None:
        svc = service(data_dir, policy=zero_policy(data_dir / "p.json"), **external(swtpm))
        await svc.start()
        try:
            assert svc.unseal(blob) == secret
            extend_out_of_band(swtpm.tcti, 5)
            with pytest.raises(TpmSealError, match="refusing to seal"):
                svc.seal(b"x")
        finally:
            await svc.aclose()

    run(after_reboot)


def test_ek_from_an_untrusted_manufacturer_makes_the_tpm_unusable(
        swtpm: SwtpmEmulator, data_dir: Path) -> None:
    from datetime import UTC, datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Other TPM Vendor CA")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    other = data_dir / "other-ca.pem"
    other.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    async def go() -> None:
        svc = service(data_dir, tcti=swtpm.tcti, ek_ca_files=[other])
        await svc.start()
        try:
            assert not svc.available and svc.node_selectors() == frozenset()
            assert "does not chain to a trusted manufacturer CA" in (svc.problem or "")
        finally:
            await svc.aclose()

    run(go)
