"""A FastAPI handler's request time with ensign.sdk's middleware (token verified, principal set,
the request reported to the daemon as an action) beside the same app without it, in the same run,
at a steady 500 requests/s (open loop: requests leave on schedule, whatever the answers do).

Both apps run under uvicorn in their own process, against one daemon; rounds alternate between
them. The figure is the median request time (send to last byte) per round; its ratio is
median(with) / median(without). Target: the middleware adds at most 10% (ratio <= 1.1).
Alongside, reported: each service's CPU time per request, and the daemon's per action recorded
(request times on a shared 2-core machine move with everyone else's load; CPU time less so).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _servers
from ._stats import meets, ratio, summarize

NAME = "fastapi_request_time_actions_middleware"
CPU_NAME = "fastapi_cpu_per_request_actions_middleware"
TARGET = "<= 1.1"
RATE = 500.0  # requests per second


@dataclass(frozen=True)
class Plan:
    reps: int
    warmup: float
    duration: float


QUICK = Plan(reps=4, warmup=1.0, duration=2.0)
FULL = Plan(reps=9, warmup=2.0, duration=4.0)  # many short rounds: the machine is shared


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _uvicorn(app: str, sock: Path, log: Path) -> Iterator[tuple[str, int]]:
    port = _free_port()
    env = {**os.environ, "SPIFFE_ENDPOINT_SOCKET": f"unix://{sock}"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", f"bench.action_app:{app}", "--host", "127.0.0.1",
             "--port", str(port), "--no-access-log", "--log-level", "warning"],
            cwd=_servers.ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + _servers.START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"uvicorn {app} exited:\n{log.read_text()[-2000:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn {app} did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        _servers.stop(proc)


async def _load(url: str, token: str, seconds: float) -> tuple[list[float], int]:
    """Requests at RATE for `seconds`, each on schedule; their times (ms) and the failures."""
    import aiohttp

    times: list[float] = []
    errors = 0
    headers = {"Authorization": f"Bearer {token}"}
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(i: int) -> None:
            nonlocal errors
            started = time.perf_counter()
            try:
                async with http.get(f"{url}/docs/{i % 100}", headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
                        return
            except aiohttp.ClientError:
                errors += 1
                return
            times.append((time.perf_counter() - started) * 1000)

        loop = asyncio.get_running_loop()
        t0, tasks = loop.time(), []
        for i in range(int(seconds * RATE)):
            delay = t0 + i / RATE - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(i)))
        await asyncio.gather(*tasks)
    return times, errors


def _cpu(pid: int) -> float:
    return _servers.Running(Path(), pid).cpu_seconds()


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else 0.0


def _token(sock: Path) -> str:
    from ensign.proto import workload_pb2 as pb
    from ensign.proto.workload_grpc import SpiffeWorkloadAPIStub

    async def fetch() -> str:
        from grpclib.client import Channel

        ch = Channel(path=str(sock))
        try:
            resp = await SpiffeWorkloadAPIStub(ch).FetchJWTSVID(
                pb.JWTSVIDRequest(audience=["bench"]), metadata={"workload.spiffe.io": "true"})
            return str(resp.svids[0].svid)
        finally:
            ch.close()

    return asyncio.run(fetch())


def run(quick: bool) -> dict[str, dict[str, Any]]:
    plan = QUICK if quick else FULL
    runs: dict[str, list[float]] = {"ensign": [], "baseline": []}
    cpu: dict[str, list[float]] = {"ensign": [], "baseline": []}
    daemon_cpu: list[float] = []
    errors = 0
    tmp = Path(tempfile.mkdtemp(prefix="ensign-bench-actions-", dir="/tmp"))
    try:
        with _servers.daemon(tmp) as d:
            token = _token(d.socket)
            with (_uvicorn("guarded", d.socket, tmp / "guarded.log") as guarded,
                  _uvicorn("plain", d.socket, tmp / "plain.log") as plain):
                sides = {"baseline": plain, "ensign": guarded}
                for url, _ in sides.values():  # warm: imports, keys, the report stream
                    asyncio.run(_load(url, token, plan.warmup))
                for rep in range(plan.reps):
                    for side, (url, pid) in sides.items():
                        before, daemon_before = _cpu(pid), d.cpu_seconds()
                        times, failed = asyncio.run(_load(url, token, plan.duration))
                        used = _cpu(pid) - before
                        errors += failed
                        runs[side].append(_median(times) * 1000)  # µs, for one decimal
                        cpu[side].append(1e6 * used / max(len(times), 1))
                        if side == "ensign":
                            daemon_cpu.append(1e6 * (d.cpu_seconds() - daemon_before)
                                              / max(len(times), 1))
                        print(f"  {NAME} round {rep + 1}/{plan.reps} {side:8}: median "
                              f"{_median(times):.3f} ms over {len(times)} requests, "
                              f"{cpu[side][-1]:.0f} us CPU/request", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    with_s, without_s = summarize(runs["ensign"]), summarize(runs["baseline"])
    value = ratio(with_s["median"], without_s["median"])
    cpu_with, cpu_without = summarize(cpu["ensign"]), summarize(cpu["baseline"])
    daemon = summarize(daemon_cpu)
    cpu_figure = {"unit": "µs CPU/request", "ensign": cpu_with, "baseline": cpu_without,
                  "ratio": ratio(cpu_with["median"], cpu_without["median"]),
                  "target": "report", "met": True,
                  "note": f"the service's CPU per request (uvicorn + FastAPI), with and without "
                          f"the middleware; the daemon's per action recorded: "
                          f"{daemon['median']:.0f} us"}
    figure = {"unit": "µs/request", "ensign": with_s, "baseline": without_s, "ratio": value,
              "target": TARGET, "met": meets(value, TARGET) and errors == 0, "errors": errors,
              "note": f"median request time at {RATE:g} requests/s; ensign = with the "
                      "middleware (verify, principal, report), baseline = the same FastAPI app "
                      "without it, both under uvicorn"}
    return {NAME: figure, CPU_NAME: cpu_figure}
