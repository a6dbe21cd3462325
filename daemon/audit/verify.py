"""`ensign audit verify`: recompute the chain and check the signed checkpoints, offline.

Names the first record that is missing, altered or out of order. Works on a stopped daemon's
files and on archived segments (a log may start after a checkpoint whose segments were moved
away: the first record must then link to that checkpoint).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ensign.daemon.audit.event import GENESIS, canonical, record_hash
from ensign.daemon.audit.segment import CHECKPOINTS, PUBLIC_KEY, chain_id, segments


@dataclass
class Report:
    ok: bool = True
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    records: int = 0
    checkpoints: int = 0
    first_seq: int = 0
    last_seq: int = 0

    def fail(self, message: str) -> None:
        self.ok = False
        self.problems.append(message)


def _load_public_key(audit_dir: Path, report: Report) -> ec.EllipticCurvePublicKey | None:
    path = audit_dir / PUBLIC_KEY
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as e:
        report.fail(f"cannot read the audit public key {path}: {e}")
        return None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        report.fail(f"{path} is not an EC public key")
        return None
    return key


def _checkpoints(audit_dir: Path, key: ec.EllipticCurvePublicKey | None,
                 report: Report) -> list[dict[str, Any]]:
    path = audit_dir / CHECKPOINTS
    if not path.exists():
        return []
    return checked_checkpoints(path.read_bytes().splitlines(), key, report)


def checked_checkpoints(lines: Iterable[bytes | str], key: ec.EllipticCurvePublicKey | None,
                        report: Report, name: str = "checkpoint line") -> list[dict[str, Any]]:
    """The checkpoints whose signature verifies with `key`; each other one is a failure."""
    out = []
    for n, line in enumerate(lines, 1):
        try:
            cp = json.loads(line)
            body = {k: v for k, v in cp.items() if k != "sig"}
            sig = base64.b64decode(cp["sig"])
        except (ValueError, KeyError, TypeError):
            report.fail(f"{name} {n} is not valid (altered or truncated)")
            continue
        if key is not None:
            try:
                key.verify(sig, canonical(body), ec.ECDSA(hashes.SHA256()))
            except InvalidSignature:
                report.fail(f"{name} {n} (seq {cp.get('seq')}): signature does not verify")
                continue
        out.append(cp)
    return out


class ChainCheck:
    """Follows one chain record by record: sequence, links, hashes, chain id, then checks the
    checkpoints against what it saw. `add` returns False once the chain is broken."""

    def __init__(self, report: Report, chain: str | None, cps: list[dict[str, Any]],
                 from_checkpoint: int | None = None) -> None:
        self.report = report
        self.chain = chain
        self.cps = cps
        self.by_seq = {int(cp["seq"]): cp for cp in cps}
        self.expected_seq: int | None = None
        self.prev = GENESIS
        self.hashes_at: dict[int, str] = {}
        self.skip_to = 0  # records at or below this seq are not checked (--from-checkpoint)
        self.start_segment = ""  # that checkpoint's segment: earlier ones hold nothing after it
        report.checkpoints = len(cps)
        if from_checkpoint is not None:
            start = self.by_seq.get(from_checkpoint)
            if start is None:
                report.fail(f"no valid checkpoint at seq {from_checkpoint}")
            else:
                self.skip_to, self.expected_seq = from_checkpoint, from_checkpoint + 1
                self.prev = str(start["hash"])
                self.start_segment = str(start.get("segment", ""))
                report.first_seq = from_checkpoint + 1
                report.notes.append(f"checked from checkpoint {from_checkpoint}: records "
                                    f"1..{from_checkpoint} were not checked")

    def add(self, where: str, line: bytes | str) -> bool:
        report = self.report
        try:
            record = json.loads(line)
            seq = int(record["seq"])
        except (ValueError, KeyError, TypeError):
            report.fail(f"{where}: not a valid record (altered or truncated)")
            return False
        if seq <= self.skip_to:
            if seq == self.skip_to and record.get("hash") != self.prev:
                report.fail(f"{where} (seq {seq}): does not match the checkpoint at seq "
                            f"{seq} (altered)")
                return False
            return True
        if self.expected_seq is None:
            self.expected_seq = seq
            if seq != 1:
                start = self.by_seq.get(seq - 1)
                if start is None:
                    report.fail(f"{where}: log starts at seq {seq} and no checkpoint "
                                f"covers seq {seq - 1} (records 1..{seq - 1} are missing)")
                    return False
                self.prev = str(start["hash"])
                report.notes.append(f"starts after checkpoint {seq - 1} "
                                    "(earlier segments archived)")
            report.first_seq = seq
        if seq != self.expected_seq:
            what = ("missing or out of order" if seq > self.expected_seq
                    else "out of order or repeated")
            report.fail(f"{where}: seq {seq} where {self.expected_seq} was expected "
                        f"(record {self.expected_seq} is {what})")
            return False
        if record.get("prev") != self.prev:
            report.fail(f"{where} (seq {seq}): does not link to the record before it "
                        "(a record was removed, reordered or altered)")
            return False
        if record_hash(record) != record.get("hash"):
            report.fail(f"{where} (seq {seq}): content does not match its hash (altered)")
            return False
        if self.chain is not None and record.get("chain") != self.chain:
            report.fail(f"{where} (seq {seq}): belongs to another chain")
            return False
        self.hashes_at[seq] = record["hash"]
        self.prev = record["hash"]
        self.expected_seq = seq + 1
        report.records += 1
        report.last_seq = seq
        return True

    def finish(self, first_segment: str | None = None) -> Report:
        """`first_segment`: the name of the oldest segment read, if they are files."""
        report = self.report
        if report.records == 0 and self.skip_to:
            report.last_seq = self.skip_to  # nothing after the checkpoint yet
        elif report.records == 0 and first_segment is not None:
            # Only empty segments: fine right after an archive, if every checkpoint names a
            # segment that was moved away (the log then resumes after the newest of them).
            moved = [int(cp["seq"]) for cp in self.cps
                     if str(cp.get("segment", "")) < first_segment]
            if moved:
                report.first_seq, report.last_seq = max(moved) + 1, max(moved)
                report.notes.append(f"no records after checkpoint {max(moved)} yet "
                                    "(earlier segments archived)")
        for cp in self.cps:
            seq = int(cp["seq"])
            if seq > report.last_seq:
                report.fail(f"truncated: checkpoint at seq {seq} but the log ends at seq "
                            f"{report.last_seq}")
            elif seq >= report.first_seq and self.hashes_at.get(seq) != cp["hash"]:
                report.fail(f"checkpoint at seq {seq} does not match the record there (altered)")
        last_cp = max((int(cp["seq"]) for cp in self.cps), default=0)
        if report.ok and report.last_seq > last_cp:
            report.notes.append(f"records {last_cp + 1}..{report.last_seq} come after the last "
                                "checkpoint: their removal could not be detected")
        return report


def verify(audit_dir: Path, from_checkpoint: int | None = None) -> Report:
    """Check the log in `audit_dir`. With `from_checkpoint` N, records up to N are not checked
    (they may be archived or still present): the chain is checked from the record after the
    signed checkpoint at N, which must link to it; a record N still present must match it."""
    report = Report()
    key = _load_public_key(audit_dir, report)
    chain = chain_id(key) if key is not None else None
    cps = _checkpoints(audit_dir, key, report)
    found = segments(audit_dir)
    if not found:
        report.fail(f"no audit segments in {audit_dir}")
        return report
    check = ChainCheck(report, chain, cps, from_checkpoint)
    if not report.ok and from_checkpoint is not None and check.expected_seq is None:
        return report
    found = [(n, p) for n, p in found if p.name >= check.start_segment]
    for _, path in found:
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            report.fail(f"{path.name}: ends inside a record (truncated at byte {len(data)})")
        for lineno, line in enumerate(data.splitlines(), 1):
            if not check.add(f"{path.name} line {lineno}", line):
                return report
    return check.finish(found[0][1].name if found else None)
