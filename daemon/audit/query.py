"""Reading the audit trail back: filters over records (the OCSF mapping is in export.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ensign.daemon.audit.segment import segments


@dataclass(frozen=True, slots=True)
class AuditFilter:
    agent: str = ""        # the agent that acted: its trail, without human actions
    subject: str = ""      # the agent or role an admin action changed
    delegator: str = ""
    type: str = ""         # exact, or a prefix ending in "." ("svid.")
    result: str = ""
    since: str = ""        # ISO 8601 times; records carry UTC ISO times, so strings compare
    until: str = ""

    def accepts(self, r: dict[str, Any]) -> bool:
        rtype = str(r.get("type", ""))
        return (
            (not self.agent or r.get("agent_id") == self.agent)
            and (not self.subject or r.get("subject") == self.subject)
            and (not self.delegator or r.get("delegator") == self.delegator)
            and (not self.type or rtype == self.type
                 or (self.type.endswith(".") and rtype.startswith(self.type)))
            and (not self.result or r.get("result") == self.result)
            and (not self.since or str(r.get("time", "")) >= self.since)
            and (not self.until or str(r.get("time", "")) < self.until)
        )


def read_records(audit_dir: Path) -> Iterator[dict[str, Any]]:
    """Every whole record in segment order; skips a torn last line (verify reports those)."""
    for _, path in segments(audit_dir):
        try:
            f = open(path, "rb")  # noqa: SIM115 (closed below)
        except FileNotFoundError:
            continue  # archived since it was listed
        with f:
            for line in f:
                if line.endswith(b"\n"):
                    try:
                        yield json.loads(line)
                    except ValueError:
                        continue


def query(audit_dir: Path, flt: AuditFilter, limit: int = 0) -> list[dict[str, Any]]:
    out = []
    for r in read_records(audit_dir):
        if flt.accepts(r):
            out.append(r)
            if limit and len(out) >= limit:
                break
    return out
