"""The fleet on a real PostgreSQL (started here, like the tests do): three figures.

- `fleet_issuance_pg_vs_sqlite`: JWT-SVID fetches/s (8 client processes) from a daemon whose
  registry is in PostgreSQL beside one on SQLite, rounds alternating in the same run. Target
  >= 0.95: the database is off the issuing path (the registry is served from memory). The PG
  daemon also ships its audit records in the background, and the database runs on the same two
  cores, so the figure includes both costs.
- `fleet_propagation_p50_ms` / `_p99_ms`: three nodes; an agent's `hint` is changed through node
  1's admin API and the time from the call to the new X.509-SVID arriving on the streams of
  nodes 2 and 3 (the later of the two) is measured; baseline: node 1's own stream. Target p99
  <= 1000 ms.
- `fleet_audit_shipping`: 64 concurrent issuers write durable records as fast as the log takes
  them (baseline: records/s written) while the shipper runs in the same process (records/s
  shipped in the same window); target >= 0.9 (shipping keeps up), with the lag when the writers
  stop, the time to catch up, and the shipper's capacity on a backlog in the note.

The cluster helper is the test suite's (tests/support/postgres.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from ensign.daemon.audit.log import AuditLog
from ensign.daemon.config import AuditConfig
from ensign.daemon.fleet import Shipper
from ensign.daemon.registry import PgStore
from ensign.proto import admin_pb2
from ensign.proto import workload_pb2 as pb
from tests.support import postgres
from tests.support.daemon import Daemon
from tests.support.fleet import FleetDb, fleet_config

from . import _servers
from ._clients import ClientPool, Task
from ._stats import meets, ratio, summarize
from .audit_append import EVENT

CLIENTS = 8
METHOD = "/SpiffeWorkloadAPI/FetchJWTSVID"
METADATA = (("workload.spiffe.io", "true"),)


def run(quick: bool) -> dict[str, dict[str, Any]]:
    why = postgres.available()
    if why is not None:
        raise RuntimeError(why)
    cluster = postgres.start_cluster()
    try:
        figures = _issuance(cluster, quick)
        figures.update(_propagation(cluster, quick))
        figures.update(_shipping(cluster, quick))
        return figures
    finally:
        cluster.destroy()


# -- issuance: PostgreSQL beside SQLite --------------------------------------------------------


def _issuance(cluster: postgres.Cluster, quick: bool) -> dict[str, dict[str, Any]]:
    reps, warmup, duration = (2, 1.0, 2.0) if quick else (5, 1.0, 5.0)
    db = FleetDb.create(cluster, ("bench-node",))
    request = pb.JWTSVIDRequest(audience=["bench"]).SerializeToString()
    runs: dict[str, list[float]] = {"baseline": [], "ensign": []}
    errors = 0
    a = Path(tempfile.mkdtemp(prefix="ensbs", dir="/tmp"))
    b = Path(tempfile.mkdtemp(prefix="ensbp", dir="/tmp"))
    try:
        with (
            _servers.daemon(a) as sqlite,
            _servers.daemon(b, extra_config=fleet_config(db, "bench-node")) as pg,
            ClientPool(CLIENTS) as pool,
        ):
            for rep in range(reps):
                for side, server in (("baseline", sqlite), ("ensign", pg)):
                    r = pool.run(Task(str(server.socket), METHOD, request, METADATA, warmup,
                                      duration))
                    runs[side].append(r.rate)
                    errors += r.errors
                    print(f"  fleet issuance round {rep + 1}/{reps} "
                          f"{'postgres' if side == 'ensign' else 'sqlite':8}: {r.rate:8.1f}/s",
                          file=sys.stderr)
    finally:
        shutil.rmtree(a, ignore_errors=True)
        shutil.rmtree(b, ignore_errors=True)
    e, base = summarize(runs["ensign"]), summarize(runs["baseline"])
    value = ratio(e["median"], base["median"])
    return {"fleet_issuance_pg_vs_sqlite": {
        "unit": "JWT fetches/s", "ensign": e, "baseline": base, "ratio": value,
        "target": ">= 0.95", "met": meets(value, ">= 0.95"), "errors": errors,
        "note": "registry in PostgreSQL (ensign) vs SQLite (baseline), 8 grpcio processes; the "
                "PG node ships its audit trail meanwhile, to a database on the same 2 cores",
        "setup": {"clients": CLIENTS, "reps": reps, "duration_s": duration},
    }}


# -- propagation: a change on node 1 reaching the streams of nodes 2 and 3 ---------------------


class _Watch:
    """A raw FetchX509SVID stream that timestamps each message."""

    def __init__(self, socket: Path) -> None:
        import grpc  # type: ignore[import-untyped,unused-ignore]

        self.arrivals: list[float] = []
        self.cond = threading.Condition()
        self._channel = grpc.insecure_channel(f"unix:{socket}")
        self._call = self._channel.unary_stream("/SpiffeWorkloadAPI/FetchX509SVID")(
            pb.X509SVIDRequest().SerializeToString(), metadata=METADATA)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with contextlib.suppress(Exception):
            for _ in self._call:
                with self.cond:
                    self.arrivals.append(time.perf_counter())
                    self.cond.notify_all()

    def after(self, t0: float, timeout: float = 10.0) -> float:
        """Seconds from t0 to the first message after it."""
        with self.cond:
            self.cond.wait_for(lambda: any(t > t0 for t in self.arrivals), timeout)
            later = [t for t in self.arrivals if t > t0]
        if not later:
            raise RuntimeError("no update arrived within 10 s")
        return later[0] - t0

    def close(self) -> None:
        self._call.cancel()
        self._channel.close()


@contextlib.contextmanager
def _trio(cluster: postgres.Cluster) -> Iterator[list[Daemon]]:
    names = ("node-1", "node-2", "node-3")
    db = FleetDb.create(cluster, names)
    root = Path(tempfile.mkdtemp(prefix="ensbf", dir="/tmp"))
    root.chmod(0o755)
    nodes: list[Daemon] = []
    try:
        for name in names:
            d = Daemon(root=root / name, extra_config=fleet_config(db, name))
            d.root.mkdir(mode=0o755)
            d.start()
            nodes.append(d)
        yield nodes
    finally:
        for d in nodes:
            if d.alive():
                d.stop()
        shutil.rmtree(root, ignore_errors=True)


def _propagation(cluster: postgres.Cluster, quick: bool) -> dict[str, dict[str, Any]]:
    import grpc  # type: ignore[import-untyped,unused-ignore]

    changes = 30 if quick else 200
    local: list[float] = []
    remote: list[float] = []
    with _trio(cluster) as nodes:
        rec = nodes[0].register("propagated", "unix:uid:0")
        for d in nodes[1:]:
            deadline = time.monotonic() + 30
            while '"propagated"' not in d.cli("agent", "list", "-o", "json").stdout:
                if time.monotonic() > deadline:
                    raise RuntimeError("the registration did not reach every node")
                time.sleep(0.1)
        watches = [_Watch(d.socket) for d in nodes]
        with grpc.insecure_channel(f"unix:{nodes[0].admin_socket}") as admin:
            update = admin.unary_unary("/ensign.admin.v1.Admin/UpdateAgent")
            try:
                for w in watches:
                    w.after(0.0)  # the first message
                for i in range(changes):
                    t0 = time.perf_counter()
                    update(admin_pb2.UpdateAgentRequest(id=str(rec["id"]), hint=f"h{i}")
                           .SerializeToString(), timeout=10)
                    local.append(1000 * watches[0].after(t0))
                    remote.append(1000 * max(w.after(t0) for w in watches[1:]))
                    time.sleep(0.02)
            finally:
                for w in watches:
                    w.close()
    out: dict[str, dict[str, Any]] = {}
    for name, q in (("fleet_propagation_p50_ms", 50), ("fleet_propagation_p99_ms", 99)):
        e, b = _percentile(remote, q), _percentile(local, q)
        out[name] = {
            "unit": "ms", "ensign": summarize([e]), "baseline": summarize([b]),
            "ratio": ratio(e, b), "target": "<= 1000 ms", "met": e <= 1000.0,
            "note": f"{changes} changes made on node 1: until the later of nodes 2 and 3 streams "
                    f"the new SVID (ensign) vs node 1's own stream (baseline), p{q}",
        }
    print(f"  fleet propagation: remote p50 {_percentile(remote, 50):.1f} ms, "
          f"p99 {_percentile(remote, 99):.1f} ms", file=sys.stderr)
    return out


def _percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


# -- audit shipping beside the local durable rate ----------------------------------------------


async def _ship_while_writing(db: FleetDb, data: Path,
                              seconds: float) -> tuple[float, float, int, float, float]:
    """With the shipper running alongside 64 writers: (records/s written durably, records/s
    shipped in the same window, lag when writing stopped, seconds to catch up); then the
    shipper's capacity on a backlog (records/s)."""
    log = AuditLog(AuditConfig(checkpoint_every=1000, checkpoint_interval=timedelta(seconds=60)),
                   data)
    log.open()
    store = PgStore(db.url("ship-node"), "", "ship-node")
    await store.pool.open()
    async with store.connection() as conn:
        await conn.execute("INSERT INTO nodes (name, started_at, heartbeat_at) "
                           "VALUES ('ship-node', now(), now()) ON CONFLICT DO NOTHING")
    shipper = Shipper(log.dir, "ship-node", lambda: log.seq, store.connection, wake_every=0.05)

    async def write(how_long: float) -> tuple[int, float]:
        count = 0
        stop = time.perf_counter() + how_long

        async def issuer() -> None:
            nonlocal count
            while time.perf_counter() < stop:
                await log.record(EVENT)
                count += 1

        start = time.perf_counter()
        await asyncio.gather(*(issuer() for _ in range(64)))
        return count, time.perf_counter() - start

    # (1) alongside: shipped within the window, how far behind when writing stops, how long
    task = asyncio.get_running_loop().create_task(shipper.run())
    await asyncio.sleep(0.3)  # the shipper has found its place
    first = shipper.shipped
    written, took = await write(seconds)
    written_at = time.perf_counter()
    shipped_in_window = shipper.shipped - first
    lag = log.seq - shipper.shipped
    while shipper.shipped < log.seq:
        await asyncio.sleep(0.005)
    catch_up = time.perf_counter() - written_at
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    # (2) capacity: a backlog written with shipping stopped, then shipped on its own
    await write(min(seconds, 2.0))
    backlog = log.seq - shipper.shipped
    start = time.perf_counter()
    while shipper.shipped < log.seq:
        await shipper.ship_once()
    capacity = backlog / (time.perf_counter() - start)
    await log.close()
    await store.close()
    return written / took, shipped_in_window / took, lag, catch_up, capacity


def _shipping(cluster: postgres.Cluster, quick: bool) -> dict[str, dict[str, Any]]:
    reps, seconds = (2, 2.0) if quick else (4, 4.0)
    db = FleetDb.create(cluster, ("ship-node",))
    runs: dict[str, list[float]] = {"baseline": [], "ensign": []}
    lags: list[int] = []
    catch_up: list[float] = []
    capacity: list[float] = []
    for rep in range(reps):
        db.sql("DELETE FROM audit_records; DELETE FROM audit_checkpoints; DELETE FROM nodes")
        tmp = Path(tempfile.mkdtemp(prefix="ensign-bench-ship-", dir="/var/tmp"))
        try:
            local, shipped, lag, late, cap = asyncio.run(_ship_while_writing(db, tmp, seconds))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        runs["baseline"].append(local)
        runs["ensign"].append(shipped)
        lags.append(lag)
        catch_up.append(late)
        capacity.append(cap)
        print(f"  fleet audit shipping round {rep + 1}/{reps}: local {local:8.0f}/s, shipped "
              f"{shipped:8.0f}/s, lag {lag} records, caught up {late:.2f}s after; backlog "
              f"shipped at {cap:8.0f}/s", file=sys.stderr)
    e, b = summarize(runs["ensign"]), summarize(runs["baseline"])
    value = ratio(e["median"], b["median"])
    return {"fleet_audit_shipping": {
        "unit": "records/s", "ensign": e, "baseline": b, "ratio": value, "target": ">= 0.9",
        "met": meets(value, ">= 0.9"),
        "note": f"shipped (ensign) vs written durably by 64 issuers (baseline) in the same "
                f"window, one process; behind by at most {max(lags)} records when the writers "
                f"stopped, caught up within {max(catch_up):.2f} s; a backlog ships at "
                f"{statistics.median(capacity):.0f} records/s (median)",
        "setup": {"reps": reps, "seconds": seconds},
    }}
