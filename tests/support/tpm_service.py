"""TpmService on swtpm, no daemon: a service with recorded callbacks, and helpers to wait on it
and verify its evidence. Shared by the TPM service suites."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from ensign.attestors.tpm import TpmConfig
from ensign.daemon.tpm import structs as ts
from ensign.daemon.tpm.emulator import SwtpmEmulator
from ensign.daemon.tpm.evidence import spki, verify_evidence
from ensign.daemon.tpm.policy import PcrPolicy
from ensign.daemon.tpm.service import TpmEvent, TpmService
from tests.support.tpm import ca_files

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
