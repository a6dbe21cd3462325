"""TPM quote verifications per second: Ensign's pure-Python verifier beside Keylime's.

The quotes are real: an swtpm (manufactured by Ensign's emulator code) signs 256 quotes with
the node's ECC P-256 AK over fresh nonces. Both verifiers then check the same quotes in the
same process, one after the other, rounds alternating:

- Ensign: `verify_quote()` from the AK's TPMT_PUBLIC bytes, as in `ensign tpm verify-evidence`
  (parse the AK, check its attributes, ECDSA signature, TPMS_ATTEST, nonce, PCR selection and
  PCR digest). The parsed AK is cached by its bytes (every quote here has the same AK, as for
  a verifier polling a node), which saves about a tenth of each check.
- Baseline: Keylime's own `keylime.tpm.tpm_util.checkquote()` (`pip install keylime`) on the
  same quotes, with its inputs prepared beforehand in its formats (AK as PEM, PCR values as
  a tpm2-tools pcrs blob); `make bench` installs keylime from PyPI (the `bench` extra). Run
  without it (`python -m bench` in a venv without the extra), the baseline is a bare
  `cryptography` ECDSA verify of each quote (the signature check alone, the floor of any
  verifier), and the figure is reported missed: it is not the comparison the target names.

Target: >= 1.0x the baseline and >= 2,500 verifications/s.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ensign.attestors.tpm import TpmConfig
from ensign.daemon.tpm import structs as ts
from ensign.daemon.tpm.service import TpmService

from ._stats import meets, ratio, summarize

NAME = "tpm_quote_verifications"
TARGET = ">= 1.0"
FLOOR = 2500.0
QUOTES = 256
NO_KEYLIME = ("bare cryptography ECDSA verify (keylime not installed: `make bench` installs it;"
              " this row is not the Keylime comparison)")


@dataclass(frozen=True)
class Sample:
    nonce: bytes
    attest: bytes
    signature: bytes
    pcrs: dict[int, bytes]
    pcrblob: bytes  # tpm2-tools' pcrs file format (what Keylime's checkquote reads)


def _pcrblob(values: dict[int, bytes]) -> bytes:
    """tpm2-tools' in-memory TPML_PCR_SELECTION + TPML_DIGEST list (little endian, padded)."""
    pcrs = sorted(values)
    mask = sum(1 << p for p in pcrs)
    sel = struct.pack("<I", 1) + struct.pack("<HB", ts.ALG_SHA256, 3) + mask.to_bytes(3, "little")
    sel += b"\0\0"  # alignment of TPMS_PCR_SELECTION
    sel += (struct.pack("<HB", 0, 0) + bytes(5)) * 15
    chunks = [pcrs[i:i + 8] for i in range(0, len(pcrs), 8)]
    out = sel + struct.pack("<I", len(chunks))
    for chunk in chunks:
        out += struct.pack("<I", len(chunk))
        for i in range(8):
            d = values[chunk[i]] if i < len(chunk) else b""
            out += struct.pack("<H", len(d)) + d.ljust(64, b"\0")
    return out


async def _make_quotes(data_dir: Path) -> tuple[bytes, list[int], list[Sample]]:
    svc = TpmService(TpmConfig(enabled=True, emulator=True), data_dir)
    await svc.start()
    try:
        if not svc.available:
            raise RuntimeError(f"swtpm not available: {svc.problem}")
        samples = []
        for _ in range(QUOTES):
            nonce = secrets.token_bytes(32)
            ev = await svc.evidence(nonce)
            samples.append(Sample(nonce, ev.quote, ev.signature, ev.pcrs, _pcrblob(ev.pcrs)))
        return ev.ak_public, svc.quote_pcrs, samples
    finally:
        await svc.aclose()


def _rate(check: Callable[[Sample], object], samples: list[Sample], seconds: float) -> float:
    """Checks per second of this thread's CPU time: the checks are CPU-bound and run on one
    thread, so this is the rate of one dedicated core, and it does not swing with whatever
    else a shared machine runs (wall-clock rates here varied 3x between runs)."""
    n, start, cpu = 0, time.perf_counter(), time.thread_time()
    while time.perf_counter() - start < seconds:
        for s in samples:
            check(s)
        n += len(samples)
    return n / (time.thread_time() - cpu)


def _baseline(ak_public: bytes) -> tuple[str, Callable[[Sample], object]]:
    key = ts.parse_public(ak_public).key
    try:
        import logging

        logging.getLogger("keylime").setLevel(logging.ERROR)  # it warns about missing /etc
        from keylime.tpm import tpm_util
    except ImportError:
        def ecdsa(s: Sample) -> None:
            sig = ts.parse_signature(s.signature)
            key.verify(sig.value, s.attest, ec.ECDSA(hashes.SHA256()))

        return NO_KEYLIME, ecdsa
    pem = key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)

    def keylime(s: Sample) -> object:
        return tpm_util.checkquote(pem, s.nonce, s.signature, s.attest, s.pcrblob, "sha256")

    import keylime as keylime_pkg

    version = getattr(keylime_pkg, "__version__", "")
    if not version:
        from importlib.metadata import version as dist_version

        version = dist_version("keylime")
    return f"keylime {version} tpm_util.checkquote", keylime


def run(quick: bool) -> dict[str, dict[str, Any]]:
    reps, seconds = (2, 0.5) if quick else (5, 1.5)
    if shutil.which("swtpm") is None:
        raise RuntimeError("swtpm is not installed (apt-get install swtpm swtpm-tools)")
    tmp = Path(tempfile.mkdtemp(prefix="ensb", dir="/tmp"))
    try:
        ak_public, pcrs, samples = asyncio.run(_make_quotes(tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def ensign(s: Sample) -> object:
        return ts.verify_quote(ak_public, s.attest, s.signature, s.nonce,
                               {ts.ALG_SHA256: s.pcrs}, pcrs)

    def ensign_uncached(s: Sample) -> object:  # the AK parsed afresh for every quote
        ak = ts._parse_public.__wrapped__(ak_public)
        return ts.verify_quote(ak, s.attest, s.signature, s.nonce, {ts.ALG_SHA256: s.pcrs}, pcrs)

    label, baseline = _baseline(ak_public)
    for s in samples[:8]:  # every verifier must accept the quotes before anything is timed
        ensign(s)
        ensign_uncached(s)
        baseline(s)
    runs: dict[str, list[float]] = {"baseline": [], "ensign": [], "uncached": []}
    for rep in range(reps):
        runs["baseline"].append(_rate(baseline, samples, seconds))
        runs["ensign"].append(_rate(ensign, samples, seconds))
        runs["uncached"].append(_rate(ensign_uncached, samples, seconds))
        print(f"  {NAME} round {rep + 1}/{reps}: baseline {runs['baseline'][-1]:8.0f}/s, "
              f"ensign {runs['ensign'][-1]:8.0f}/s (AK not cached "
              f"{runs['uncached'][-1]:8.0f}/s)", file=sys.stderr)
    uncached = summarize(runs["uncached"])
    ens, base = summarize(runs["ensign"]), summarize(runs["baseline"])
    value = ratio(ens["median"], base["median"])
    return {NAME: {
        "unit": "verifications/CPU-s",
        "ensign": ens,
        "baseline": base,
        "ratio": value,
        "target": TARGET,
        "met": meets(value, TARGET) and ens["median"] >= FLOOR and label != NO_KEYLIME,
        "note": f"baseline: {label}; {QUOTES} swtpm quotes (ECC P-256 AK, {len(pcrs)} PCRs), "
                f"same AK throughout (Ensign caches its parse; without the cache "
                f"{uncached['median']:.0f}/s, "
                f"{ratio(uncached['median'], base['median']):.2f}x), one core; floor "
                f"{FLOOR:.0f}/s ({'met' if ens['median'] >= FLOOR else 'MISSED'})",
        "ensign_ak_uncached": uncached,
        "setup": {"quotes": QUOTES, "reps": reps, "seconds": seconds, "pcrs": pcrs,
                  "cpu_count": os.cpu_count()},
    }}
