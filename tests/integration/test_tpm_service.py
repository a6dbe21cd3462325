"""TpmService against a real swtpm: selectors, PCR policy, measured launches, reconnects,
the watchdog, the daemon-owned emulator and sealing. No mocks: the TPM is swtpm."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from datetime import timedelta
from pathlib import Path

import pytest

from ensign.attestors.base import AttestorError
from ensign.attestors.tpm import TpmAttestor, TpmConfig
from ensign.daemon.models import Caller
from ensign.daemon.tpm.emulator import SwtpmEmulator
from ensign.daemon.tpm.errors import TpmSealError
from ensign.daemon.tpm.structs import EvidenceInvalid
from tests.support.tpm import (
    data_dir,
    extend_out_of_band,
    manufactured_tpm,
    needs_swtpm,
    swtpm,
)
from tests.support.tpm_service import (
    EXE_A,
    EXE_B,
    ZERO,
    Recorder,
    external,
    run,
    service,
    verified,
    wait_for,
    zero_policy,
)

pytestmark = [needs_swtpm, pytest.mark.timeout(60)]
__all__ = ["data_dir", "manufactured_tpm", "swtpm"]  # fixtures used by name


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
            await wait_for(lambda: "tpm:policy:pass" not in svc.node_selectors())
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
