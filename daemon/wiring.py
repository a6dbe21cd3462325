"""The daemon's object graph, built in one place: which component gets which.

Nothing here starts or opens anything (the lifecycle in app.py does); `build()` only constructs,
so the graph can be read top to bottom and tested without a socket. What only some nodes use is
imported where it is built, so a node without it starts without loading it: a fleet's psycopg,
the HTTPS endpoint's aiohttp, the TPM's tpm2-pytss.
"""

from __future__ import annotations

import asyncio
import grp
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from ensign.attestors import BUILTIN
from ensign.attestors.base import Attestor
from ensign.daemon.actions import ActionRecorder, IssuanceIndex, TokenCheck
from ensign.daemon.anomaly import Responder
from ensign.daemon.api import (
    ActionsApi,
    AdminApi,
    AttestationApi,
    DelegationApi,
    Front,
    HealthService,
    Policy,
    SecretDiscoveryApi,
    WorkloadApi,
)
from ensign.daemon.audit import change, tpm_event
from ensign.daemon.audit.log import AuditLog
from ensign.daemon.config import Config, node_name
from ensign.daemon.delegation import (
    DelegationKeys,
    Introspector,
    TokenExchange,
    TrustedIssuers,
    issuer_names,
)
from ensign.daemon.federation import FederatedBundles, ServedBundle
from ensign.daemon.identity import AttestationPipeline, Resolver
from ensign.daemon.issuing import Broadcast, CertificateAuthority, SvidCache
from ensign.daemon.registry import (
    ChangeEvent,
    EventHub,
    GrantBook,
    Registry,
    RegistryStore,
    RoleBook,
    SqliteStore,
)
from ensign.daemon.server import (
    ADMIN_MAX_REQUEST_BYTES,
    ADMIN_SOCKET_MODE,
    WORKLOAD_SOCKET_MODE,
    PeerTracker,
    UidLimits,
    UnixServer,
    bounds,
    translated,
    with_reflection,
)
from ensign.daemon.state import NodeState
from ensign.proto.actions_grpc import ActionsBase
from ensign.proto.admin_grpc import AdminBase
from ensign.proto.attestation_grpc import AttestationBase
from ensign.proto.delegation_grpc import DelegationBase
from ensign.proto.sds_grpc import SecretDiscoveryServiceBase
from ensign.proto.workload_grpc import SpiffeWorkloadAPIBase

if TYPE_CHECKING:
    from ensign.daemon.actions import FleetIssuances
    from ensign.daemon.api.http import HttpsListener, ServerTls
    from ensign.daemon.fleet import Fleet
    from ensign.daemon.tpm.service import TpmService

log = logging.getLogger(__name__)


@dataclass
class Node:
    """Every long-lived component of one daemon."""

    config: Config
    clock: Callable[[], datetime]
    events: EventHub
    store: RegistryStore
    roles: RoleBook
    registry: Registry
    grants: GrantBook
    issuers: TrustedIssuers
    tpm: TpmService | None
    ca: CertificateAuthority
    delegation_keys: DelegationKeys
    broadcast: Broadcast
    cache: SvidCache
    tracker: PeerTracker
    pipeline: AttestationPipeline
    audit: AuditLog
    responder: Responder | None
    fleet: Fleet | None
    state: NodeState
    workload_server: UnixServer
    admin_server: UnixServer
    federation: FederatedBundles
    issuances: IssuanceIndex
    https: HttpsListener | None = None
    https_tls: ServerTls | None = None


def build(config: Config, clock: Callable[[], datetime]) -> Node:
    data = config.data_dir
    events = EventHub()
    fc = config.fleet
    pg = None
    if fc.database_url:
        from ensign.daemon.registry import PgStore

        pg = PgStore(fc.database_url, fc.admin_database_url, node_name(config),
                     fc.connect_timeout.total_seconds())
    store: RegistryStore = pg if pg is not None else SqliteStore(data / "registry.db")
    roles = RoleBook(store, events)
    registry = Registry(store, roles, events, config.trust_domain)
    grants = GrantBook(store, events)
    broadcast = Broadcast()
    audit = AuditLog(config.audit, data, clock)
    tpm: TpmService | None = None
    if config.attestors.tpm.enabled:
        tpm = _tpm(config, data, broadcast, audit)
    ca = CertificateAuthority(config.ca, config.trust_domain, data, clock,
                              sealer=tpm if config.ca.seal_with_tpm else None)
    cache = SvidCache(ca, config.svid, clock)
    dlg = config.delegation
    delegation_keys = DelegationKeys(data, alg=dlg.signing_alg, period=dlg.key_rotation,
                                     token_ttl=dlg.token_ttl, clock=clock,
                                     sealer=tpm if config.ca.seal_with_tpm else None)
    lim = config.limits
    bounds.configure(lim.max_request_bytes, lim.max_pending_request_bytes)
    tracker = PeerTracker(limits=UidLimits(
        lim.max_connections_per_uid, lim.requests_per_second_per_uid, lim.burst_per_uid))
    attestors: list[Attestor] = [
        factory(getattr(config.attestors, name)) for name, factory in BUILTIN.items()
        # the tpm attestor's node selectors are merged at match time (identity.resolve)
        if getattr(config.attestors, name).enabled and name != "tpm"]
    pipeline = AttestationPipeline(attestors, measure=tpm.measure if tpm is not None else None)
    responder = (Responder(config.anomaly, registry, audit, data / "anomaly.json")
                 if config.anomaly.enabled else None)
    issuers = TrustedIssuers(config.delegation)
    fleet: Fleet | None = None
    if pg is not None:
        from ensign.daemon.fleet import Fleet

        fleet = Fleet(config, pg, registry, roles, grants, ca, delegation_keys, audit, clock,
                      broadcast.publish)
    federation = FederatedBundles(config.federation, data, on_change=broadcast.publish)
    state = NodeState(config=config, registry=registry, roles=roles, grants=grants, ca=ca,
                      cache=cache, audit=audit, pipeline=pipeline, tracker=tracker, tpm=tpm,
                      federation=federation, started=time.time(), fleet=fleet)
    front = Front(tracker=tracker, pipeline=pipeline, resolver=Resolver(registry, tpm),
                  audit=audit)
    workload = WorkloadApi(config=config, registry=registry, roles=roles, cache=cache, ca=ca,
                           audit=audit, broadcast=broadcast, clock=clock, federation=federation,
                           jwt_keys=fleet.keys.jwt_keys if fleet else None,
                           jwks=fleet.keys.jwks if fleet else None)
    exchange = TokenExchange(config=config, registry=registry, roles=roles, grants=grants,
                             issuers=issuers, cache=cache, keys=delegation_keys, audit=audit,
                             clock=clock)
    issuances = IssuanceIndex(clock)
    # In a fleet a token any node issued verifies here (every node's published JWT-SVID and
    # delegated-token keys); its issuance record is on the node that issued it, and read here
    # as that node shipped it to the fleet database.
    recorder = ActionRecorder(tokens=TokenCheck(
        trust_domain=config.trust_domain, issuer_names=issuer_names(config),
        delegation_keys=delegation_keys.verification_keys,
        jwt_keys=fleet.keys.jwt_keys if fleet else ca.jwt_keys, clock=clock,
        key_owner=fleet.key_owner if fleet else None),
        index=issuances, clock=clock,
        fleet=_fleet_issuances(fleet, clock))
    # reflection lists what this socket serves: add services above it, never after
    workload_server = UnixServer(config.socket_path, WORKLOAD_SOCKET_MODE, with_reflection([
        front.serve(SpiffeWorkloadAPIBase, workload),
        # Envoy sends no workload.spiffe.io header (nor does SPIRE ask for one on SDS)
        front.serve(SecretDiscoveryServiceBase, SecretDiscoveryApi(
            trust_domain=config.trust_domain, roles=roles, cache=cache, ca=ca, audit=audit,
            broadcast=broadcast, federation=federation), Policy(header=False)),
        front.serve(DelegationBase, DelegationApi(exchange, delegation_keys)),
        front.serve(AttestationBase, AttestationApi(tpm)),
        front.serve(ActionsBase, ActionsApi(recorder, audit)),
        translated(HealthService(state.problem, state.notice).__mapping__()),
    ]), tracker, label="the Workload API socket")
    admin_gid = _group_id(config.admin_group)
    admin = AdminApi(registry=registry, roles=roles, grants=grants, audit=audit,
                     status=state.status, admin_gid=admin_gid,
                     delegation_enabled=config.delegation.enabled)
    admin_server = UnixServer(
        config.admin_socket_path, ADMIN_SOCKET_MODE if admin_gid is None else 0o660,
        [front.serve(AdminBase, admin, Policy(
            header=False, audit="auth", authorize=admin.authorize, prefix="admin.",
            max_request_bytes=ADMIN_MAX_REQUEST_BYTES))],
        tracker, gid=admin_gid, label="the admin socket")
    node = Node(config=config, clock=clock, events=events, store=store, roles=roles,
                registry=registry, grants=grants, issuers=issuers, tpm=tpm, ca=ca,
                delegation_keys=delegation_keys,
                broadcast=broadcast, cache=cache, tracker=tracker, pipeline=pipeline,
                audit=audit, responder=responder, fleet=fleet, state=state,
                workload_server=workload_server, admin_server=admin_server,
                federation=federation, issuances=issuances)
    if config.http.listen:
        _https(node, exchange)
    events.subscribe(_on_change(node))
    return node


def _fleet_issuances(fleet: Fleet | None,
                     clock: Callable[[], datetime]) -> FleetIssuances | None:
    if fleet is None:
        return None
    from ensign.daemon.actions import FleetIssuances

    return FleetIssuances(fleet.issuance, down=lambda: fleet.down, clock=clock)


def _https(node: Node, exchange: TokenExchange) -> None:
    """The HTTPS endpoint: its own per-address limits, the same [limits] values."""
    from ensign.daemon.api.http import HttpApi, HttpsListener, ServerTls

    config, lim = node.config, node.config.limits
    limits = UidLimits(lim.max_connections_per_uid, lim.requests_per_second_per_uid,
                       lim.burst_per_uid)
    introspector = Introspector(keys=node.delegation_keys, registry=node.registry,
                                grants=node.grants, issuer=exchange.issuer, clock=node.clock)
    # In a fleet the SPIFFE bundle served to federated domains holds every node's JWT-SVID keys
    # (a token minted on any node validates there), as the Workload API's JWT bundle does.
    jwt_keys = node.fleet.keys.jwt_keys if node.fleet is not None else node.ca.jwt_keys
    api = HttpApi(config=config, ca=node.ca, jwt_keys=jwt_keys, keys=node.delegation_keys,
                  exchange=exchange,
                  introspector=introspector, registry=node.registry, roles=node.roles,
                  audit=node.audit, limits=limits, clock=node.clock,
                  served=ServedBundle(config.data_dir,
                                      int(config.federation.refresh_hint.total_seconds())))
    tls = ServerTls(config, node.ca, node.clock)
    node.https_tls = tls
    node.https = HttpsListener(
        config.http.listen, app=api.application(), context=lambda: tls.context, limits=limits,
        max_connections=config.http.max_connections,
        handshake_timeout=config.http.handshake_timeout.total_seconds())


def _tpm(config: Config, data: object, broadcast: Broadcast, audit: AuditLog) -> TpmService:
    from ensign.daemon.tpm.service import TpmEvent, TpmService

    def on_event(e: TpmEvent) -> None:
        audit.record_nowait(tpm_event(e.type, e.result, e.reason, e.details))

    # streams re-match against the new node selectors when the TPM's verdict changes
    return TpmService(config.attestors.tpm, config.data_dir, on_change=broadcast.publish,
                      on_event=on_event)


def _on_change(node: Node) -> Callable[[ChangeEvent], None]:
    """Registry, role and grant changes: audited, cached SVIDs dropped, streams woken."""
    prune_scheduled = False

    def prune() -> None:
        nonlocal prune_scheduled
        prune_scheduled = False
        node.cache.prune(node.registry.live_ids())

    def on_change(event: ChangeEvent) -> None:
        nonlocal prune_scheduled
        if not event.origin:  # a change another node made is in that node's trail, once
            node.audit.record_nowait(change(event))
        if event.action.startswith("role_"):
            node.cache.forget_jwts()
        # One prune per loop pass, however many changes a bulk apply emits (10,000 agents
        # in one transaction would otherwise rebuild the live set 10,000 times).
        if not prune_scheduled:
            prune_scheduled = True
            asyncio.get_running_loop().call_soon(prune)
        log.info("registry changed", extra={
            "action": event.action, "subject": event.subject, "actor": event.actor,
            "reason": event.reason})
        # Suspended, decommissioned or deleted entries lose their cached SVIDs at once; streams
        # wake, recompute, and end with PermissionDenied when no identity is left.
        node.broadcast.publish()

    return on_change


def _group_id(name: str) -> int | None:
    if not name:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None
