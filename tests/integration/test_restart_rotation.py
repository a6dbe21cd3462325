"""Rotation seen by real clients, and a restart that keeps the CA, registry and trust bundle."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from spiffe import WorkloadApiClient

from ensign.daemon.issuing import load_der_chain
from ensign.proto import workload_pb2 as pb
from tests.support.clients import channel, fetch_jwt, stream, unary
from tests.support.daemon import make_daemon


class _Collector:
    def __init__(self) -> None:
        self.contexts: list[Any] = []
        self.errors: list[Exception] = []
        self.cond = threading.Condition()

    def on_success(self, ctx: Any) -> None:
        with self.cond:
            self.contexts.append(ctx)
            self.cond.notify_all()

    def on_error(self, err: Exception) -> None:
        self.errors.append(err)

    def wait_for(self, n: int, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.contexts) >= n, timeout)

    def serials(self) -> list[int]:
        return [c.default_svid.leaf.serial_number for c in self.contexts]


def _authorities(ctx: Any) -> set[bytes]:
    td = ctx.default_svid.spiffe_id.trust_domain
    return {a.tbs_certificate_bytes
            for a in ctx.x509_bundle_set.get_bundle_for_trust_domain(td).x509_authorities}


def test_stream_sees_svid_rotation_at_half_life(short_tmp: Path) -> None:
    d = make_daemon(short_tmp, '[svid]\nx509_ttl = "4s"\n')
    try:
        d.register("rotating", "unix:uid:0")
        seen = _Collector()
        with WorkloadApiClient(socket_path=d.endpoint) as client:
            handle = client.stream_x509_contexts(seen.on_success, seen.on_error)
            try:
                # 4 s lifetime: re-minted at 2 s ± 0.4 s; wait for two rotations.
                assert seen.wait_for(3, timeout=12), seen.errors
            finally:
                handle.cancel()
        serials = seen.serials()
        assert len(set(serials)) == len(serials), "duplicate updates were not suppressed"
        first, second = seen.contexts[0].default_svid.leaf, seen.contexts[1].default_svid.leaf
        # The new SVID arrives before the old one expires (half life, not at expiry).
        assert second.not_valid_before_utc < first.not_valid_after_utc
    finally:
        d.stop()


def test_restart_keeps_ca_registry_bundle_and_clients_reconnect(short_tmp: Path) -> None:
    d = make_daemon(short_tmp)
    record = d.register("survivor", "unix:uid:0")
    seen = _Collector()
    with WorkloadApiClient(socket_path=d.endpoint) as client:
        handle = client.stream_x509_contexts(seen.on_success, seen.on_error)
        try:
            assert seen.wait_for(1, timeout=10)
            bundle_before = _authorities(seen.contexts[0])
            token_before = fetch_jwt(str(d.socket), "svc").svids[0].svid
            assert d.stop() == 0
            assert not d.socket.exists(), "socket file left behind after a clean stop"
            d.start()
            # The same client, without help, gets a context from the restarted daemon.
            assert seen.wait_for(2, timeout=15), seen.errors
        finally:
            handle.cancel()
    after = seen.contexts[-1]
    assert str(after.default_svid.spiffe_id) == record["spiffe_id"]
    assert _authorities(after) == bundle_before
    # A JWT-SVID minted before the restart still validates after it: same keys.
    raw = unary(str(d.socket), "ValidateJWTSVID",
                pb.ValidateJWTSVIDRequest(audience="svc", svid=token_before).SerializeToString())
    assert pb.ValidateJWTSVIDResponse.FromString(raw).spiffe_id == record["spiffe_id"]
    listing = d.cli("agent", "show", str(record["id"]), "-o", "json").stdout
    assert record["id"] in listing
    d.stop()


def test_ca_rotation_publishes_next_authority_before_it_signs(short_tmp: Path) -> None:
    # 12 s CA: the next authority is published at 40% (4.8 s) and signs from half life (6 s).
    d = make_daemon(short_tmp, '[ca]\nttl = "12s"\n[svid]\nx509_ttl = "2s"\n')
    try:
        d.register("ca-rotation", "unix:uid:0")
        with channel(str(d.socket)) as ch:
            it = stream(ch, "FetchX509SVID", timeout=20)
            issuers: list[bytes] = []
            bundle_sizes: list[int] = []
            deadline = time.monotonic() + 12
            while time.monotonic() < deadline:
                resp = pb.X509SVIDResponse.FromString(next(it))
                leaf = load_der_chain(resp.svids[0].x509_svid)[0]
                bundle = load_der_chain(resp.svids[0].bundle)
                issuers.append(leaf.issuer.public_bytes())
                bundle_sizes.append(len(bundle))
                assert leaf.issuer in [c.subject for c in bundle]
                if len(set(issuers)) == 2:
                    break
        assert len(set(issuers)) == 2, "SVIDs never moved to the next CA"
        assert max(bundle_sizes) == 2
    finally:
        d.stop()
