"""New connection -> first X.509-SVID, p50 and p99, against a bare new connection + one RPC.

Real grpcio client processes (spawned once, reused every round) each loop: open a fresh channel
(its own subchannel pool, so a new Unix-socket connection every time), call
`/SpiffeWorkloadAPI/FetchX509SVID` with raw bytes, read the first message, cancel, close. The
latency is from channel creation to the first message. The baseline is the bare grpclib echo
server (bench/echo_server.py) answering FetchX509SVID with a fixed response of the daemon's
size. Rounds alternate between the servers; ratios are median over rounds of each round's
percentile, daemon / echo. Target: <= 2.0 for p50 and p99.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from . import _servers
from ._clients import stop_processes
from ._stats import meets, ratio, summarize

NAME_P50, NAME_P99 = "first_x509_svid_p50_ms", "first_x509_svid_p99_ms"
METHOD = "/SpiffeWorkloadAPI/FetchX509SVID"
METADATA = (("workload.spiffe.io", "true"),)
TARGET = "<= 2.0"
CLIENTS = 2  # one per core: latency, not a saturation test
CALL_TIMEOUT = 10.0
READY_TIMEOUT = 120.0
# A channel of its own per connection: grpcio otherwise shares subchannels (connections)
# between channels to the same target in a process.
CHANNEL_OPTIONS = (("grpc.use_local_subchannel_pool", 1),)


@dataclass(frozen=True, slots=True)
class Plan:
    reps: int  # rounds per server
    warmup: float  # seconds per round before counting
    duration: float  # seconds counted per round


FULL = Plan(reps=5, warmup=1.0, duration=4.0)
QUICK = Plan(reps=2, warmup=0.3, duration=1.5)


@dataclass(frozen=True, slots=True)
class Task:
    socket: str
    warmup: float
    duration: float


@dataclass(slots=True)
class Latencies:
    ms: list[float] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)


def _once(grpc: Any, sock: str) -> float:
    """One fresh connection -> first message; returns seconds. Raises on failure."""
    start = time.perf_counter()
    channel = grpc.insecure_channel("unix:" + sock, options=CHANNEL_OPTIONS)
    try:
        call = channel.unary_stream(METHOD)(b"", metadata=METADATA, timeout=CALL_TIMEOUT)
        first = next(call)
        elapsed = time.perf_counter() - start
        call.cancel()
    finally:
        channel.close()
    if not first:
        raise ValueError("empty first message")
    return elapsed


def _measure(task: Task) -> Latencies:
    import grpc  # type: ignore[import-untyped,unused-ignore]

    out = Latencies()
    warm_end = time.perf_counter() + task.warmup
    end = warm_end + task.duration
    while (now := time.perf_counter()) < end:
        try:
            elapsed = _once(grpc, task.socket)
        except (grpc.RpcError, StopIteration, ValueError) as e:
            out.errors += 1
            if len(out.error_samples) < 3:
                out.error_samples.append(repr(e)[:200])
            continue
        if now >= warm_end:
            out.ms.append(elapsed * 1e3)
    return out


def _client(tasks: Queue[Task | None], results: Queue[Latencies], barrier: Barrier) -> None:
    while (task := tasks.get()) is not None:
        barrier.wait(READY_TIMEOUT)
        results.put(_measure(task))


def _percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def run(quick: bool) -> dict[str, dict[str, Any]]:
    plan = QUICK if quick else FULL
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(CLIENTS)
    results: Queue[Latencies] = ctx.Queue()
    tasks: list[Queue[Task | None]] = [ctx.Queue() for _ in range(CLIENTS)]
    procs = [ctx.Process(target=_client, args=(q, results, barrier), daemon=True)
             for q in tasks]
    p50: dict[str, list[float]] = {"baseline": [], "ensign": []}
    p99: dict[str, list[float]] = {"baseline": [], "ensign": []}
    pooled: dict[str, list[float]] = {"baseline": [], "ensign": []}
    errors = {"baseline": 0, "ensign": 0}
    samples: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="ensign-bench-first-", dir="/tmp"))
    try:
        for p in procs:
            p.start()
        with _servers.daemon(tmp) as daemon, _servers.echo(tmp) as echo:
            servers = {"baseline": echo, "ensign": daemon}
            for rep in range(plan.reps):
                for side, server in servers.items():
                    for q in tasks:
                        q.put(Task(str(server.socket), plan.warmup, plan.duration))
                    got: list[Latencies] = []
                    deadline = time.monotonic() + READY_TIMEOUT + plan.warmup + plan.duration
                    while len(got) < CLIENTS:
                        try:
                            got.append(results.get(timeout=1.0))
                        except queue.Empty:
                            if any(not p.is_alive() for p in procs) or \
                                    time.monotonic() > deadline:
                                raise RuntimeError("first_svid clients did not report") from None
                    ms = [v for r in got for v in r.ms]
                    if len(ms) < 2:
                        raise RuntimeError(f"{side}: no successful first SVID "
                                           f"({[s for r in got for s in r.error_samples]})")
                    p50[side].append(_percentile(ms, 50))
                    p99[side].append(_percentile(ms, 99))
                    pooled[side].extend(ms)
                    errors[side] += sum(r.errors for r in got)
                    samples.extend(f"{side}: {s}" for r in got for s in r.error_samples)
                    print(f"  first_x509_svid round {rep + 1}/{plan.reps} {side:8}: "
                          f"p50 {p50[side][-1]:6.2f} ms, p99 {p99[side][-1]:6.2f} ms, "
                          f"{len(ms)} connections"
                          f"{f', {errors[side]} errors' if errors[side] else ''}",
                          file=sys.stderr)
    finally:
        for q in tasks:
            q.put(None)
        stop_processes(procs)
        shutil.rmtree(tmp, ignore_errors=True)
    out: dict[str, dict[str, Any]] = {}
    for name, runs, pct in ((NAME_P50, p50, 50), (NAME_P99, p99, 99)):
        e, b = summarize(runs["ensign"]), summarize(runs["baseline"])
        value = ratio(e["median"], b["median"])
        figure: dict[str, Any] = {
            "unit": "ms", "ensign": e, "baseline": b, "ratio": value, "target": TARGET,
            "met": meets(value, TARGET) and not sum(errors.values()),
            "errors": sum(errors.values()),
            "note": f"{CLIENTS} grpcio processes, fresh connection each; pooled p{pct}: ensign "
                    f"{_percentile(pooled['ensign'], pct):.2f} ms over "
                    f"{len(pooled['ensign'])}, baseline {_percentile(pooled['baseline'], pct):.2f}"
                    f" ms over {len(pooled['baseline'])}",
            "setup": {"clients": CLIENTS, "reps": plan.reps, "warmup_s": plan.warmup,
                      "duration_s": plan.duration, "cpus": os.cpu_count()},
        }
        if samples:
            figure["error_samples"] = samples[:10]
        out[name] = figure
    return out
