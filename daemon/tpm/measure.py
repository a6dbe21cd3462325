"""The measurement log: which executables were extended into `measure_pcr`, in order.

One JSON object per line in `data_dir/tpm/measurements.jsonl`, appended and fsynced *before*
the PCR is extended (write-ahead): after a crash between the two, the log is one step ahead
of the PCR, which reconciliation detects and completes. The reverse order would leave a PCR
extension the log cannot explain.

The log is a series of epochs. An epoch starts with an `epoch` line recording the PCR value it
starts from (`base`: zeros after a TPM reset) and the TPM's reset/restart counters at that time;
each `measure` line after it is one extension. Replaying an epoch, base then
sha256(value || measurement) per entry, must give the PCR's current value. A TPM restart
(counters changed) or a PCR value the log cannot explain (someone extended it out of band)
starts a new epoch; remote verifiers require base = zeros, so an unexplained start shows.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ensign.daemon.files import ensure_private_dir
from ensign.daemon.tpm import structs as ts

log = logging.getLogger(__name__)

ZERO = bytes(32)


@dataclass(frozen=True, slots=True)
class Measurement:
    sha256: str  # hex, the executable image's digest (what is extended)
    path: str
    at: str  # RFC 3339


@dataclass(slots=True)
class Epoch:
    base: bytes
    reset_count: int
    restart_count: int
    reason: str
    at: str
    entries: list[Measurement] = field(default_factory=list)

    def expected(self) -> bytes:
        return ts.replay(self.base, [bytes.fromhex(m.sha256) for m in self.entries])

    def applied_prefix(self, value: bytes) -> int | None:
        """How many entries the PCR value reflects, or None if no prefix replays to it."""
        running, found = self.base, (0 if self.base == value else None)
        for i, m in enumerate(self.entries, 1):
            running = ts.extend(running, bytes.fromhex(m.sha256))
            if running == value:
                found = i
        return found

    def as_dict(self) -> dict[str, Any]:
        return {"base": self.base.hex(), "reset_count": self.reset_count,
                "restart_count": self.restart_count, "reason": self.reason, "at": self.at,
                "entries": [{"sha256": m.sha256, "path": m.path, "at": m.at}
                            for m in self.entries]}


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class MeasurementLog:
    """Not thread-safe: the TPM service calls it under its PCR lock."""

    def __init__(self, path: Path, pcr: int) -> None:
        self.path = path
        self.pcr = pcr
        self.epoch: Epoch | None = None
        self.total = 0

    def load(self) -> None:
        """Read the last epoch. A torn last line (crash mid-write) is ignored and cut off."""
        ensure_private_dir(self.path.parent)
        self.epoch, self.total = None, 0
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        good = 0
        for line in data.splitlines(keepends=True):
            try:
                rec = json.loads(line)
                self._apply(rec)
            except (ValueError, KeyError, TypeError):
                log.warning("measurement log: unreadable line cut off",
                            extra={"path": str(self.path), "offset": good})
                break
            good += len(line)
        if good != len(data):
            with self.path.open("r+b") as f:
                f.truncate(good)

    def _apply(self, rec: dict[str, Any]) -> None:
        if rec["event"] == "epoch":
            self.epoch = Epoch(bytes.fromhex(rec["base"]), int(rec["reset_count"]),
                               int(rec["restart_count"]), str(rec["reason"]), str(rec["at"]))
        elif rec["event"] == "measure":
            if self.epoch is None or int(rec["pcr"]) != self.pcr:
                raise ValueError("measurement outside an epoch or for another PCR")
            self.epoch.entries.append(Measurement(str(rec["sha256"]), str(rec["path"]),
                                                  str(rec["at"])))
            self.total += 1
        else:
            raise ValueError(f"unknown event {rec['event']!r}")

    def _write(self, rec: dict[str, Any]) -> None:
        line = json.dumps(rec, sort_keys=True, separators=(",", ":")).encode() + b"\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._apply(rec)

    def new_epoch(self, base: bytes, reset_count: int, restart_count: int, reason: str) -> None:
        self._write({"event": "epoch", "base": base.hex(), "reset_count": reset_count,
                     "restart_count": restart_count, "reason": reason, "pcr": self.pcr,
                     "at": now_iso()})

    def append(self, sha256_hex: str, path: str) -> Measurement:
        self._write({"event": "measure", "pcr": self.pcr, "sha256": sha256_hex, "path": path,
                     "at": now_iso()})
        assert self.epoch is not None
        return self.epoch.entries[-1]

    def seen(self) -> set[str]:
        return {m.sha256 for m in self.epoch.entries} if self.epoch else set()
