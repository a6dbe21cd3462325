"""The audit trail's record: one typed model for every decision, and its canonical encoding.

A record's `hash` is SHA-256 over its canonical JSON (sorted keys, no spaces, UTF-8) without the
`hash` field; `prev` is the hash of the record before it, so the records form one chain per
node. Values are strings, integers, booleans, lists and objects only (no floats), which makes
this encoding the same as RFC 8785 (JCS) for everything we write.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

EventType = Literal[
    "attestation",        # selectors and evidence digests of a caller
    "svid.issued",        # an X.509- or JWT-SVID released to a caller
    "svid.validated",     # ValidateJWTSVID: whose token a validator checked, for which audience
    "request.denied",     # a refused request and why
    "token.exchanged",    # a delegated token (delegation issue)
    "action",             # an agent's action on a resource, reported with the token it used
    "registry.change",    # agent registered/updated/suspended/... by an admin or by expiry
    "role.change",
    "grant.change",
    "anomaly",
    "ca.rotated",
    "daemon.start",
    "daemon.stop",
    "audit.recovered",    # an incomplete trailing record from a crash was set aside
    "audit.archived",     # old segments moved to an archive by an admin
    "tpm",                # node attestation: policy pass/fail, TPM lost/back, measured launch
]
Result = Literal["success", "denied", "failure"]
GENESIS = "0" * 64


@dataclass(frozen=True, slots=True)
class Process:
    pid: int
    uid: int
    gid: int
    exe_sha256: str = ""

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"pid": self.pid, "uid": self.uid, "gid": self.gid}
        if self.exe_sha256:
            d["exe_sha256"] = self.exe_sha256
        return d


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """What happened, before the log gives it a place (sequence number, time, chain links)."""

    type: EventType
    result: Result = "success"
    reason: str = ""
    agent_id: str = ""       # the agent that acted (empty for human/admin actions)
    spiffe_id: str = ""
    entry_id: str = ""       # the registry entry that allowed it
    roles: tuple[str, ...] = ()
    process: Process | None = None
    actor: str = ""          # for registry/role changes: "uid:0" (a human admin) or "ensign"
    subject: str = ""        # for registry/role changes: the agent id or role name changed
    delegator: str = ""      # the human or agent on whose behalf (delegation)
    audience: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.type, "result": self.result}
        for key in ("reason", "agent_id", "spiffe_id", "entry_id", "actor", "subject",
                    "delegator"):
            value = getattr(self, key)
            if value:
                d[key] = value
        for key in ("roles", "audience", "scopes"):
            value = getattr(self, key)
            if value:
                d[key] = list(value)
        if self.process is not None:
            d["process"] = self.process.as_dict()
        if self.details:
            d["details"] = self.details
        return d


# What json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False) builds per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def canonical(obj: Any) -> bytes:
    return _ENCODER.encode(obj).encode()


def seal(body: dict[str, Any], *, seq: int, prev: str, chain: str, at: datetime) -> dict[str, Any]:
    """Place an event in the chain: add seq, time, chain id and prev, then the hash."""
    record = _placed(body, seq, prev, chain, at)
    record["hash"] = record_hash(record)
    return record


def seal_line(body: dict[str, Any], *, seq: int, prev: str, chain: str,
              at: datetime) -> tuple[bytes, str]:
    """`canonical(seal(...)) + b"\n"` and the record's hash, encoding the record only once.

    With sorted keys the canonical form is the members in key order, so the members before and
    after "hash" are encoded apart: joined they are what is hashed, and "hash" goes between.
    """
    record = _placed(body, seq, prev, chain, at)
    lo = _ENCODER.encode({k: v for k, v in record.items() if k < "hash"})
    hi = _ENCODER.encode({k: v for k, v in record.items() if k > "hash"})  # never empty
    head = lo[:-1] + "," if len(lo) > 2 else "{"
    digest = hashlib.sha256((head + hi[1:]).encode()).hexdigest()
    return f'{head}"hash":"{digest}",{hi[1:]}\n'.encode(), digest


class Unencodable(ValueError):
    """A record holding text that UTF-8 cannot encode (a lone surrogate): it cannot be written.
    Attestors escape such text at the source (ensign.daemon.text); this is the last guard."""


_HOLE = secrets.token_hex(16)  # a body holds this only by a 2**-128 chance; checked anyway


class Sealer:
    """One event's canonical record with holes for its place in the chain, encoded once.

    An event recorded again and again (the same token to the same process) is then sealed by
    filling the holes for seq, time and prev: what is hashed is the record without "hash",
    and the hash goes into a hole of its own. The result is `seal_line()`'s, byte for byte.
    """

    __slots__ = ("_body", "_chain", "_parts")

    def __init__(self, body: dict[str, Any], chain: str) -> None:
        self._body, self._chain = body, chain
        text = _ENCODER.encode({**body, "chain": chain, "seq": f"{_HOLE}s", "time": f"{_HOLE}t",
                                "prev": f"{_HOLE}p", "hash": f"{_HOLE}h"})
        if not text.isascii():  # checked once here, so that sealing it never fails
            try:
                text.encode()
            except UnicodeEncodeError as bad:
                raise Unencodable(f"{bad.reason} at character {bad.start} of the record") from None
        a, _, rest = text.partition(f'"hash":"{_HOLE}h",')  # never last: "prev" sorts after
        b, _, rest = rest.partition(f"{_HOLE}p")
        c, _, rest = rest.partition(f'"{_HOLE}s"')
        d, _, e = rest.partition(f"{_HOLE}t")
        self._parts = (a, b, c, d, e) if text.count(_HOLE) == 4 and e else None

    @property
    def body(self) -> dict[str, Any]:
        return self._body

    def seal(self, *, seq: int, prev: str, at: datetime, stamp: str = "") -> tuple[bytes, str]:
        """The record's JSON line (with newline) and its hash. `stamp`: record_time(at), if a
        batch sealed at one time has it already."""
        if self._parts is None or not prev.isalnum():  # prev would need escaping
            return seal_line(self._body, seq=seq, prev=prev, chain=self._chain, at=at)
        a, b, c, d, e = self._parts
        rest = f"{b}{prev}{c}{seq}{d}{stamp or record_time(at)}{e}"
        digest = hashlib.sha256(f"{a}{rest}".encode()).hexdigest()
        return f'{a}"hash":"{digest}",{rest}\n'.encode(), digest


def record_time(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def _placed(body: dict[str, Any], seq: int, prev: str, chain: str, at: datetime) -> dict[str, Any]:
    return {**body, "seq": seq, "time": record_time(at), "chain": chain, "prev": prev}


def record_hash(record: dict[str, Any]) -> str:
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k != "hash"})).hexdigest()


def seal_run(sealers: tuple[Sealer, ...], seq: int, head: str, at: datetime,
             stamp: str) -> tuple[list[bytes], tuple[int, str]]:
    """Seal records one after another onto (seq, head): their lines, and the new head."""
    lines = []
    for sealer in sealers:
        seq += 1
        line, head = sealer.seal(seq=seq, prev=head, at=at, stamp=stamp)
        lines.append(line)
    return lines, (seq, head)
