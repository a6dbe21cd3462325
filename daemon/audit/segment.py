"""The audit log's files, as the writer thread keeps them: segments, checkpoints and the key.

`SegmentFile` owns the open segment and the head of the chain (sequence number and hash). Its
methods block on the disk and run on the log's writer thread only (log.py), except `load_key`
and `prepare` at open. Segments are opened O_DSYNC: `append` returns once its data is on disk.

Layout under `data_dir/audit/`: `segment-00000001.jsonl ...`, `checkpoints.jsonl`, and
`audit-key.pub.pem`; the signing key lives apart from the CA's, in `data_dir/audit-key/` (0600).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ensign.daemon import keys
from ensign.daemon.audit.event import GENESIS, canonical
from ensign.daemon.config import AuditConfig
from ensign.daemon.errors import AuditUnavailable
from ensign.daemon.files import ensure_private_dir, write_private

SEGMENT = re.compile(r"^segment-(\d{8})\.jsonl$")
CHECKPOINTS = "checkpoints.jsonl"
PUBLIC_KEY = "audit-key.pub.pem"


def segment_name(n: int) -> str:
    return f"segment-{n:08d}.jsonl"


def segments(audit_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for p in audit_dir.iterdir() if audit_dir.exists() else []:
        m = SEGMENT.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def chain_id(public_key: ec.EllipticCurvePublicKey) -> str:
    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()[:32]


def sign_checkpoint(key: ec.EllipticCurvePrivateKey, body: dict[str, Any]) -> str:
    return base64.b64encode(key.sign(canonical(body), ec.ECDSA(hashes.SHA256()))).decode()


def _complete_lines(data: bytes) -> tuple[bytes, int]:
    """The prefix of `data` made of whole, parseable JSON lines, and how many bytes follow it."""
    good = 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            json.loads(line)
        except ValueError:
            break
        good += len(line)
    return data[:good], len(data) - good


class SegmentFile:
    def __init__(self, config: AuditConfig, data_dir: Path,
                 clock: Callable[[], datetime]) -> None:
        self._cfg = config
        self.dir = data_dir / "audit"
        self._key_dir = data_dir / "audit-key"
        self._clock = clock
        self._key: ec.EllipticCurvePrivateKey | None = None
        self._public_pem = b""
        self.chain = ""
        self.fd = -1
        self._segment = 0
        self._size = 0
        self.seq = 0  # the last durable record's, and its hash: the head of the chain
        self.head = GENESIS
        self._cp_seq = 0
        self._cp_due = 0.0  # time.monotonic() when a checkpoint is due however few records
        # Called with the seconds each durable write took (metrics).
        self.write_timer: Callable[[float], None] | None = None

    # -- opening ---------------------------------------------------------------------------

    def load_key(self) -> None:
        ensure_private_dir(self._key_dir)
        path = self._key_dir / "key.pem"
        if path.exists():
            key = keys.from_pem(path.read_bytes())
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise AuditUnavailable(f"{path}: the audit key must be an EC key")
        else:
            key = ec.generate_private_key(ec.SECP256R1())
            write_private(path, keys.to_pem(key))
        self._key = key
        self.chain = chain_id(key.public_key())
        self._public_pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def prepare(self) -> int:
        """Open the current segment; returns how many bytes of a torn record were set aside."""
        ensure_private_dir(self.dir)
        pub_path = self.dir / PUBLIC_KEY
        if not pub_path.exists() or pub_path.read_bytes() != self._public_pem:
            write_private(pub_path, self._public_pem)
        discarded = self._recover_tail()
        self._open_segment(self._segment)
        return discarded

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    @property
    def open_segment_name(self) -> str:
        return segment_name(self._segment)

    def _recover_tail(self) -> int:
        """Find the head of the chain; set aside an incomplete last record. Returns bytes cut.

        When no segment holds a record (everything before was archived), the chain resumes
        after the last signed checkpoint, never from the start: a new chain would reuse
        sequence numbers and names the archive already holds."""
        found = segments(self.dir)
        last_cp = self._last_checkpoint()
        if last_cp is not None:
            self._cp_seq = int(last_cp["seq"])
        if not found:
            self._segment = 1
            if last_cp is not None:
                self.seq, self.head = int(last_cp["seq"]), str(last_cp["hash"])
                m = SEGMENT.match(str(last_cp.get("segment", "")))
                self._segment = int(m.group(1)) + 1 if m else 1
            return 0
        self._segment, last = found[-1]
        data = last.read_bytes()
        good, cut = _complete_lines(data)
        if cut:
            (self.dir / f"{last.name}.incomplete-{len(good)}").write_bytes(data[len(good):])
            with open(last, "r+b") as f:
                f.truncate(len(good))
                f.flush()
                os.fsync(f.fileno())
        lines = good.splitlines()
        if lines:
            tail = json.loads(lines[-1])
            self.seq, self.head = int(tail["seq"]), str(tail["hash"])
        else:
            self.seq, self.head = self._head_before(found[:-1])
            if self.seq == 0 and last_cp is not None:
                self.seq, self.head = int(last_cp["seq"]), str(last_cp["hash"])
        return cut

    def _last_checkpoint(self) -> dict[str, Any] | None:
        cp = self.dir / CHECKPOINTS
        if not cp.exists():
            return None
        lines = [x for x in cp.read_bytes().splitlines() if x.strip()]
        return dict(json.loads(lines[-1])) if lines else None

    def _head_before(self, earlier: list[tuple[int, Path]]) -> tuple[int, str]:
        for _, path in reversed(earlier):
            lines = path.read_bytes().splitlines()
            if lines:
                tail = json.loads(lines[-1])
                return int(tail["seq"]), str(tail["hash"])
        return 0, GENESIS

    def _open_segment(self, n: int) -> None:
        path = self.dir / segment_name(n)
        # O_DSYNC makes write() also flush the data and the new size (what fdatasync would do):
        # one blocking call per batch, so the writer thread takes the GIL back once, not twice.
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_DSYNC
        self.fd = os.open(path, flags, 0o600)
        self._size = os.fstat(self.fd).st_size
        dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    # -- writing ---------------------------------------------------------------------------

    def append(self, data: bytes, end: tuple[int, str]) -> None:
        """Append whole records; once they are on disk, `end` (seq, hash) is the head."""
        started = time.perf_counter()
        try:  # O_DSYNC: each write returns once its data is on disk
            written = os.write(self.fd, data)
            if written < len(data):
                view = memoryview(data)[written:]
                while view:
                    view = view[os.write(self.fd, view):]
        except OSError:
            # Take back a partial write so the segment still ends on a whole record.
            try:
                os.ftruncate(self.fd, self._size)
            except OSError:
                os.close(self.fd)
                self.fd = -1  # reopened (and its tail recovered) on the next attempt
            raise
        self._size += len(data)
        self.seq, self.head = end
        if self.write_timer is not None:
            self.write_timer(time.perf_counter() - started)

    def checkpoint_if_due(self) -> None:
        """Sign a checkpoint when enough records or time passed; rotate a full segment."""
        if self.seq == self._cp_seq or self.fd < 0:
            return
        rotate = self._size >= self._cfg.segment_size
        if (self.seq - self._cp_seq >= self._cfg.checkpoint_every or rotate
                or time.monotonic() >= self._cp_due):
            self.checkpoint()
            if rotate:
                self._rotate()

    def checkpoint(self) -> None:
        if self.seq == self._cp_seq or self._key is None:
            return
        now = self._clock()
        body = {"seq": self.seq, "hash": self.head, "chain": self.chain,
                "segment": segment_name(self._segment),
                "time": now.isoformat(timespec="microseconds")}
        line = canonical({**body, "sig": sign_checkpoint(self._key, body)}) + b"\n"
        fd = os.open(self.dir / CHECKPOINTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                     0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._cp_seq = self.seq
        self._cp_due = time.monotonic() + self._cfg.checkpoint_interval.total_seconds()

    def _rotate(self) -> None:
        os.close(self.fd)
        self.fd = -1
        self._segment += 1
        self._open_segment(self._segment)
