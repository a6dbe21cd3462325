"""Prometheus metrics, served on `[metrics] listen` (off by default).

Counters and histograms are updated where things happen (the RPC error boundary, the audit
event stream); gauges that describe state (cache sizes, expiries, open streams) are read at
scrape time from the running daemon through `StateCollector`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)
_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60)

RPCS = Counter("ensign_rpc_total", "RPCs handled, by method and final status",
               ["method", "status"], registry=REGISTRY)
RPC_SECONDS = Histogram("ensign_rpc_seconds", "RPC duration (streams: their lifetime)",
                        ["method"], buckets=_LATENCY, registry=REGISTRY)
AUDIT_EVENTS = Counter("ensign_audit_events_total", "audit records written, by type and result",
                       ["type", "result"], registry=REGISTRY)
SVIDS = Counter("ensign_svids_issued_total", "SVIDs released to callers, by kind", ["kind"],
                registry=REGISTRY)
TOKENS = Counter("ensign_tokens_exchanged_total", "delegated tokens issued", registry=REGISTRY)
ACTIONS = Counter("ensign_actions_recorded_total",
                  "agent actions recorded, by attribution (issued: a token this trust domain "
                  "issued, valid when reported; unknown: see the record's reason)",
                  ["attribution"], registry=REGISTRY)
ANOMALIES = Counter("ensign_anomalies_total", "anomaly findings, by signal", ["signal"],
                    registry=REGISTRY)
ATTESTATION_SECONDS = Histogram("ensign_attestation_seconds", "time per attestor",
                                ["attestor"], buckets=_LATENCY, registry=REGISTRY)

HTTP_REQUESTS = Counter("ensign_http_requests_total",
                        "HTTPS endpoint requests, by endpoint and HTTP status",
                        ["endpoint", "status"], registry=REGISTRY)
HTTP_SECONDS = Histogram("ensign_http_request_seconds", "HTTPS endpoint request duration",
                         ["endpoint"], buckets=_LATENCY, registry=REGISTRY)
HTTP_REFUSED = Counter("ensign_http_connections_refused_total",
                       "HTTPS connections refused before a request: over a limit, or the TLS "
                       "handshake failed (no, a foreign or an expired client certificate, ...)",
                       ["reason"], registry=REGISTRY)
HTTP_CONNECTIONS = Gauge("ensign_http_connections_open", "open HTTPS connections",
                         registry=REGISTRY)
FEDERATION_FETCHES = Counter("ensign_federation_fetches_total",
                             "bundle endpoint fetches, by trust domain and result",
                             ["trust_domain", "result"], registry=REGISTRY)
FEDERATION_STALE = Gauge("ensign_federation_bundle_stale",
                         "1 while the last fetch of a federated bundle failed (the last good "
                         "bundle is still served)", ["trust_domain"], registry=REGISTRY)
FEDERATION_AGE = Gauge("ensign_federation_bundle_fetched_timestamp",
                       "when the federated bundle in use was fetched (unix time; 0: never)",
                       ["trust_domain"], registry=REGISTRY)

AUDIT_WRITE_SECONDS = Histogram("ensign_audit_write_seconds",
                                "time to make one batch of audit records durable (O_DSYNC write)",
                                buckets=_LATENCY, registry=REGISTRY)


# Label children by label values: `labels()` takes a lock and validates on every call, and
# observe_audit runs for every audit record on the issuing path. The label sets are small.
_CHILDREN: dict[tuple[Any, ...], Any] = {}


def _child(metric: Any, *values: str) -> Any:
    key = (metric, *values)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = metric.labels(*values)
    return child


def rpc_counter(method: str, status: str) -> Any:
    return _child(RPCS, method, status)


def http_request(endpoint: str, status: int, seconds: float) -> None:
    _child(HTTP_REQUESTS, endpoint, str(status)).inc()
    _child(HTTP_SECONDS, endpoint).observe(seconds)


def http_refused(reason: str) -> None:
    _child(HTTP_REFUSED, reason).inc()


def observe_audit(body: dict[str, Any]) -> None:
    kind, result = str(body.get("type", "")), str(body.get("result", ""))
    _child(AUDIT_EVENTS, kind, result).inc()
    if kind == "svid.issued":
        _child(SVIDS, str((body.get("details") or {}).get("kind", ""))).inc()
    elif kind == "token.exchanged" and result == "success":
        TOKENS.inc()
    elif kind == "action":
        _child(ACTIONS, str((body.get("details") or {}).get("attribution", ""))).inc()
    elif kind == "anomaly":
        _child(ANOMALIES, str((body.get("details") or {}).get("signal", ""))).inc()


class Inflight:
    """One method's RPCs in progress: counted on the event loop with plain integers (two
    Prometheus gauge updates, each taking a lock, were a tenth of the metrics cost of a call)
    and read at scrape time as `ensign_rpc_inflight{method}`."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


_INFLIGHT: dict[str, Inflight] = {}


def inflight(method: str) -> Inflight:
    return _INFLIGHT.setdefault(method, Inflight())


class _InflightCollector(Collector):
    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("ensign_rpc_inflight",
                                   "RPCs in progress (open streams included)", labels=["method"])
        for method, count in sorted(_INFLIGHT.items()):
            family.add_metric([method], count.n)
        yield family


REGISTRY.register(_InflightCollector())


class StateCollector(Collector):
    """Gauges computed from the daemon's state at scrape time."""

    def __init__(self, read: Callable[[], dict[str, float]]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            values = self._read()
        except Exception:  # a scrape must never break the daemon
            log.exception("metrics collection failed")
            return
        for name, value in values.items():
            yield GaugeMetricFamily(f"ensign_{name}", name.replace("_", " "), value=value)


def serve(listen: str, state: Callable[[], dict[str, float]]) -> Any:
    host, _, port = listen.rpartition(":")
    REGISTRY.register(StateCollector(state))
    server, _thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=REGISTRY)
    log.info("metrics listening", extra={"listen": listen})
    return server
