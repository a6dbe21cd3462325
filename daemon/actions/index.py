"""Ensign's own word on whose a token is: jti → attribution, from the issuance records.

Fed by the audit log's observer with every record as it is written (`token.exchanged` granted,
`svid.issued` of a JWT-SVID), and at start from the segment files for the tokens that may still
be reported: issued within `window` (their longest lifetime) and not expired for longer than
`keep_after_expiry`. Bounded: at most `max_entries` tokens (the oldest issued go first), and
entries whose token expired more than `keep_after_expiry` ago are dropped as new ones arrive.
Nothing the token itself says is taken from it: the attribution is what the record says.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from ensign.daemon.audit import segments

MAX_ENTRIES = 262_144
KEEP_AFTER_EXPIRY = timedelta(hours=1)  # an expired token is still attributed (and flagged)
MAX_WINDOW = timedelta(hours=24)  # how far back the files are read at start, at most
_WANTED = (b'"type":"token.exchanged"', b'"type":"svid.issued"')


@dataclass(frozen=True, slots=True)
class Attribution:
    """Who a token was issued to and on whose behalf, as the issuance record says."""

    kind: str                  # "delegated" | "jwt-svid"
    agent_id: str
    spiffe_id: str
    entry_id: str
    roles: tuple[str, ...]
    delegator: str = ""        # the human (or first delegator); "" for a JWT-SVID
    chain: tuple[str, ...] = ()  # SPIFFE IDs of the actors, the current one first
    grant: str = ""            # the grant the human's consent rests on, if any
    consent: str = ""          # "grant" | "may_act" | "" (a JWT-SVID: the agent itself)
    audience: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()


def entry_of(record: dict[str, Any], issued_at: float) -> tuple[str, Attribution, int] | None:
    """(jti, attribution, expires_at) from an issuance record (a body or a sealed record)."""
    kind, details = record.get("type"), record.get("details")
    if not isinstance(details, dict) or record.get("result", "success") != "success":
        return None
    jti = details.get("jti")
    if not isinstance(jti, str) or not jti:
        return None
    agent, spiffe = _s(record.get("agent_id")), _s(record.get("spiffe_id"))
    entry, roles = _s(record.get("entry_id")), _t(record.get("roles"))
    audience, scopes = _t(record.get("audience")), _t(record.get("scopes"))
    if kind == "token.exchanged":
        expires_in = details.get("expires_in")
        if not isinstance(expires_in, int):
            return None
        consent = details.get("consent")
        consent = consent if isinstance(consent, dict) else {}
        grant = _s(details.get("grant")) or _s(consent.get("grant"))
        how = "grant" if grant else "may_act" if consent.get("may_act") is True else ""
        who = Attribution(kind="delegated", agent_id=agent, spiffe_id=spiffe, entry_id=entry,
                          roles=roles, delegator=_s(record.get("delegator")),
                          chain=_t(details.get("act")) or (spiffe,), grant=grant, consent=how,
                          audience=audience, scopes=scopes)
        return jti, who, int(issued_at) + expires_in
    if kind == "svid.issued" and details.get("kind") == "jwt":
        try:
            expires = int(datetime.fromisoformat(str(details.get("not_after"))).timestamp())
        except ValueError:
            return None
        who = Attribution(kind="jwt-svid", agent_id=agent, spiffe_id=spiffe, entry_id=entry,
                          roles=roles, chain=(spiffe,), audience=audience, scopes=scopes)
        return jti, who, expires
    return None


def _s(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _t(value: Any) -> tuple[str, ...]:
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


class IssuanceIndex:
    """Used from the event loop only; `load()` reads the files and may run in a thread."""

    def __init__(self, clock: Callable[[], datetime], *, max_entries: int = MAX_ENTRIES,
                 keep_after_expiry: timedelta = KEEP_AFTER_EXPIRY) -> None:
        self._clock = clock
        self._max = max_entries
        self._keep = int(keep_after_expiry.total_seconds())
        self._entries: OrderedDict[str, tuple[Attribution, int]] = OrderedDict()
        self._interned: dict[Attribution, Attribution] = {}  # one object per agent and chain

    def __len__(self) -> int:
        return len(self._entries)

    def observe(self, body: dict[str, Any]) -> None:
        """The audit observer: every record as it is appended (cheap for all other types)."""
        if body.get("type") not in ("token.exchanged", "svid.issued"):
            return
        details = body.get("details")
        jti = details.get("jti") if isinstance(details, dict) else None
        if isinstance(jti, str) and jti in self._entries:
            return  # the same token handed out again (the hot path): one issuance, known
        found = entry_of(body, self._clock().timestamp())
        if found is not None:
            self._add(*found)

    def lookup(self, jti: str) -> tuple[Attribution, int] | None:
        """The attribution and expiry (epoch seconds) of a token this node issued."""
        return self._entries.get(jti)

    def merge(self, loaded: dict[str, tuple[Attribution, int]]) -> None:
        """Entries read from the files at start; what the observer added meanwhile stays."""
        for jti, (who, expires) in loaded.items():
            if jti not in self._entries:
                self._add(jti, who, expires)

    def _add(self, jti: str, who: Attribution, expires: int) -> None:
        if jti in self._entries:
            return  # the same JWT-SVID handed out again: one issuance
        if len(self._interned) > self._max:
            self._interned.clear()
        who = self._interned.setdefault(who, who)
        self._entries[jti] = (who, expires)
        self._prune()

    def _prune(self) -> None:
        stale = int(self._clock().timestamp()) - self._keep
        while self._entries:
            jti, (_, expires) = next(iter(self._entries.items()))
            if len(self._entries) <= self._max and expires >= stale:
                return
            del self._entries[jti]

    @staticmethod
    def load(audit_dir: Path, now: datetime, longest_lifetime: timedelta,
             keep_after_expiry: timedelta = KEEP_AFTER_EXPIRY,
             max_entries: int = MAX_ENTRIES) -> dict[str, tuple[Attribution, int]]:
        """The issuance records of tokens that may still be reported: issued within their
        longest lifetime (at most MAX_WINDOW) and `keep_after_expiry` before now."""
        window = min(longest_lifetime, MAX_WINDOW) + keep_after_expiry
        cutoff = (now - window).timestamp()
        stale = now.timestamp() - keep_after_expiry.total_seconds()
        out: OrderedDict[str, tuple[Attribution, int]] = OrderedDict()
        for record in _recent(audit_dir, cutoff):
            try:
                at = datetime.fromisoformat(str(record.get("time"))).timestamp()
            except ValueError:
                continue
            found = entry_of(record, at) if at >= cutoff else None
            if found is not None and found[2] >= stale and found[0] not in out:
                out[found[0]] = (found[1], found[2])
                if len(out) > max_entries:
                    out.popitem(last=False)
        return dict(out)


def _recent(audit_dir: Path, cutoff: float) -> Iterator[dict[str, Any]]:
    """Issuance records of the newest segments, back to the one that starts before `cutoff`,
    oldest first. Lines of other types are skipped before they are parsed."""
    chosen: list[Path] = []
    for _, path in reversed(segments(audit_dir)):
        chosen.append(path)
        if _first_time(path) < cutoff:
            break
    for path in reversed(chosen):
        try:
            with open(path, "rb") as f:
                for line in f:
                    if b'"jti"' not in line or not any(w in line for w in _WANTED):
                        continue
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue  # a torn tail: verify reports it
                    if isinstance(record, dict):
                        yield record
        except OSError:
            continue


def _first_time(path: Path) -> float:
    try:
        with open(path, "rb") as f:
            first = f.readline()
        return datetime.fromisoformat(str(json.loads(first)["time"])).timestamp()
    except (OSError, ValueError, KeyError, TypeError):
        return float("inf")  # empty (just rotated) or unreadable: look further back
