"""Envoy's Secret Discovery Service (SDS v3) on the Workload API socket, as SPIRE's agent serves it.

Envoy sends no `workload.spiffe.io` header, so the front skips that check for this service only;
the caller is attested from the connection like any other and gets only its own identities
(names: _sds_resources.py). StreamSecrets follows the xDS state-of-the-world protocol: a response
carries a version and a nonce; a request whose nonce is not the last one sent is stale and
ignored; an ACK or NACK (error_detail set) with unchanged names asks for nothing, so a rejected
version is never sent again, only newer content is (rotation, registry or bundle change: the
streams wait on the same Broadcast as the Workload API's). Before every response the caller is
attested again; when its last identity goes away the stream ends with PERMISSION_DENIED.
Every certificate is audited (durable) before it leaves, once per stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

from ensign.daemon.api import _records
from ensign.daemon.api._sds_resources import SECRET_TYPE_URL, Composed, check_names, compose
from ensign.daemon.api.front import Call, recv
from ensign.daemon.audit.log import AuditLog
from ensign.daemon.errors import NoIdentity
from ensign.daemon.federation import FederatedBundles
from ensign.daemon.issuing import Broadcast, CertificateAuthority, SvidCache, X509Svid
from ensign.daemon.registry import Entry, RoleBook, x509_ttl_cap

log = logging.getLogger(__name__)

MAX_AUDITED = 256  # (entry, serial) pairs a stream remembers as recorded; then it records anew

Request = Any  # envoy.service.discovery.v3.DiscoveryRequest (xds-protos has no type stubs)
Response = Any


class _StreamState:
    """One StreamSecrets stream's side of the xDS conversation."""

    def __init__(self) -> None:
        self.names: tuple[str, ...] | None = None  # None until the first request
        self.nonce: str | None = None  # of the last response sent
        self.sent = 0  # responses sent; also the version
        self.digest = ""  # of the content last sent
        self.audited: set[tuple[str, int]] = set()  # (entry, serial) recorded on this stream

    def accept(self, request: Request) -> bool:
        """Take in a request; True if it may change what the client should have."""
        names = check_names(request.type_url, request.resource_names)
        if self.nonce is not None and request.response_nonce != self.nonce:
            return False  # stale: answers an older response (xDS: ignore it)
        if request.HasField("error_detail"):
            log.warning("Envoy rejected secrets", extra={
                "version": str(self.sent), "reason": request.error_detail.message[:256]})
        if names == self.names:
            return False  # ACK, or NACK of the current content: nothing new to send
        self.names = names
        return True


class SecretDiscoveryApi:
    def __init__(self, *, trust_domain: str, roles: RoleBook, cache: SvidCache,
                 ca: CertificateAuthority, audit: AuditLog, broadcast: Broadcast,
                 federation: FederatedBundles | None = None) -> None:
        self._federation = federation
        self._td = trust_domain
        self._roles = roles
        self._cache = cache
        self._ca = ca
        self._audit = audit
        self._broadcast = broadcast

    def _svid_for(self, entry: Entry) -> X509Svid:
        return self._cache.x509_for(entry, x509_ttl_cap(entry.roles, self._roles.all))

    def _compose(self, names: tuple[str, ...], entries: list[Entry]) -> Composed:
        """Our bundle first, then those of the trust domains the caller's entries federate
        with (as for FetchX509SVID): `ALL` carries them all, a trust domain's name its own."""
        bundles = {self._td: self._ca.x509_bundle_pem()}
        wanted = tuple(td for e in entries for td in e.federates_with)
        if self._federation is not None and wanted:
            bundles.update((b.trust_domain, b.x509_pem())
                           for b in self._federation.available(wanted))
        return compose(names, entries, self._svid_for, self._td, bundles)

    async def _audited(self, call: Call, composed: Composed,
                       done: set[tuple[str, int]] | None = None) -> None:
        """On disk before the keys leave (fail closed), as for FetchX509SVID."""
        attested = call.seen
        assert attested is not None
        fresh = [(e, s) for e, s in composed.served
                 if done is None or (e.id, s.cert.serial_number) not in done]
        await self._audit.durable([_records.x509_issued(attested, e, s, via="sds")
                                   for e, s in fresh])
        if done is not None:
            if len(done) > MAX_AUDITED:
                done.clear()
            done.update((e.id, s.cert.serial_number) for e, s in fresh)

    # -- RPCs ------------------------------------------------------------------------------

    async def FetchSecrets(self, stream: Stream[Request, Response], call: Call) -> None:
        request = await recv(stream)
        names = check_names(request.type_url, request.resource_names)
        await call.attested()
        composed = self._compose(names, call.identities())
        await self._audited(call, composed)
        await stream.send_message(discovery_pb2.DiscoveryResponse(
            version_info=composed.digest, resources=composed.resources,
            type_url=SECRET_TYPE_URL))

    async def DeltaSecrets(self, stream: Stream[Request, Response], call: Call) -> None:
        raise GRPCError(Status.UNIMPLEMENTED, "incremental SDS is not implemented; "
                        "use StreamSecrets (api_type GRPC)")

    async def StreamSecrets(self, stream: Stream[Request, Response], call: Call) -> None:
        state = _StreamState()
        watched: list[str] = []
        version = self._broadcast.version
        reading: asyncio.Task[Request | None] | None = None
        waking: asyncio.Task[int] | None = None
        try:
            while True:
                if reading is None:
                    reading = asyncio.ensure_future(stream.recv_message())
                if waking is None:
                    waking = asyncio.ensure_future(self._broadcast.wait(version))
                done, _ = await asyncio.wait({reading, waking},
                                             return_when=asyncio.FIRST_COMPLETED)
                changed = False
                if reading in done:
                    request, reading = reading.result(), None
                    if request is None:
                        return  # the client closed its side: done, like SPIRE
                    changed = state.accept(request)
                if waking in done:
                    version, waking = waking.result(), None
                    changed = True
                if changed and state.names is not None:
                    watched = await self._push(stream, call, state, watched)
        finally:
            for task in (reading, waking):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
            self._cache.unwatch(watched)

    async def _push(self, stream: Stream[Request, Response], call: Call, state: _StreamState,
                    watched: list[str]) -> list[str]:
        assert state.names is not None
        await call.attested()  # again at every update: is it still there, still the same?
        try:
            entries = call.identities()
        except NoIdentity:
            # Withdraw what Envoy holds (placeholders: it keeps a secret that merely goes
            # missing), then end the stream as the Workload API does; Envoy retries with backoff.
            composed = compose(state.names, [], self._svid_for, self._td, {})
            if composed.digest != state.digest and composed.resources:
                await self._send(stream, state, composed)
            raise
        composed = self._compose(state.names, entries)
        ids = sorted({e.id for e, _ in composed.served})
        if ids != watched:
            self._cache.watch(ids)  # so rotation wakes this stream
            self._cache.unwatch(watched)
        if composed.digest == state.digest:
            return ids  # nothing new (an unknown name, or the same certificate)
        await self._audited(call, composed, state.audited)
        await self._send(stream, state, composed)
        return ids

    async def _send(self, stream: Stream[Request, Response], state: _StreamState,
                    composed: Composed) -> None:
        state.sent += 1
        state.nonce = f"{state.sent}-{id(state):x}"
        state.digest = composed.digest
        await stream.send_message(discovery_pb2.DiscoveryResponse(
            version_info=str(state.sent), resources=composed.resources,
            type_url=SECRET_TYPE_URL, nonce=state.nonce))

