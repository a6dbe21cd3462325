"""The node's state as operators read it: why it cannot issue, `ensign status`, metric gauges.

Derived on demand from the components, never stored, so it cannot drift from what they hold.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ensign.attestors import TpmAttestor
from ensign.daemon.audit.log import AuditLog
from ensign.daemon.config import Config
from ensign.daemon.errors import EnsignError
from ensign.daemon.federation import FederatedBundles
from ensign.daemon.identity.pipeline import AttestationPipeline
from ensign.daemon.issuing import CertificateAuthority, SvidCache
from ensign.daemon.registry import GrantBook, Registry, RoleBook
from ensign.daemon.server import PeerTracker, bounds
from ensign.proto.admin_pb2 import StatusResponse

if TYPE_CHECKING:  # a fleet's psycopg and the TPM's tpm2-pytss load only where configured
    from ensign.daemon.fleet import Fleet
    from ensign.daemon.tpm.service import TpmService


@dataclass
class NodeState:
    config: Config
    registry: Registry
    roles: RoleBook
    grants: GrantBook
    ca: CertificateAuthority
    cache: SvidCache
    audit: AuditLog
    pipeline: AttestationPipeline
    tracker: PeerTracker
    tpm: TpmService | None
    federation: FederatedBundles
    started: float
    fleet: Fleet | None = None
    draining: bool = False

    def problem(self) -> str | None:
        """Why the daemon cannot issue right now (None: serving). Health reports it."""
        if self.draining:
            return "shutting down"
        if self.audit.problem:
            return self.audit.problem
        if self.tpm is not None and not self.tpm.available:
            return f"TPM unavailable: {self.tpm.problem or 'not connected'}"
        # Like the TPM: callers whose entries need this attestor's selectors get no identity,
        # so the node says so instead of looking healthy.
        failing = self.pipeline.problems()
        if failing:
            name = min(failing)
            return f"attestor {name} failing: attestors.{name}.{failing[name]}"
        try:
            self.ca.current()
        except EnsignError as e:
            return f"CA unusable: {e.diagnostics()}"
        return None

    def notice(self) -> str | None:
        """What is degraded while the daemon still issues (health says it beside SERVING): the
        fleet database unreachable, audit shipping stopped."""
        return self.fleet.notice() if self.fleet is not None else None

    def status(self) -> StatusResponse:
        current = self.ca.current()
        return StatusResponse(
            trust_domain=self.config.trust_domain, started_at=int(self.started),
            entries=len(self.registry), active_entries=len(self.registry.live_ids()),
            roles=len(self.roles.all), grants=len(self.grants.entries()),
            connections=len(self.tracker), ca_not_after=int(current.not_after.timestamp()),
            ca_next_event=int(self.ca.next_event_at().timestamp()),
            attestors=self.pipeline.names + (["tpm"] if self.tpm is not None else []),
            audit_sequence=self.audit.seq,
            problem=self.problem() or "", attestor_state=self.attestor_states(),
            log_level=logging.getLevelName(logging.getLogger().level).lower(),
            federation=self.federation.status(),
            notice=self.notice() or "",
            fleet=self.fleet.status() if self.fleet is not None else {},
        )

    def attestor_states(self) -> dict[str, str]:
        states = self.pipeline.states()
        if self.tpm is not None:  # the node's attestor: merged at match time, not in the pipeline
            states["tpm"] = TpmAttestor(self.config.attestors.tpm, service=self.tpm).state()
        return states

    def gauges(self) -> dict[str, float]:
        current = self.ca.current()
        x509s, jwts = self.cache.sizes()
        gauges = {
            "uptime_seconds": time.time() - self.started,
            "registry_entries": float(len(self.registry)),
            "connections_open": float(len(self.tracker)),
            "ca_expiry_timestamp": current.not_after.timestamp(),
            "ca_next_event_timestamp": self.ca.next_event_at().timestamp(),
            "audit_sequence": float(self.audit.seq),
            "audit_queue_depth": float(self.audit.queue_depth),
            "request_bytes_pending": float(bounds.pending_bytes()),
            "cache_x509_svids": float(x509s),
            "cache_jwt_svids": float(jwts),
            "tpm_available": 1.0 if self.tpm is not None and self.tpm.available else 0.0,
            "audit_writable": 0.0 if self.audit.problem else 1.0,
            "attestors_failing": float(len(self.pipeline.problems())),
            "serving": 0.0 if self.problem() else 1.0,
        }
        if self.tpm is not None and (age := self.tpm.quote_age) is not None:
            gauges["tpm_quote_age_seconds"] = age
        if (expiry := self.cache.earliest_x509_expiry()) is not None:
            gauges["svid_x509_earliest_expiry_timestamp"] = expiry.timestamp()
        return gauges
