"""New connection -> first SDS secret (Envoy's StreamSecrets), against new connection -> first
X.509-SVID (FetchX509SVID), both on the same daemon in the same run.

Real grpcio client processes each loop: open a fresh channel (a new Unix-socket connection),
open the stream, send the request (for SDS a DiscoveryRequest naming `default`, as Envoy sends
it, no security header), read the first message, cancel, close. Latency is from channel
creation to the first message. Rounds alternate between the two calls; the ratio is the median
over rounds of each round's percentile, SDS / FetchX509SVID. Both carry the same cached SVID and
an audit record; SDS adds the PEM encoding and the Any-wrapped Secret. Target: <= 1.5.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2

from . import _servers
from ._clients import stop_processes
from ._stats import meets, ratio, summarize
from .first_svid import (
    CALL_TIMEOUT,
    CHANNEL_OPTIONS,
    CLIENTS,
    FULL,
    METADATA,
    QUICK,
    READY_TIMEOUT,
    Latencies,
    _percentile,
)

NAME_P50, NAME_P99 = "first_sds_secret_p50_ms", "first_sds_secret_p99_ms"
SDS = "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets"
X509 = "/SpiffeWorkloadAPI/FetchX509SVID"
TARGET = "<= 1.5"


@dataclass(frozen=True, slots=True)
class Task:
    socket: str
    sds: bool
    request: bytes
    warmup: float
    duration: float


def _once(grpc: Any, task: Task) -> float:
    start = time.perf_counter()
    channel = grpc.insecure_channel("unix:" + task.socket, options=CHANNEL_OPTIONS)
    try:
        if task.sds:
            call = channel.stream_stream(SDS)(iter([task.request]), timeout=CALL_TIMEOUT)
        else:
            call = channel.unary_stream(X509)(b"", metadata=METADATA, timeout=CALL_TIMEOUT)
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
            elapsed = _once(grpc, task)
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


def run(quick: bool) -> dict[str, dict[str, Any]]:
    plan = QUICK if quick else FULL
    request = discovery_pb2.DiscoveryRequest(
        resource_names=["default"],
        type_url="type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret")
    request.node.id, request.node.cluster = "bench", "bench"
    raw = request.SerializeToString()
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(CLIENTS)
    results: Queue[Latencies] = ctx.Queue()
    tasks: list[Queue[Task | None]] = [ctx.Queue() for _ in range(CLIENTS)]
    procs = [ctx.Process(target=_client, args=(q, results, barrier), daemon=True)
             for q in tasks]
    p50: dict[str, list[float]] = {"baseline": [], "ensign": []}
    p99: dict[str, list[float]] = {"baseline": [], "ensign": []}
    errors = {"baseline": 0, "ensign": 0}
    samples: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="ensign-bench-sds-", dir="/tmp"))
    try:
        for p in procs:
            p.start()
        with _servers.daemon(tmp) as daemon:
            for rep in range(plan.reps):
                for side in ("baseline", "ensign"):
                    for q in tasks:
                        q.put(Task(str(daemon.socket), side == "ensign", raw, plan.warmup,
                                   plan.duration))
                    got: list[Latencies] = []
                    deadline = time.monotonic() + READY_TIMEOUT + plan.warmup + plan.duration
                    while len(got) < CLIENTS:
                        try:
                            got.append(results.get(timeout=1.0))
                        except queue.Empty:
                            if any(not p.is_alive() for p in procs) or \
                                    time.monotonic() > deadline:
                                raise RuntimeError("first_secret clients did not report") from None
                    ms = [v for r in got for v in r.ms]
                    if len(ms) < 2:
                        raise RuntimeError(f"{side}: no successful first message "
                                           f"({[s for r in got for s in r.error_samples]})")
                    p50[side].append(_percentile(ms, 50))
                    p99[side].append(_percentile(ms, 99))
                    errors[side] += sum(r.errors for r in got)
                    samples.extend(f"{side}: {s}" for r in got for s in r.error_samples)
                    label = "StreamSecrets" if side == "ensign" else "FetchX509SVID"
                    print(f"  first_sds_secret round {rep + 1}/{plan.reps} {label:14}: "
                          f"p50 {p50[side][-1]:6.2f} ms, p99 {p99[side][-1]:6.2f} ms, "
                          f"{len(ms)} connections", file=sys.stderr)
    finally:
        for q in tasks:
            q.put(None)
        stop_processes(procs)
        shutil.rmtree(tmp, ignore_errors=True)
    out: dict[str, dict[str, Any]] = {}
    for name, runs in ((NAME_P50, p50), (NAME_P99, p99)):
        e, b = summarize(runs["ensign"]), summarize(runs["baseline"])
        value = ratio(e["median"], b["median"])
        figure: dict[str, Any] = {
            "unit": "ms", "ensign": e, "baseline": b, "ratio": value, "target": TARGET,
            "met": meets(value, TARGET) and not sum(errors.values()),
            "errors": sum(errors.values()),
            "note": "ensign = SDS StreamSecrets first secret, baseline = FetchX509SVID first "
                    f"SVID, same daemon; {CLIENTS} grpcio processes, fresh connection each",
            "setup": {"clients": CLIENTS, "reps": plan.reps, "warmup_s": plan.warmup,
                      "duration_s": plan.duration, "cpus": os.cpu_count()},
        }
        if samples:
            figure["error_samples"] = samples[:10]
        out[name] = figure
    return out
