"""The daemon's lifecycle: open the store, CA and attestors, serve, rotate, drain, close.

Signals are handled in two stages: the first SIGTERM/SIGINT stops accepting and drains, a
second one exits at once with 128+signum.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import resource
import signal
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from ensign.attestors import BUILTIN, TpmAttestor
from ensign.attestors.base import Attestor
from ensign.daemon.anomaly.detector import Detector, Finding
from ensign.daemon.api import _records as audit_records
from ensign.daemon.api.admin import AdminApi
from ensign.daemon.api.attestation import AttestationApi
from ensign.daemon.api.delegation import DelegationApi
from ensign.daemon.api.health import HealthService
from ensign.daemon.api.workload import WorkloadApi
from ensign.daemon.audit.event import AuditEvent, Process
from ensign.daemon.audit.log import AuditLog
from ensign.daemon.config import Config
from ensign.daemon.config import load as load_config
from ensign.daemon.delegation.idp import TrustedIssuers
from ensign.daemon.errors import ConfigError, EnsignError
from ensign.daemon.identity.pipeline import AttestationPipeline
from ensign.daemon.issuing.ca import CertificateAuthority, utcnow
from ensign.daemon.issuing.cache import Broadcast, SvidCache
from ensign.daemon.observe import metrics
from ensign.daemon.registry.events import ChangeEvent, EventHub
from ensign.daemon.registry.grants import GrantBook
from ensign.daemon.registry.registry import Registry
from ensign.daemon.registry.roles import RoleBook
from ensign.daemon.registry.store import Store
from ensign.daemon.server import bounds as message_limit
from ensign.daemon.server.limits import UidLimits
from ensign.daemon.server.listener import ADMIN_SOCKET_MODE, WORKLOAD_SOCKET_MODE, UnixServer
from ensign.daemon.server.peercred import PeerTracker
from ensign.daemon.tpm.service import TpmEvent, TpmService
from ensign.proto.admin_pb2 import StatusResponse

log = logging.getLogger(__name__)

MAX_TICK = 1.0  # seconds between maintenance passes at most


def _raise_fd_limit() -> None:
    # Every open connection holds a socket and a pidfd: allow as many as the hard limit permits.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _group_id(name: str) -> int | None:
    if not name:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


class Daemon:
    def __init__(self, config: Config, clock: Callable[[], datetime] = utcnow,
                 config_path: Path | None = None) -> None:
        self.config = config
        self._config_path = config_path
        self._clock = clock
        data = config.data_dir
        self.events = EventHub()
        self.store = Store(data / "registry.db")
        self.roles = RoleBook(self.store, self.events)
        self.registry = Registry(self.store, self.roles, self.events, config.trust_domain)
        self.grants = GrantBook(self.store, self.events)
        self.issuers = TrustedIssuers(config.delegation)
        self.tpm: TpmService | None = None
        if config.attestors.tpm.enabled:
            self.tpm = TpmService(config.attestors.tpm, data, on_change=self._on_tpm_change,
                                  on_event=self._on_tpm_event)
        self.ca = CertificateAuthority(config.ca, config.trust_domain, data, clock,
                                       sealer=self.tpm if config.ca.seal_with_tpm else None)
        self.broadcast = Broadcast()
        self.cache = SvidCache(self.ca, config.svid, clock)
        lim = config.limits
        message_limit.configure(lim.max_request_bytes, lim.max_pending_request_bytes)
        self.tracker = PeerTracker(limits=UidLimits(
            lim.max_connections_per_uid, lim.requests_per_second_per_uid, lim.burst_per_uid))
        attestors: list[Attestor] = []
        for name, factory in BUILTIN.items():
            section = getattr(config.attestors, name)
            if section.enabled and name != "tpm":  # tpm: node selectors merged at match time
                attestors.append(factory(section))
        self.pipeline = AttestationPipeline(
            attestors, measure=self.tpm.measure if self.tpm is not None else None)
        self.audit = AuditLog(config.audit, data, clock)
        self.detector = Detector(config.anomaly, time.time) if config.anomaly.enabled else None
        self._anomaly_state = data / "anomaly.json"
        self._anomaly_saved = 0.0
        self._prune_scheduled = False
        self._draining = False
        workload = WorkloadApi(
            config=config, tracker=self.tracker, pipeline=self.pipeline,
            registry=self.registry, roles=self.roles, cache=self.cache, ca=self.ca,
            audit=self.audit, broadcast=self.broadcast, clock=clock, node=self.tpm,
            on_validated=self._jwt_validated,
        )
        self._workload_server = UnixServer(
            config.socket_path, WORKLOAD_SOCKET_MODE,
            [workload, HealthService(self._problem), DelegationApi(
                config=config, tracker=self.tracker, pipeline=self.pipeline,
                registry=self.registry, roles=self.roles, grants=self.grants,
                issuers=self.issuers, cache=self.cache, ca=self.ca, audit=self.audit,
                clock=clock), AttestationApi(self.tpm)],
            self.tracker,
        )
        admin_gid = _group_id(config.admin_group)
        self._admin_server = UnixServer(
            config.admin_socket_path, ADMIN_SOCKET_MODE if admin_gid is None else 0o660,
            [AdminApi(tracker=self.tracker, registry=self.registry, roles=self.roles,
                      grants=self.grants, audit_dir=self.audit.dir, status=self.status,
                      admin_gid=admin_gid, audit=self.audit)],
            self.tracker, gid=admin_gid,
        )
        self._started = time.time()
        self._metrics_server: Any = None
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()

    async def run(self, ready: Callable[[], None] = lambda: None) -> int:
        _raise_fd_limit()
        # Whatever the daemon creates (SQLite WAL files, state) is private unless made otherwise.
        os.umask(0o077)
        self.config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.config.data_dir, 0o700)
        self.store.open()
        self.roles.load()
        self.registry.load()
        self.grants.load()
        if self.config.ca.seal_with_tpm and self.tpm is None:
            raise ConfigError("ca.seal_with_tpm needs attestors.tpm.enabled")
        self.audit.open()  # first: the TPM and the CA record events as they start
        if self.tpm is not None:
            await self.tpm.start()
        self.ca.load_or_create()
        self.audit.observers.append(metrics.observe_audit)
        self.audit.write_timer = metrics.AUDIT_WRITE_SECONDS.observe
        if self.detector is not None:
            self.detector.load(self._anomaly_state)
            self.audit.observers.append(self._observe_anomaly)
        await self.issuers.start()
        self.audit.record_nowait(AuditEvent(type="daemon.start", details={
            "trust_domain": self.config.trust_domain, "attestors": self.pipeline.names}))
        self.events.subscribe(self._on_change)
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        try:
            await self._workload_server.start()
            await self._admin_server.start()
            if self.config.metrics.listen:
                self._metrics_server = metrics.serve(self.config.metrics.listen,
                                                     self._metric_state)
            log.info("serving", extra={
                "socket": str(self.config.socket_path),
                "admin_socket": str(self.config.admin_socket_path),
                "trust_domain": self.config.trust_domain,
                "attestors": self.pipeline.names,
            })
            ready()
            await self._maintain_until_stopped()
        finally:
            for sig in (*signals, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await self._shutdown()
        return 0

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._stop.is_set():
            os._exit(128 + sig)
        log.info("stopping", extra={"signal": sig.name})
        self._stop.set()
        self._wake.set()

    def _observe_anomaly(self, body: dict[str, Any]) -> None:
        if self.detector is None or body.get("type") == "anomaly":
            return
        for finding in self.detector.observe(body):
            # Respond after the current record is queued: suspending emits records itself.
            asyncio.get_running_loop().call_soon(self._respond, finding)

    def _jwt_validated(self, jti: str, subject: str) -> None:
        if self.detector is None:
            return
        owner = next((e.id for e in self.registry.entries() if e.spiffe_id == subject), "")
        for finding in self.detector.validated(jti, owner):
            asyncio.get_running_loop().call_soon(self._respond, finding)

    def _respond(self, f: Finding) -> None:
        entry = None
        if f.agent_id:
            with contextlib.suppress(EnsignError):
                entry = self.registry.get(f.agent_id)
        action: str = self.config.anomaly.action
        if entry is not None:
            action = entry.metadata.get("anomaly.action", action)
        if action == "off":
            return
        suspend = action == "suspend" and entry is not None and entry.state == "active"
        self.audit.record_nowait(AuditEvent(
            type="anomaly", result="failure", reason=f.line(), agent_id=f.agent_id,
            spiffe_id=entry.spiffe_id if entry else "",
            process=Process(pid=0, uid=f.uid, gid=0) if f.uid is not None else None,
            details={"signal": f.signal, "seen": f.seen, "expected": f.expected, "why": f.why,
                     "values": f.values, "action": "suspend" if suspend else "alert"}))
        log.warning("anomaly", extra={"signal": f.signal, "agent": f.agent_id,
                                      "finding": f.line(), "action": action})
        if suspend and entry is not None:
            self.registry.transition(entry.id, "suspend", "ensign",
                                     f"anomaly {f.signal}: {f.line()}")

    def _prune(self) -> None:
        self._prune_scheduled = False
        self.cache.prune(self.registry.live_ids())

    def _save_anomaly_state(self, force: bool = False) -> None:
        if self.detector is None or (not force and time.time() - self._anomaly_saved < 30):
            return
        self._anomaly_saved = time.time()
        try:
            self.detector.save(self._anomaly_state)
        except OSError as e:
            log.warning("cannot save anomaly baselines", extra={"error": str(e)})

    def _reload(self) -> None:
        """SIGHUP: re-read the config. Applied at once: log_level and the delegation issuers'
        key files. Everything else needs a restart (said in the log); the registry stays."""
        if self._config_path is None:
            log.warning("SIGHUP ignored: no config file (dev mode)")
            return
        try:
            new = load_config(self._config_path)
        except EnsignError as e:
            log.error("reload failed; keeping the running config", extra={
                "reason": e.diagnostics()})
            return
        logging.getLogger().setLevel(new.log_level.upper())
        self.issuers.load_files()
        pending = sorted(k for k in type(new).model_fields
                         if k != "log_level" and getattr(new, k) != getattr(self.config, k))
        log.info("config reloaded", extra={"log_level": new.log_level,
                                           "needs_restart": pending})

    def status(self) -> StatusResponse:
        current = self.ca.current()
        return StatusResponse(
            trust_domain=self.config.trust_domain, started_at=int(self._started),
            entries=len(self.registry), active_entries=len(self.registry.live_ids()),
            roles=len(self.roles.all), grants=len(self.grants.entries()),
            connections=len(self.tracker), ca_not_after=int(current.not_after.timestamp()),
            ca_next_event=int(self.ca.next_event_at().timestamp()),
            attestors=self.pipeline.names, audit_sequence=self.audit.seq,
            problem=self._problem() or "", attestor_state=self._attestor_states(),
            log_level=logging.getLevelName(logging.getLogger().level).lower(),
        )

    def _metric_state(self) -> dict[str, float]:
        current = self.ca.current()
        return {
            "uptime_seconds": time.time() - self._started,
            "registry_entries": float(len(self.registry)),
            "connections_open": float(len(self.tracker)),
            "ca_expiry_timestamp": current.not_after.timestamp(),
            "ca_next_event_timestamp": self.ca.next_event_at().timestamp(),
            "audit_sequence": float(self.audit.seq),
            "audit_queue_depth": float(self.audit.queue_depth),
            "request_bytes_pending": float(message_limit.pending_bytes()),
            "cache_x509_svids": float(self.cache.sizes()[0]),
            "cache_jwt_svids": float(self.cache.sizes()[1]),
            "tpm_available": 1.0 if self.tpm is not None and self.tpm.available else 0.0,
            **self._optional_gauges(),
            "audit_writable": 0.0 if self.audit.problem else 1.0,
            "serving": 0.0 if self._problem() else 1.0,
        }

    def _attestor_states(self) -> dict[str, str]:
        states = self.pipeline.states()
        if self.tpm is not None:  # the node's attestor: merged at match time, not in the pipeline
            states["tpm"] = TpmAttestor(self.config.attestors.tpm, service=self.tpm).state()
        return states

    def _optional_gauges(self) -> dict[str, float]:
        gauges: dict[str, float] = {}
        if self.tpm is not None and (age := self.tpm.quote_age) is not None:
            gauges["tpm_quote_age_seconds"] = age
        if (expiry := self.cache.earliest_x509_expiry()) is not None:
            gauges["svid_x509_earliest_expiry_timestamp"] = expiry.timestamp()
        return gauges

    def _problem(self) -> str | None:
        """Why the daemon cannot issue right now (None: serving). Health reports it."""
        if self._draining:
            return "shutting down"
        if self.audit.problem:
            return self.audit.problem
        if self.tpm is not None and not self.tpm.available:
            return f"TPM unavailable: {self.tpm.problem or 'not connected'}"
        try:
            self.ca.current()
        except EnsignError as e:
            return f"CA unusable: {e.diagnostics()}"
        return None

    def _on_tpm_change(self) -> None:
        self.broadcast.publish()  # streams re-match against the new node selectors

    def _on_tpm_event(self, e: TpmEvent) -> None:
        self.audit.record_nowait(AuditEvent(type="tpm", result=e.result, reason=e.reason,
                                            details={"event": e.type, **e.details}))

    def _on_change(self, event: ChangeEvent) -> None:
        self.audit.record_nowait(audit_records.change(event))
        # Suspended, decommissioned or deleted entries lose their cached SVIDs at once; streams
        # wake, recompute, and end with PermissionDenied when no identity is left.
        if event.action.startswith("role_"):
            self.cache.forget_jwts()
        # One prune per loop pass, however many changes a bulk apply emits (10,000 agents
        # in one transaction would otherwise rebuild the live set 10,000 times).
        if not self._prune_scheduled:
            self._prune_scheduled = True
            asyncio.get_running_loop().call_soon(self._prune)
        log.info("registry changed", extra={
            "action": event.action, "subject": event.subject, "actor": event.actor,
            "reason": event.reason})
        self.broadcast.publish()

    async def _maintain_until_stopped(self) -> None:
        """Rotate the CA and SVIDs when due and wake the streams that must see it."""
        while not self._stop.is_set():
            self.registry.expire_due()
            self._save_anomaly_state()
            changed = False
            if self.ca.maintain():
                self.cache.forget_all()
                changed = True
                log.info("CA authorities changed")
                self.audit.record_nowait(AuditEvent(type="ca.rotated", details={
                    "authorities": [a.jwt_kid for a in self.ca.authorities()],
                    "signing": self.ca.current().jwt_kid}))
            if self.cache.expire_due():
                changed = True
            if changed:
                self.broadcast.publish()
            now = self._clock()
            due = [self.ca.next_event_at()]  # entry expiry is checked every tick (<= 1 s)
            nxt = self.cache.next_refresh_at()
            if nxt is not None:
                due.append(nxt)
            delay = max(0.01, min(MAX_TICK, min((d - now).total_seconds() for d in due)))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _shutdown(self) -> None:
        self._draining = True
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        for server in (self._workload_server, self._admin_server):
            server.close()
        for server in (self._workload_server, self._admin_server):
            await server.wait_closed()
        await self.pipeline.aclose()
        if self.tpm is not None:
            await self.tpm.aclose()
        self._save_anomaly_state(force=True)
        await self.issuers.aclose()
        await self.audit.close()
        self.tracker.close_all()
        self.store.close()
        log.info("stopped")
