"""What happens when the detector flags something: an `anomaly` audit record, a log line, and,
when the policy says so, the agent suspended at once.

The action is `[anomaly] action`, overridden per agent by its `anomaly.action` metadata
(`alert`, `suspend` or `off`). Findings about a JWT-SVID's use by its recipients (token-*) only
alert: whoever received a token can misuse it, so its holder is not suspended for that.
Findings are answered after the record that raised them is queued, because suspending writes
records itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from ensign.daemon.anomaly.detector import Detector, Finding
from ensign.daemon.audit.event import AuditEvent, Process
from ensign.daemon.audit.log import AuditLog
from ensign.daemon.config import AnomalyConfig
from ensign.daemon.errors import EnsignError
from ensign.daemon.registry import Registry

log = logging.getLogger(__name__)

SAVE_EVERY = 30.0  # seconds between saves of the learned baselines


class Responder:
    """Feeds the detector from the audit trail and acts on its findings."""

    def __init__(self, config: AnomalyConfig, registry: Registry, audit: AuditLog,
                 state_path: Path) -> None:
        self._cfg = config
        self._registry = registry
        self._audit = audit
        self._path = state_path
        self._saved = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self.detector = Detector(config, time.time, self._state_of)

    def start(self) -> None:
        self.detector.load(self._path)
        self._audit.observers.append(self.observe)

    def observe(self, body: dict[str, Any]) -> None:
        """An audit observer: every decision as it is recorded."""
        if body.get("type") == "anomaly":
            return
        for finding in self.detector.observe(body):
            asyncio.get_running_loop().call_soon(self.respond, finding)

    def _state_of(self, agent_id: str) -> str:
        try:
            return self._registry.get(agent_id).state
        except EnsignError:
            return "deleted"

    def respond(self, f: Finding) -> None:
        entry = None
        if f.agent_id:
            with contextlib.suppress(EnsignError):
                entry = self._registry.get(f.agent_id)
        action: str = self._cfg.action
        if entry is not None:
            action = entry.metadata.get("anomaly.action", action)
        if action == "off":
            return
        suspend = (action == "suspend" and f.may_suspend and entry is not None
                   and entry.state == "active")
        self._audit.record_nowait(AuditEvent(
            type="anomaly", result="failure", reason=f.line(), agent_id=f.agent_id,
            spiffe_id=entry.spiffe_id if entry else "",
            process=Process(pid=0, uid=f.uid, gid=0) if f.uid is not None else None,
            details={"signal": f.signal, "seen": f.seen, "expected": f.expected, "why": f.why,
                     "values": f.values, "action": "suspend" if suspend else "alert"}))
        log.warning("anomaly", extra={"signal": f.signal, "agent": f.agent_id,
                                      "finding": f.line(), "action": action})
        if suspend and entry is not None:
            task = asyncio.get_running_loop().create_task(self._suspend(entry.id, f))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _suspend(self, agent_id: str, f: Finding) -> None:
        try:
            await self._registry.transition(agent_id, "suspend", "ensign",
                                            f"anomaly {f.signal}: {f.line()}")
        except EnsignError as e:  # e.g. the fleet database is down: the record stands
            log.error("anomaly suspension failed", extra={"agent": agent_id,
                                                          "reason": e.diagnostics()})

    def save(self, force: bool = False) -> None:
        """Keep the learned baselines across restarts (at most every SAVE_EVERY seconds)."""
        if not force and time.time() - self._saved < SAVE_EVERY:
            return
        self._saved = time.time()
        try:
            self.detector.save(self._path)
        except OSError as e:
            log.warning("cannot save anomaly baselines", extra={"error": str(e)})
