"""Audit events for the issuing path, built from what the request path already knows. Pure."""

from __future__ import annotations

from .audit_event import AuditEvent, EventType, Process
from .errors import EnsignError
from .events import ChangeEvent
from .models import AttestedCaller, Caller
from .registry import Entry
from .svid import JwtSvid, X509Svid

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


def attestation(attested: AttestedCaller) -> AuditEvent:
    return AuditEvent(
        type="attestation",
        process=process_of(attested.caller, attested),
        details={"selectors": sorted(attested.selectors),
                 "evidence": evidence_digest(attested)},
    )


def x509_issued(attested: AttestedCaller, entry: Entry, svid: X509Svid) -> AuditEvent:
    return AuditEvent(
        type="svid.issued", agent_id=entry.id, spiffe_id=svid.spiffe_id, entry_id=entry.id,
        roles=entry.roles, process=process_of(attested.caller, attested),
        details={"kind": "x509", "serial": format(svid.cert.serial_number, "x"),
                 "not_after": svid.not_after.isoformat(),
                 "ttl": int((svid.not_after - svid.not_before).total_seconds())},
    )


def jwt_issued(attested: AttestedCaller, entry: Entry, svid: JwtSvid) -> AuditEvent:
    return AuditEvent(
        type="svid.issued", agent_id=entry.id, spiffe_id=svid.spiffe_id, entry_id=entry.id,
        roles=entry.roles, process=process_of(attested.caller, attested),
        audience=svid.audience,
        details={"kind": "jwt", "jti": svid.jti, "not_after": svid.expiry.isoformat(),
                 "ttl": int((svid.expiry - svid.issued_at).total_seconds())},
    )


def denied(method: str, caller: Caller | None, err: EnsignError,
           attested: AttestedCaller | None = None, entry: Entry | None = None,
           audience: tuple[str, ...] = ()) -> AuditEvent:
    return AuditEvent(
        type="request.denied", result="denied", reason=err.diagnostics()[:1024],
        agent_id=entry.id if entry else "", entry_id=entry.id if entry else "",
        process=process_of(caller, attested) if caller else None, audience=audience,
        details={"method": method, "status": err.grpc_status.name,
                 **({"evidence": evidence_digest(attested)} if attested else {})},
    )


def change(event: ChangeEvent) -> AuditEvent:
    kind: EventType = ("role.change" if event.action.startswith("role_")
            else "grant.change" if event.action.startswith("grant_") else "registry.change")
    return AuditEvent(
        type=kind,
        actor=event.actor, subject=event.subject, reason=event.reason,
        details={"action": event.action, "before": event.before, "after": event.after},
    )
