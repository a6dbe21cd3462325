"""Retention: copy old audit segments, with the checkpoints that cover them and the audit public
key, into an archive directory that verifies on its own; then remove them from the live log.

Three steps, so nothing is lost whoever does them (the daemon over the admin socket, or the CLI
on a stopped daemon's files):

1. `plan()`: the oldest closed segments (the newest `keep` stay, the open one among them), the
   checkpoints covering them plus the one their first record links to, and the public key.
2. `Archive.store()` into the archive directory: every file written whole and fsynced; a file
   already there must hold the same bytes (an archive never mixes chains or versions). The
   archive must then verify (`verify(dest)`) before anything is removed.
3. `drop()`: remove those segments from the live log, only if they are still the oldest, not
   the newest, byte for byte what was archived (sha256), and the last of them ends on a signed
   checkpoint, so the live log verifies from where the archive ends.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ensign.daemon.audit.segment import CHECKPOINTS, PUBLIC_KEY, SEGMENT, segments
from ensign.daemon.errors import InvalidRequest, UsageError
from ensign.daemon.files import ensure_private_dir, write_private

CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Plan:
    segments: tuple[Path, ...]     # oldest first
    checkpoints: bytes             # JSON lines
    public_key: bytes


def plan(audit_dir: Path, keep: int) -> Plan:
    if keep < 1:
        raise UsageError("--keep must be at least 1: the newest segment is the open one")
    found = [p for _, p in segments(audit_dir)]
    moving = tuple(found[:-keep]) if len(found) > keep else ()
    if not moving:
        return Plan((), b"", b"")
    names = {p.name for p in moving}
    lines = _checkpoint_lines(audit_dir / CHECKPOINTS)
    covering = [line for line, cp in lines if cp.get("segment") in names]
    # The checkpoint the first archived record links to (an earlier archive's last one).
    first = min(names)
    before = [line for line, cp in lines if str(cp.get("segment", "")) < first]
    chosen = ([before[-1]] if before else []) + covering
    return Plan(moving, b"".join(line + b"\n" for line in chosen),
                (audit_dir / PUBLIC_KEY).read_bytes())


def _checkpoint_lines(path: Path) -> list[tuple[bytes, dict[str, Any]]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_bytes().splitlines():
        if line.strip():
            try:
                out.append((line, dict(json.loads(line))))
            except ValueError:
                continue  # verify names a bad line; archiving copies only good ones
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class Archive:
    """An archive directory being written: one file at a time, each written whole."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        ensure_private_dir(dest)
        self.written: dict[str, str] = {}  # segment name -> sha256

    def store(self, name: str, data: bytes) -> None:
        if name == CHECKPOINTS:
            self._merge_checkpoints(data)
            return
        if name != PUBLIC_KEY and not _is_segment(name):
            raise InvalidRequest(f"unexpected archive file {name!r}")
        target = self.dest / name
        if target.exists():
            if target.read_bytes() != data:
                what = "another audit chain" if name == PUBLIC_KEY else "a different copy"
                raise UsageError(f"{target} already exists and holds {what}: archive into "
                                 "another directory")
        else:
            write_private(target, data)
        if name != PUBLIC_KEY:
            self.written[name] = hashlib.sha256(data).hexdigest()

    def _merge_checkpoints(self, data: bytes) -> None:
        path = self.dest / CHECKPOINTS
        have = {line for line, _ in _checkpoint_lines(path)}
        new = [line for line in data.splitlines() if line.strip() and line not in have]
        if not new:
            return
        merged = sorted(
            [(int(cp["seq"]), line) for line, cp in _checkpoint_lines(path)]
            + [(int(json.loads(line)["seq"]), line) for line in new])
        write_private(path, b"".join(line + b"\n" for _, line in merged))


def _is_segment(name: str) -> bool:
    return SEGMENT.fullmatch(name) is not None


def store_plan(p: Plan, dest: Path) -> dict[str, str]:
    """Step 2 on local files: write a plan's files into `dest`; returns name -> sha256."""
    out = Archive(dest)
    out.store(PUBLIC_KEY, p.public_key)
    for seg in p.segments:
        out.store(seg.name, seg.read_bytes())
    out.store(CHECKPOINTS, p.checkpoints)
    return out.written


def check_drop(audit_dir: Path, proofs: Mapping[str, str], open_segment: str,
               *, hashes: bool = True) -> list[Path]:
    """Step 3's checks: the segments `proofs` (name -> sha256) may leave the live log."""
    found = [p for _, p in segments(audit_dir)]
    names = sorted(proofs)
    if not names:
        return []
    if len(names) >= len(found) or [p.name for p in found[:len(names)]] != names:
        raise InvalidRequest("only the oldest segments can be removed, never the newest")
    if open_segment in proofs:
        raise InvalidRequest(f"{open_segment} is the open segment")
    chosen = found[:len(names)]
    if hashes:
        for p in chosen:
            if sha256_file(p) != proofs[p.name]:
                raise InvalidRequest(f"{p.name} differs from the archived copy: nothing removed")
    last = _last_record(chosen[-1])
    cps = {(int(cp["seq"]), str(cp["hash"]))
           for _, cp in _checkpoint_lines(audit_dir / CHECKPOINTS)}
    if last is not None and last not in cps:
        raise InvalidRequest(f"{names[-1]} does not end on a signed checkpoint: nothing removed")
    return chosen


def remove(audit_dir: Path, chosen: list[Path]) -> list[str]:
    for p in chosen:
        p.unlink()
    dfd = os.open(audit_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return [p.name for p in chosen]


def drop(audit_dir: Path, proofs: Mapping[str, str], open_segment: str = "") -> list[str]:
    """Step 3 on a stopped daemon's files."""
    return remove(audit_dir, check_drop(audit_dir, proofs, open_segment))


def _last_record(path: Path) -> tuple[int, str] | None:
    lines = path.read_bytes().splitlines()
    if not lines:
        return None
    tail = json.loads(lines[-1])
    return int(tail["seq"]), str(tail["hash"])
