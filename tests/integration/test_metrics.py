"""/metrics: Prometheus text that parses and moves with traffic."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support.clients import fetch_jwt
from tests.support.daemon import make_daemon
from tests.support.net import free_port
from tests.support.streams import X509Stream


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_parse_and_move(short_tmp: Path) -> None:
    port = free_port()
    d = make_daemon(short_tmp, f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    try:
        d.register("metered", "unix:uid:0")
        before = _scrape(port)
        for i in range(5):
            fetch_jwt(str(d.socket), f"m{i}")
        after = _scrape(port)
        key = ("ensign_rpc_total", (("method", "FetchJWTSVID"), ("status", "OK")))
        assert after[key] - before.get(key, 0) == 5
        assert after[("ensign_registry_entries", ())] == 1
        assert after[("ensign_serving", ())] == 1
        assert after[("ensign_ca_expiry_timestamp", ())] > 0
        assert ("ensign_rpc_seconds_bucket",
                (("le", "+Inf"), ("method", "FetchJWTSVID"))) in after
        assert after[("ensign_cache_jwt_svids", ())] == 5  # one per audience
        assert ("ensign_attestation_seconds_count", (("attestor", "unix"),)) in after
        svids = ("ensign_svids_issued_total", (("kind", "jwt"),))
        assert after[svids] - before.get(svids, 0) == 5
        # every issuance waited for a durable audit write, and the time it took is recorded
        writes = ("ensign_audit_write_seconds_count", ())
        assert after[writes] - before.get(writes, 0) >= 1
        d.cli("fetch", "x509")
        expiry = _scrape(port)[("ensign_svid_x509_earliest_expiry_timestamp", ())]
        assert expiry > time.time()
        # in flight: the unary calls ended, an open X.509 stream counts until it closes
        jwt_inflight = ("ensign_rpc_inflight", (("method", "FetchJWTSVID"),))
        x509_inflight = ("ensign_rpc_inflight", (("method", "FetchX509SVID"),))
        assert after[jwt_inflight] == 0
        stream = X509Stream(d.endpoint)
        try:
            assert stream.wait(lambda: stream.contexts, 30)
            assert _scrape(port)[x509_inflight] == 1
        finally:
            stream.close()
        deadline = time.monotonic() + 30
        while _scrape(port)[x509_inflight] != 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _scrape(port)[x509_inflight] == 0
    finally:
        d.stop()
