"""Reading the audit trail back: filters, and the OCSF mapping for export. Pure over records."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ensign.daemon.audit.log import segments


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


# OCSF 1.x classes: 3002 Authentication, 3004 Entity Management, 2004 Detection Finding,
# 6002 Application Lifecycle (the daemon's own start and stop).
_OCSF_CLASS = {
    "svid.issued": (3002, "Authentication", 3),
    "attestation": (3002, "Authentication", 3),
    "request.denied": (3002, "Authentication", 3),
    "token.exchanged": (3002, "Authentication", 3),
    "registry.change": (3004, "Entity Management", 3),
    "role.change": (3004, "Entity Management", 3),
    "grant.change": (3004, "Entity Management", 3),
    "ca.rotated": (3004, "Entity Management", 3),
    "anomaly": (2004, "Detection Finding", 2),
    "daemon.start": (6002, "Application Lifecycle", 6),
    "daemon.stop": (6002, "Application Lifecycle", 6),
    "audit.recovered": (6002, "Application Lifecycle", 6),
    "audit.archived": (6002, "Application Lifecycle", 6),
}
_ENTITY_ACTIVITY = {"register": 1, "update": 3, "delete": 4, "suspend": 6, "resume": 5,
                    "decommission": 4, "expire": 4, "role_create": 1, "role_update": 3,
                    "role_delete": 4}


def to_ocsf(r: dict[str, Any]) -> dict[str, Any]:
    class_uid, class_name, category_uid = _OCSF_CLASS.get(r.get("type", ""), (0, "Base Event", 0))
    activity_id = 99
    if class_uid == 3004:
        activity_id = _ENTITY_ACTIVITY.get(str(r.get("details", {}).get("action", "")), 99)
    elif class_uid == 3002:
        activity_id = 1
    elif class_uid == 6002:
        activity_id = {"daemon.start": 3, "daemon.stop": 4}.get(r.get("type", ""), 99)
    time_ms = int(datetime.fromisoformat(str(r["time"])).timestamp() * 1000)
    status_id = {"success": 1, "denied": 2, "failure": 2}.get(str(r.get("result")), 0)
    event: dict[str, Any] = {
        "class_uid": class_uid, "class_name": class_name, "category_uid": category_uid,
        "activity_id": activity_id, "type_uid": class_uid * 100 + activity_id,
        "time": time_ms, "severity_id": 1 if status_id == 1 else 3, "status_id": status_id,
        "status_detail": r.get("reason", ""),
        "metadata": {"version": "1.3.0", "product": {"name": "Ensign", "vendor_name": "Ensign"},
                     "uid": f"{r.get('chain')}:{r.get('seq')}", "sequence": r.get("seq"),
                     "event_code": r.get("type")},
        "record_integrity": {"fingerprint": r.get("hash"), "prev_fingerprint": r.get("prev"),
                             "algorithm": "SHA-256"},
        "unmapped": {k: v for k, v in r.items()
                     if k in ("details", "audience", "scopes", "roles", "entry_id")},
    }
    if r.get("agent_id"):
        event["actor"] = {"app_uid": r["agent_id"], "app_name": r.get("spiffe_id", "")}
    elif r.get("actor"):
        event["actor"] = {"user": {"uid": r["actor"]}}
    if r.get("process"):
        event.setdefault("actor", {})["process"] = r["process"]
    if r.get("delegator"):
        event.setdefault("actor", {})["user"] = {"uid": r["delegator"]}
    if r.get("subject"):
        event["entity"] = {"uid": r["subject"]}
    return event
