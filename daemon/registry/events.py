"""Registry and role changes as events: the one place every change passes through.

Listeners (the SVID cache and streams, and the audit trail) receive the actor, the record
before and after, and the reason. A listener that fails is logged and does not undo the change.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

log = logging.getLogger(__name__)

Action = Literal[
    "register", "update", "delete", "suspend", "resume", "decommission", "expire",
    "role_create", "role_update", "role_delete", "grant_create", "grant_revoke",
]


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    action: Action
    subject: str  # agent id or role name
    actor: str  # "uid:0" for an admin, "ensign" for the daemon itself (expiry)
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    reason: str = ""
    at: int = 0
    #: "" for a change made here; "fleet" for one another node made, applied from the shared
    #: database. Listeners act on both alike; only the node that made a change audits it.
    origin: str = ""


@dataclass
class EventHub:
    listeners: list[Callable[[ChangeEvent], None]] = field(default_factory=list)

    def subscribe(self, listener: Callable[[ChangeEvent], None]) -> None:
        self.listeners.append(listener)

    def emit(self, event: ChangeEvent) -> None:
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:
                log.exception("change listener failed", extra={"action": event.action})
