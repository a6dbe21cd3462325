"""Daemon RSS with 10,000 agents and 1,000 open X.509-SVID streams, then a rotation storm.

One daemon, started with a short `[svid] x509_ttl`, gets 10,000 agents in one `ensign agent
apply` (other uids: they do not match the clients) besides the `bench` agent that matches this
uid. Client processes (grpcio aio, one channel each, 100 streams per channel) open
FetchX509SVID streams; once every stream holds its first SVID the daemon's VmRSS is read
(target <= 300 MB). Then the streams wait for the next rotation: the daemon re-mints at half
life +-10% of the TTL, so every stream must get the new SVID inside that 20%-of-TTL window.
The storm figure is the spread between the first and the last stream's update (target: within
the window, every update inside [mint + 40% TTL, mint + 60% TTL], 0 errors).

Quick runs open 200 streams (2 processes x 100) with a 10 s TTL instead of 1,000 (10 x 100)
with a 30 s TTL; the note says which.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

from . import _servers
from ._clients import stop_processes
from ._stats import ratio, summarize

RSS_NAME, STORM_NAME = "rss_10k_agents_streams_mb", "rotation_storm_spread_ms"
METHOD = "/SpiffeWorkloadAPI/FetchX509SVID"
METADATA = (("workload.spiffe.io", "true"),)
AGENTS = 10_000
STREAMS_PER_CLIENT = 100
RSS_LIMIT_MB = 300.0
OPEN_TIMEOUT = 120.0
# Client-side slack around the window: the daemon's tick wakes at the refresh time, then the
# broadcast fans out; the mint time is taken as the first receipt of the SVID.
SLACK_EARLY, SLACK_LATE = 0.05, 0.5


@dataclass(frozen=True, slots=True)
class Plan:
    clients: int
    ttl: int  # seconds


FULL = Plan(clients=10, ttl=30)
QUICK = Plan(clients=2, ttl=10)


def _streamer(client: int, sock: str, n: int, go: Event, stop: Event,
              events: Queue[tuple[Any, ...]]) -> None:
    """One client process: `n` FetchX509SVID streams on one grpcio channel.

    Puts ("msg", client, stream, wall time, serial) per message, ("err", client, stream, text)
    per failed or ended stream.
    """
    import asyncio

    import grpc  # type: ignore[import-untyped,unused-ignore]
    from cryptography import x509

    from ensign.daemon.issuing import split_der
    from ensign.proto import workload_pb2 as pb

    async def main() -> None:
        stopping = False
        async with grpc.aio.insecure_channel("unix:" + sock) as channel:
            method = channel.unary_stream(METHOD)

            async def one(i: int) -> None:
                try:
                    async for raw in method(b"", metadata=METADATA):
                        t = time.time()
                        resp = pb.X509SVIDResponse.FromString(raw)
                        leaf = split_der(resp.svids[0].x509_svid)[0]
                        serial = x509.load_der_x509_certificate(leaf).serial_number
                        events.put(("msg", client, i, t, serial))
                    events.put(("err", client, i, "stream ended"))
                except grpc.aio.AioRpcError as e:
                    if not stopping:
                        events.put(("err", client, i, f"{e.code()}: {e.details()}"))
                except Exception as e:
                    events.put(("err", client, i, repr(e)[:200]))

            while not go.is_set():
                await asyncio.sleep(0.05)
            tasks = [asyncio.create_task(one(i)) for i in range(n)]
            while not stop.is_set():
                await asyncio.sleep(0.1)
            stopping = True
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _apply_agents(tmp: Path, n: int) -> float:
    doc = "".join(f'[[agent]]\nname = "a{i}"\nowner = "b"\nselectors = ["unix:uid:{20000 + i}"]\n'
                  for i in range(n))
    f = tmp / "agents.toml"
    f.write_text(doc)
    env = {**os.environ, "ENSIGN_ADMIN_SOCKET": f"unix://{tmp / 'admin.sock'}"}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ensign.daemon", "agent", "apply", "-f", str(f)],
                   cwd=_servers.ROOT, env=env, check=True, capture_output=True, timeout=300)
    return time.perf_counter() - start


class _Collector:
    """Every message each stream received, in order, and every error."""

    def __init__(self, events: Queue[tuple[Any, ...]]) -> None:
        self._events = events
        self.received: dict[tuple[int, int], list[tuple[float, int]]] = {}
        self.errors: list[str] = []

    def drain(self, until: float, done: Any) -> bool:
        """Take events until `done()` or the monotonic deadline; True if done."""
        while not done():
            left = until - time.monotonic()
            if left <= 0:
                return False
            try:
                ev = self._events.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if ev[0] == "msg":
                self.received.setdefault((ev[1], ev[2]), []).append((ev[3], ev[4]))
            else:
                self.errors.append(f"client {ev[1]} stream {ev[2]}: {ev[3]}")
        return True


def run(quick: bool) -> dict[str, dict[str, Any]]:
    plan = QUICK if quick else FULL
    streams = plan.clients * STREAMS_PER_CLIENT
    ctx = mp.get_context("spawn")
    go, stop = ctx.Event(), ctx.Event()
    events: Queue[tuple[Any, ...]] = ctx.Queue()
    tmp = Path(tempfile.mkdtemp(prefix="ensign-bench-streams-", dir="/tmp"))
    sock = str(tmp / "agent.sock")
    procs = [ctx.Process(target=_streamer, args=(c, sock, STREAMS_PER_CLIENT, go, stop, events),
                         daemon=True) for c in range(plan.clients)]
    got = _Collector(events)
    try:
        for p in procs:  # importing grpcio in each overlaps the daemon's start
            p.start()
        extra = f'[svid]\nx509_ttl = "{plan.ttl}s"\n'
        with _servers.daemon(tmp, extra_config=extra) as daemon:
            rss_start = _rss_mb(daemon.pid)
            apply_s = _apply_agents(tmp, AGENTS)
            rss_agents = _rss_mb(daemon.pid)
            go.set()
            opened_at = time.monotonic()
            if not got.drain(opened_at + OPEN_TIMEOUT,
                             lambda: len(got.received) + len(got.errors) >= streams):
                raise RuntimeError(f"only {len(got.received)}/{streams} streams got an SVID "
                                   f"in {OPEN_TIMEOUT:g}s; errors: {got.errors[:3]}")
            open_s = time.monotonic() - opened_at
            time.sleep(0.2)  # let the last responses' buffers go
            rss_streams = _rss_mb(daemon.pid)
            print(f"  streams: {len(got.received)} open in {open_s:.1f}s, daemon RSS "
                  f"{rss_start:.0f} MB at start, {rss_agents:.0f} MB with {AGENTS} agents "
                  f"(apply {apply_s:.1f}s), {rss_streams:.0f} MB with the streams",
                  file=sys.stderr)
            # The storm: each stream's next message once all are open, which must carry an SVID
            # none of them held. The mint time of the SVID they held is its first receipt.
            held = {m[-1][1] for m in got.received.values()}
            minted = max(min(t for m in got.received.values() for t, s in m if s == serial)
                         for serial in held)

            base = {k: len(m) for k, m in got.received.items()}

            def rotated() -> bool:
                return all(len(m) > base[k] for k, m in got.received.items())

            got.drain(time.monotonic() + plan.ttl + 10, rotated)
            rss_after = _rss_mb(daemon.pid)
    finally:
        stop.set()
        stop_processes(procs)
        shutil.rmtree(tmp, ignore_errors=True)
    updates = [m[base[k]][0] for k, m in got.received.items()
               if len(m) > base[k] and m[base[k]][1] not in held]
    missing = len(got.received) - len(updates)
    window = 0.2 * plan.ttl
    lo, hi = minted + 0.4 * plan.ttl - SLACK_EARLY, minted + 0.6 * plan.ttl + SLACK_LATE
    outside = sum(1 for t in updates if not lo <= t <= hi)
    spread = max(updates) - min(updates) if updates else float("inf")
    errors = len(got.errors) + missing
    print(f"  rotation storm: {len(updates)}/{len(got.received)} streams rotated, spread "
          f"{spread:.3f}s, {(min(updates, default=minted) - minted):.2f}s after the mint "
          f"(window {0.4 * plan.ttl:.1f}-{0.6 * plan.ttl:.1f}s), {outside} outside, "
          f"{errors} errors", file=sys.stderr)
    scale = "" if streams == 1000 else f" (quick: {streams} streams, not 1,000)"
    storm: dict[str, Any] = {
        "unit": "ms", "ensign": summarize([spread * 1e3]), "baseline": summarize([window * 1e3]),
        "ratio": ratio(spread, window), "target": "<= 20% TTL, 0 errors",
        "met": spread <= window and outside == 0 and errors == 0,
        "errors": errors,
        "note": f"{len(updates)}/{streams} streams{scale} got the rotated SVID, first "
                f"{min(updates, default=minted) - minted:.2f}s after the mint, TTL "
                f"{plan.ttl}s (window {window:.0f}s, baseline column); {outside} outside "
                f"[40%, 60%] of the TTL, {missing} never rotated",
        "setup": {"clients": plan.clients, "streams": streams, "ttl_s": plan.ttl},
    }
    if got.errors:
        storm["error_samples"] = got.errors[:10]
    return {
        RSS_NAME: {
            "unit": "MB", "ensign": summarize([rss_streams]),
            "baseline": summarize([RSS_LIMIT_MB]), "ratio": ratio(rss_streams, RSS_LIMIT_MB),
            "target": f"<= {RSS_LIMIT_MB:.0f} MB", "met": rss_streams <= RSS_LIMIT_MB,
            "note": f"VmRSS with {AGENTS:,} agents and {streams} open streams{scale} "
                    f"(baseline column: the limit); {rss_start:.0f} MB at start, "
                    f"{rss_agents:.0f} MB with the agents, {rss_streams - rss_agents:+.0f} MB "
                    f"for the streams, {rss_after:.0f} MB after the rotation",
            "setup": {"agents": AGENTS, "clients": plan.clients, "streams": streams,
                      "apply_s": round(apply_s, 2), "open_s": round(open_s, 2)},
        },
        STORM_NAME: storm,
    }
