"""Runs the enabled attestors for a caller and turns their findings into selectors.

Attestors run concurrently, each under a timeout. One failing attestor is logged and dropped
(its selectors are missing, so entries that need them do not match: fail closed); if all fail,
attestation fails. Afterwards the caller's process is re-checked, so evidence gathered about a
pid that changed hands is never used. Results are cached per process and executable image.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ensign.attestors.base import Attestor, AttestorError
from ensign.daemon.errors import AttestationError
from ensign.daemon.identity.liveness import check_alive, same_image
from ensign.daemon.models import Attestation, AttestedCaller, Caller
from ensign.daemon.observe import metrics

log = logging.getLogger(__name__)

ATTESTOR_TIMEOUT = 10.0
CACHE_SIZE = 4096
CACHE_TTL = 5.0  # seconds: supplementary groups and units can change within a process's life

_CacheKey = tuple[int, int, int, int, int, int]


class AttestationPipeline:
    def __init__(
        self,
        attestors: Sequence[Attestor],
        *,
        proc_root: Path = Path("/proc"),
        timeout: float = ATTESTOR_TIMEOUT,
        measure: Any = None,
    ) -> None:
        self._measure = measure  # TpmService.measure(sha256_hex, path): measured launches
        self._attestors = list(attestors)
        self._proc = proc_root
        self._proc_prefix = f"{proc_root}/"
        self._timeout = timeout
        # Cached as served on a hit (fresh=False), so a hit builds nothing.
        self._cache: OrderedDict[_CacheKey, tuple[float, AttestedCaller]] = OrderedDict()

    @property
    def names(self) -> list[str]:
        return [a.name for a in self._attestors]

    def states(self) -> dict[str, str]:
        return {a.name: a.state() for a in self._attestors}

    def problems(self) -> dict[str, str]:
        """Enabled attestors that cannot vouch for anyone now, and why."""
        found = {a.name: a.problem() for a in self._attestors}
        return {name: p for name, p in found.items() if p is not None}

    def cached(self, caller: Caller) -> AttestedCaller | None:
        """The cached result for this very process image if still fresh, without awaiting."""
        return self._hit(caller, self._cache_key(caller))

    def _hit(self, caller: Caller, key: _CacheKey | None) -> AttestedCaller | None:
        hit = self._cache.get(key) if key is not None else None
        if hit is None or time.monotonic() - hit[0] >= CACHE_TTL:
            return None
        check_alive(caller, self._proc)
        return hit[1]

    async def attest(self, caller: Caller) -> AttestedCaller:
        key = self._cache_key(caller)
        hit = self._hit(caller, key)
        if hit is not None:
            return hit
        now = time.monotonic()
        results = await asyncio.gather(
            *(self._run(a, caller) for a in self._attestors), return_exceptions=True
        )
        selectors: set[str] = set()
        evidence: dict[str, str] = {}
        failures: list[str] = []
        for attestor, result in zip(self._attestors, results, strict=True):
            if isinstance(result, BaseException):
                failures.append(f"{attestor.name}: {result}")
                log.warning("attestor failed", extra={
                    "attestor": attestor.name, "pid": caller.pid, "error": str(result)})
                continue
            selectors.update(f"{attestor.name}:{v}" for v in result.selectors)
            evidence.update({f"{attestor.name}.{k}": v for k, v in result.evidence.items()})
        # (4) Same process as at connect time? Otherwise the evidence is about someone else.
        check_alive(caller, self._proc)
        if failures and len(failures) == len(self._attestors):
            raise AttestationError("all attestors failed: " + "; ".join(failures))
        attested = AttestedCaller(caller=caller, selectors=frozenset(selectors), evidence=evidence)
        sha = evidence.get("unix.exe_sha256")
        if self._measure is not None and sha:
            try:
                await self._measure(sha, evidence.get("unix.exe_path", ""))
            except Exception as e:  # the TPM being down must not fail non-TPM identities
                log.warning("measured launch failed", extra={"sha256": sha, "error": str(e)})
        if key is not None and not failures:
            self._cache[key] = (now, replace(attested, fresh=False))
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return attested

    async def _run(self, attestor: Attestor, caller: Caller) -> Attestation:
        started = time.perf_counter()
        try:
            return await asyncio.wait_for(attestor.attest(caller), self._timeout)
        except TimeoutError:
            raise AttestorError(f"timed out after {self._timeout:g}s") from None
        finally:
            metrics.ATTESTATION_SECONDS.labels(attestor.name).observe(
                time.perf_counter() - started)

    def _cache_key(self, caller: Caller) -> _CacheKey | None:
        # execve keeps the pid and start time, so the executable's identity is part of the key.
        try:
            st = os.stat(f"{self._proc_prefix}{caller.pid}/exe")  # hot path: no pathlib
        except OSError:
            return None
        same_image(caller, st)
        return (caller.pid, caller.start_ticks, caller.uid, st.st_dev, st.st_ino, st.st_ctime_ns)

    async def aclose(self) -> None:
        for a in self._attestors:
            try:
                await a.aclose()
            except Exception:
                log.exception("attestor close failed", extra={"attestor": a.name})
