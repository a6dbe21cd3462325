"""Audit events built from the registry's changes and from the request path's facts. Pure.

`process_of` and `evidence_digest` say which facts about a caller a record keeps: digests and
names, never whole documents.
"""

from __future__ import annotations

from typing import Any

from ensign.daemon.audit.event import AuditEvent, EventType, Process
from ensign.daemon.models import AttestedCaller, Caller
from ensign.daemon.registry import ChangeEvent

# Evidence worth keeping: digests and names, not whole documents.
_EVIDENCE_KEYS = ("unix.exe_sha256", "unix.exe_path", "unix.exe_error", "systemd.cgroup",
                  "sigstore.signer", "sigstore.issuer", "sigstore.artifact", "sigstore.bundle",
                  "sigstore.error", "sigstore.failed_check", "sigstore.failed_rule",
                  "sigstore.unit", "sigstore.script", "tpm.quote_digest")


def evidence_digest(attested: AttestedCaller) -> dict[str, str]:
    return {k: v for k, v in attested.evidence.items() if k in _EVIDENCE_KEYS}


def process_of(caller: Caller, attested: AttestedCaller | None = None) -> Process:
    sha = attested.evidence.get("unix.exe_sha256", "") if attested else ""
    return Process(pid=caller.pid, uid=caller.uid, gid=caller.gid, exe_sha256=sha)


def change(event: ChangeEvent) -> AuditEvent:
    kind: EventType = ("role.change" if event.action.startswith("role_")
            else "grant.change" if event.action.startswith("grant_") else "registry.change")
    return AuditEvent(
        type=kind,
        actor=event.actor, subject=event.subject, reason=event.reason,
        details={"action": event.action, "before": event.before, "after": event.after},
    )


def tpm_event(event: str, result: Any, reason: str, details: dict[str, Any]) -> AuditEvent:
    """Node attestation: policy pass/fail, TPM lost/back, a measured launch."""
    return AuditEvent(type="tpm", result=result, reason=reason,
                      details={"event": event, **details})
