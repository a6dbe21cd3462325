"""A FastAPI handler's request time with ensign.sdk's middleware (token verified, principal set,
the request reported to the daemon as an action) beside the same app without it, in the same run,
at a steady 500 requests/s (open loop: requests leave on schedule, whatever the answers do).

Both apps run under uvicorn in their own process, against one daemon; rounds alternate between
them. The figure is the median request time (send to last byte) per round; its ratio is
median(with) / median(without). Target: the middleware adds at most 10% (ratio <= 1.1).
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
TARGET = "<= 1.1"
RATE = 500.0  # requests per second


@dataclass(frozen=True)
class Plan:
    reps: int
    warmup: float
    duration: float


QUICK = Plan(reps=3, warmup=1.0, duration=2.0)
FULL = Plan(reps=5, warmup=2.0, duration=6.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _uvicorn(app: str, sock: Path, log: Path) -> Iterator[str]:
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
        yield f"http://127.0.0.1:{port}"
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
    errors = 0
    tmp = Path(tempfile.mkdtemp(prefix="ensign-bench-actions-", dir="/tmp"))
    try:
        with _servers.daemon(tmp) as d:
            token = _token(d.socket)
            with (_uvicorn("guarded", d.socket, tmp / "guarded.log") as guarded,
                  _uvicorn("plain", d.socket, tmp / "plain.log") as plain):
                sides = {"baseline": plain, "ensign": guarded}
                for url in sides.values():  # warm: imports, keys, the report stream
                    asyncio.run(_load(url, token, plan.warmup))
                for rep in range(plan.reps):
                    for side, url in sides.items():
                        times, failed = asyncio.run(_load(url, token, plan.duration))
                        errors += failed
                        runs[side].append(_median(times) * 1000)  # µs, for one decimal
                        print(f"  {NAME} round {rep + 1}/{plan.reps} {side:8}: median "
                              f"{_median(times):.3f} ms over {len(times)} requests",
                              file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    with_s, without_s = summarize(runs["ensign"]), summarize(runs["baseline"])
    value = ratio(with_s["median"], without_s["median"])
    return {NAME: {"unit": "µs/request", "ensign": with_s, "baseline": without_s,
                   "ratio": value, "target": TARGET,
                   "met": meets(value, TARGET) and errors == 0, "errors": errors,
                   "note": f"median request time at {RATE:g} requests/s; ensign = with the "
                           "middleware (verify, principal, report), baseline = the same "
                           "FastAPI app without it, both under uvicorn"}}
