"""Load: many real client processes of mixed RPCs and streams against one daemon.

Short form (`make test`): 8 processes x 15 s. Long form (`make soak`): 32 x 60 s.
Users notice errors, a daemon whose memory keeps growing, and leaked file descriptors (every
connection holds a socket and a pidfd): each is asserted here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.support.daemon import make_daemon
from tests.support.hardening import fd_count, healthy, rss_kib, settle_fds, soak

PROCESSES = soak(8, 32)
SECONDS = soak(15, 60)
WARMUP = soak(4, 10)

_CLIENT = r"""
import json, random, sys, threading, time
import grpc
from ensign.proto import workload_pb2 as pb

sock, seconds, seed = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
H = [("workload.spiffe.io", "true")]
T = 60
ops = 0
errors = []
rotations = 0
stop = time.monotonic() + seconds

def err(what, e):
    errors.append(f"{what}: {e.code().name if hasattr(e, 'code') else ''} {e}"[:300])

def held_stream():
    # One long-lived X.509 stream per process: it must see rotations and never fail.
    global rotations
    ch = grpc.insecure_channel("unix:" + sock)
    it = ch.unary_stream("/SpiffeWorkloadAPI/FetchX509SVID")(b"", metadata=H)
    try:
        for raw in it:
            pb.X509SVIDResponse.FromString(raw)
            rotations += 1
            if time.monotonic() > stop:
                break
    except grpc.RpcError as e:
        err("held-stream", e)
    finally:
        it.cancel()
        ch.close()

t = threading.Thread(target=held_stream, daemon=True)
t.start()
shared = grpc.insecure_channel("unix:" + sock)
token = None
while time.monotonic() < stop:
    fresh = rng.random() < 0.3          # connection churn: a new channel for 30% of calls
    ch = grpc.insecure_channel("unix:" + sock) if fresh else shared
    op = rng.choice(["jwt", "jwt", "validate", "x509", "jwt-bundles", "x509-bundles", "health"])
    # JWT-SVIDs live 2 s and are reused until half life: validate only a token fetched just now,
    # or a slow client (the soak form runs 32 of them on 2 cores) would present an expired one.
    if op == "validate" and (token is None or time.monotonic() - token[2] > 0.5):
        op = "jwt"
    try:
        if op == "jwt":
            aud = rng.choice(["a", "b", "c", "d"])
            raw = ch.unary_unary("/SpiffeWorkloadAPI/FetchJWTSVID")(
                pb.JWTSVIDRequest(audience=[aud]).SerializeToString(), metadata=H, timeout=T)
            token = (aud, pb.JWTSVIDResponse.FromString(raw).svids[0].svid, time.monotonic())
        elif op == "validate" and token is not None:
            raw = ch.unary_unary("/SpiffeWorkloadAPI/ValidateJWTSVID")(
                pb.ValidateJWTSVIDRequest(audience=token[0], svid=token[1]).SerializeToString(),
                metadata=H, timeout=T)
            assert pb.ValidateJWTSVIDResponse.FromString(raw).spiffe_id
        elif op in ("x509", "jwt-bundles", "x509-bundles"):
            method = {"x509": "FetchX509SVID", "jwt-bundles": "FetchJWTBundles",
                      "x509-bundles": "FetchX509Bundles"}[op]
            it = ch.unary_stream("/SpiffeWorkloadAPI/" + method)(b"", metadata=H, timeout=T)
            assert next(it)
            it.cancel()
        elif op == "health":
            ch.unary_unary("/grpc.health.v1.Health/Check")(b"", timeout=T)
        ops += 1
    except grpc.RpcError as e:
        err(op, e)
    finally:
        if fresh:
            ch.close()
t.join(timeout=T)
shared.close()
print(json.dumps({"ops": ops, "errors": errors[:5], "error_count": len(errors),
                  "rotations": rotations}))
"""


def test_mixed_load_has_no_errors_no_memory_growth_no_fd_leak(short_tmp: Path) -> None:
    # Short X.509 lifetime: SVIDs rotate every ~2 s, so streams and issuance stay busy.
    d = make_daemon(short_tmp, '[svid]\nx509_ttl = "4s"\njwt_ttl = "2s"\n')
    try:
        d.register("loaded", f"unix:uid:{os.getuid()}")
        assert d.proc is not None
        pid = d.proc.pid
        assert healthy(d)
        baseline_fds = fd_count(pid)
        clients = [
            subprocess.Popen([sys.executable, "-c", _CLIENT, str(d.socket),
                              str(WARMUP + SECONDS), str(i)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(PROCESSES)
        ]
        samples: list[tuple[int, int]] = []  # (rss KiB, open fds) during the measured run
        stop = threading.Event()

        def sample() -> None:
            time.sleep(WARMUP)  # imports, first SVIDs, caches: not growth
            end = time.monotonic() + SECONDS
            while time.monotonic() < end and not stop.is_set():
                samples.append((rss_kib(pid), fd_count(pid)))
                time.sleep(0.25)

        sampler = threading.Thread(target=sample)
        sampler.start()
        outputs = [c.communicate(timeout=WARMUP + SECONDS + 120) for c in clients]
        stop.set()
        sampler.join()

        results = []
        for c, (out, err) in zip(clients, outputs, strict=True):
            assert c.returncode == 0, err
            results.append(json.loads(out))
        errors = [e for r in results for e in r["errors"]]
        assert sum(r["error_count"] for r in results) == 0, errors
        assert all(r["ops"] > 0 for r in results), results
        assert all(r["rotations"] >= 2 for r in results), "held streams saw no rotation"
        assert d.alive() and healthy(d)

        quarter = max(1, len(samples) // 4)
        assert len(samples) >= 8, samples
        first = sum(s[0] for s in samples[:quarter]) / quarter
        last = sum(s[0] for s in samples[-quarter:]) / quarter
        growth = (last - first) / first
        assert growth < 0.05, f"RSS grew {growth:.1%}: {first:.0f} -> {last:.0f} KiB"
        # Every client is gone: every socket and pidfd they cost must be closed again.
        after = settle_fds(pid, baseline_fds)
        assert after <= baseline_fds, f"fds: {baseline_fds} before, {after} after the load"
        first_fds = max(s[1] for s in samples[:quarter])
        last_fds = max(s[1] for s in samples[-quarter:])
        # Open fds track live connections (bounded by the clients), not the calls made so far.
        assert last_fds <= first_fds + 4 * PROCESSES, (first_fds, last_fds)
    finally:
        if d.alive():
            d.stop()
