"""TpmService when the TPM goes away, hangs, answers garbage or (daemon-owned) dies: identities
that need it fail, the rest go on, and it comes back without a restart. The TPM is swtpm."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path

import pytest

from ensign.daemon.errors import InvalidRequest
from ensign.daemon.tpm.emulator import SwtpmEmulator
from ensign.daemon.tpm.errors import TpmUnavailable
from tests.support.tpm import (
    data_dir,
    manufactured_tpm,
    needs_swtpm,
    pause,
    resume,
    swtpm,
)
from tests.support.tpm_service import (
    EXE_A,
    EXE_B,
    Recorder,
    external,
    run,
    service,
    verified,
    wait_for,
)

pytestmark = [needs_swtpm, pytest.mark.timeout(60)]
__all__ = ["data_dir", "manufactured_tpm", "swtpm"]  # fixtures used by name


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
            with pytest.raises(TpmUnavailable, match=r"did not answer within 0\.5s"):
                await svc.refresh()
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
