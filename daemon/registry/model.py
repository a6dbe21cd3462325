"""The registry's records and their rules: entries (agents and services), state changes and
grants. Pure: no storage, no I/O; the books (registry.py, roles.py, grants.py) keep them.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from ensign.daemon.errors import InvalidData, InvalidRequest
from ensign.daemon.registry.events import Action
from ensign.daemon.spiffe_id import SpiffeId, validate_trust_domain
from ensign.daemon.units import MAX_TIMESTAMP, MAX_TTL_SECONDS

SELECTOR_TYPES = frozenset({"unix", "systemd", "sigstore", "tpm"})
KINDS = frozenset({"agent", "service"})
STATES = ("active", "suspended", "decommissioned")
_SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_SELECTORS = 64
MAX_NAME = 128
DAEMON_ACTOR = "ensign"
RESERVED_PATH = "/ensign"  # spiffe://<td>/ensign/node/<name>: the daemon's own SVIDs
#: Metadata keys the daemon reads, and the values each may take.
METADATA_VALUES = {"anomaly.action": ("alert", "suspend", "off")}
MAX_METADATA = 64

#: (from, action) -> to. Decommissioned is terminal.
TRANSITIONS: dict[tuple[str, str], str] = {
    ("active", "suspend"): "suspended",
    ("suspended", "resume"): "active",
    ("active", "decommission"): "decommissioned",
    ("suspended", "decommission"): "decommissioned",
    ("active", "expire"): "decommissioned",
    ("suspended", "expire"): "decommissioned",
}

_MUTABLE = frozenset({
    "name", "spiffe_id", "selectors", "x509_ttl", "jwt_ttl", "dns_names", "hint", "owner",
    "purpose", "capabilities", "roles", "metadata", "expires_at", "kind", "federates_with",
})


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    name: str
    kind: str
    spiffe_id: str
    selectors: tuple[str, ...]
    x509_ttl: int = 0  # seconds; 0 = the daemon's default
    jwt_ttl: int = 0
    dns_names: tuple[str, ...] = ()
    hint: str = ""
    owner: str = ""
    purpose: str = ""
    capabilities: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    state: str = "active"
    expires_at: int = 0
    created_by: int = 0
    created_at: int = 0
    updated_at: int = 0
    revision: int = 1
    #: trust domains (other than ours) whose bundles this entry's holders receive
    federates_with: tuple[str, ...] = ()

    def is_live(self, now: float) -> bool:
        return self.state == "active" and (not self.expires_at or self.expires_at > now)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("selectors", "dns_names", "capabilities", "roles", "federates_with"):
            d[k] = list(d[k])
        return d


#: (action, entry id, actor, before, after, reason) of one change in a bulk write
BulkChange = tuple[Action, str, str, "Entry | None", "Entry | None", str]


@dataclass(frozen=True, slots=True)
class StateChange:
    at: int
    from_state: str
    to_state: str
    reason: str
    actor: str


@dataclass(frozen=True, slots=True)
class ListFilter:
    state: str = ""
    owner: str = ""
    capability: str = ""
    role: str = ""
    kind: str = ""
    selector: str = ""
    name_prefix: str = ""

    def accepts(self, e: Entry) -> bool:
        return (
            (not self.state or e.state == self.state)
            and (not self.owner or e.owner == self.owner)
            and (not self.capability or self.capability in e.capabilities)
            and (not self.role or self.role in e.roles)
            and (not self.kind or e.kind == self.kind)
            and (not self.selector or self.selector in e.selectors)
            and e.name.startswith(self.name_prefix)
        )


def validate_selector(text: str) -> str:
    kind, sep, rest = text.partition(":")
    key, sep2, value = rest.partition(":")
    if not sep or not key or not sep2 or not value:
        raise InvalidRequest(f"invalid selector {text[:80]!r}: write type:key:value, "
                             "e.g. unix:uid:1000")
    if kind not in SELECTOR_TYPES:
        raise InvalidRequest(
            f"invalid selector {text!r}: unknown type {kind!r} "
            f"(known: {', '.join(sorted(SELECTOR_TYPES))})"
        )
    if len(text) > 1024 or any(c in text for c in "\n\r\0"):
        raise InvalidRequest(f"invalid selector {text[:40]!r}: too long or control characters")
    # Values the attestor can only ever emit in one form: a typo here would never match.
    if kind == "unix" and key in ("uid", "gid") and not (
            value.isascii() and value.isdigit() and int(value) < 2**32):
        raise InvalidRequest(f"invalid selector {text!r}: {key} must be a number below 2^32")
    if kind == "unix" and key == "sha256" and not _SHA256.fullmatch(value):
        raise InvalidRequest(f"invalid selector {text!r}: sha256 must be 64 lowercase hex digits")
    return text


def validate_filter(flt: ListFilter) -> ListFilter:
    if flt.state and flt.state not in STATES:
        raise InvalidRequest(f"unknown state {flt.state!r} (known: {', '.join(STATES)})")
    if flt.kind and flt.kind not in KINDS:
        raise InvalidRequest(f"unknown kind {flt.kind!r} (known: {', '.join(sorted(KINDS))})")
    return flt


def validate_entry(e: Entry, trust_domain: str) -> Entry:
    if not e.name or len(e.name) > MAX_NAME or not e.name.isprintable():
        raise InvalidRequest(f"name must be 1..{MAX_NAME} printable characters")
    if e.kind not in KINDS:
        raise InvalidRequest(f"kind must be one of {', '.join(sorted(KINDS))}, got {e.kind!r}")
    if e.kind == "agent" and not e.owner.strip():
        raise InvalidRequest("owner is required for an agent: the accountable human (--owner)")
    if not e.selectors:
        raise InvalidRequest("an entry needs at least one selector")
    if len(e.selectors) > MAX_SELECTORS:
        raise InvalidRequest(f"at most {MAX_SELECTORS} selectors per entry")
    for s in e.selectors:
        validate_selector(s)
    sid = SpiffeId.parse(e.spiffe_id)
    if not sid.member_of(trust_domain):
        raise InvalidRequest(f"SPIFFE ID {e.spiffe_id} is not in trust domain {trust_domain}")
    if not sid.is_workload:
        raise InvalidRequest("SPIFFE ID needs a path; the bare trust domain ID is the CA's")
    if sid.path == RESERVED_PATH or sid.path.startswith(RESERVED_PATH + "/"):
        raise InvalidRequest(f"SPIFFE ID paths under {RESERVED_PATH}/ are reserved for the "
                             "daemon's own identities (its HTTPS endpoint)")
    if e.x509_ttl < 0 or e.jwt_ttl < 0 or e.expires_at < 0:
        raise InvalidRequest("TTLs and expiry must not be negative")
    if max(e.x509_ttl, e.jwt_ttl) > MAX_TTL_SECONDS:
        raise InvalidRequest(f"TTLs must be at most {MAX_TTL_SECONDS} seconds (3650 days)")
    if e.expires_at > MAX_TIMESTAMP:
        raise InvalidRequest("expiry must be before the year 10000")
    if e.state not in STATES:
        raise InvalidRequest(f"unknown state {e.state!r}")
    if len(e.hint.encode()) > 1024:
        raise InvalidRequest("hint is limited to 1024 bytes")
    validate_metadata(e.metadata)
    for td in e.federates_with:
        try:
            validate_trust_domain(td)
        except InvalidRequest as err:
            raise InvalidRequest(f"federates_with: {err}") from None
        if td == trust_domain:
            raise InvalidRequest(f"federates_with: {td} is this node's own trust domain")
    return replace(e, selectors=tuple(sorted(set(e.selectors))),
                   federates_with=tuple(sorted(set(e.federates_with))))


def validate_metadata(metadata: dict[str, str]) -> None:
    if len(metadata) > MAX_METADATA:
        raise InvalidRequest(f"at most {MAX_METADATA} metadata keys per entry")
    for key, value in metadata.items():
        if not key or len(key) > 128 or len(value) > 1024 or not (key + value).isprintable():
            raise InvalidRequest(f"metadata {key[:40]!r}: keys are 1..128 and values at most "
                                 "1024 printable characters")
        allowed = METADATA_VALUES.get(key)
        if allowed is not None and value not in allowed:
            raise InvalidRequest(f"metadata {key}={value!r}: must be one of "
                                 f"{', '.join(allowed)}")


def check_expiry(expires_at: int, now: float) -> None:
    """A new or changed expiry must lie ahead: one already past would make an entry that is
    decommissioned the moment it is written."""
    if expires_at and expires_at <= now:
        when = datetime.fromtimestamp(max(expires_at, 0), UTC).isoformat().replace("+00:00", "Z")
        raise InvalidData(f"expires_at {when} is in the past: give a later time or a "
                          "duration such as 30d")


@dataclass(frozen=True, slots=True)
class Grant:
    id: str
    subject: str
    issuer: str
    agent_id: str
    scopes: tuple[str, ...]
    created_at: int = 0
    expires_at: int = 0
    revoked_at: int = 0
    created_by: str = ""

    def is_active(self, now: float) -> bool:
        return not self.revoked_at and (not self.expires_at or self.expires_at > now)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scopes"] = list(self.scopes)
        return d
