"""Anomaly detection against a real daemon: surges, binary drift, denial bursts, and quiet
normal traffic."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc

from ensign.proto import workload_pb2 as pb
from tests.support.clients import HEADER, channel, fetch_jwt, stream
from tests.support.daemon import Daemon, make_daemon
from tests.support.exe import copy_exe, run_exe, tampered
from tests.support.scripts import FETCH_JWT

FAST = ('[anomaly]\nlearning_period = "3s"\ncooldown = "1s"\n'
        'burst_threshold = 20\nburst_window = "10s"\n')


def _findings(d: Daemon, agent: str = "") -> list[dict[str, Any]]:
    args = ["anomaly", "list", "-o", "json"] + (["--agent", agent] if agent else [])
    return list(json.loads(d.cli(*args).stdout))


def test_surge_after_steady_learning_is_flagged_and_suspends(short_tmp: Path) -> None:
    d = make_daemon(short_tmp, FAST.replace("[anomaly]\n", '[anomaly]\naction = "suspend"\n'))
    try:
        rec = d.register("steady", "unix:uid:0")
        sock = str(d.socket)
        for _ in range(6):  # learning: about 1 request a second
            fetch_jwt(sock, "api")
            time.sleep(1.0)
        assert _findings(d) == []
        ended: list[tuple[float, Any]] = []

        def watch() -> None:
            with channel(sock) as ch:
                it = stream(ch, "FetchX509SVID", timeout=30)
                next(it)
                try:
                    for _ in it:
                        pass
                except grpc.RpcError as e:
                    ended.append((time.monotonic(), e.code()))

        t = threading.Thread(target=watch)
        t.start()
        time.sleep(0.5)
        with channel(sock) as ch:  # then a surge: 50 a second
            call = ch.unary_unary("/SpiffeWorkloadAPI/FetchJWTSVID")
            req = pb.JWTSVIDRequest(audience=["api"]).SerializeToString()
            start = time.monotonic()
            for _ in range(50):
                try:
                    call(req, metadata=HEADER, timeout=5)
                except grpc.RpcError:
                    break
                time.sleep(0.02)
        t.join(timeout=10)
        assert ended and ended[0][1] == grpc.StatusCode.PERMISSION_DENIED
        found = _findings(d, str(rec["id"]))
        assert found and found[0]["details"]["signal"] == "rate"
        assert "expected" in found[0]["reason"] and found[0]["details"]["action"] == "suspend"
        shown = json.loads(d.cli("agent", "show", str(rec["id"]), "-o", "json").stdout)
        assert shown["state"] == "suspended" and "anomaly rate" in shown["history"][-1]["reason"]
        assert ended[0][0] - start < 5
        d.cli("agent", "resume", str(rec["id"]))  # resume clears the suspension
        assert len(fetch_jwt(sock, "api").svids) == 1
    finally:
        d.stop()


def test_binary_drift(short_tmp: Path) -> None:
    d = make_daemon(short_tmp, FAST)
    try:
        bins = short_tmp / "bin"
        bins.mkdir(mode=0o755)
        exe = copy_exe(bins / "agent")
        rec = d.register("drifter", "unix:uid:0", f"unix:path:{exe}")

        def run() -> None:
            assert run_exe(exe, d) == "ISSUED"

        run()
        time.sleep(3.5)  # past the learning period
        run()
        assert not [f for f in _findings(d) if f["details"]["signal"] == "binary-drift"]
        data = exe.read_bytes()  # another build at the same path (no sha256 selector)
        exe.unlink()
        exe.write_bytes(tampered(data))
        exe.chmod(0o755)
        run()
        drift = [f for f in _findings(d, str(rec["id"]))
                 if f["details"]["signal"] == "binary-drift"]
        assert drift and "never ran before" in drift[0]["reason"]
    finally:
        d.stop()


def test_denial_burst_and_quiet_normal_traffic(short_tmp: Path) -> None:
    d = make_daemon(short_tmp, FAST)
    try:
        for i in range(8):  # 8 agents with normal, steady traffic
            d.register(f"normal-{i}", "unix:uid:0", f"unix:supplementary_gid:{6000 + i}")
        script = """
import sys, time, grpc
ch = grpc.insecure_channel("unix:" + sys.argv[1])
call = ch.unary_unary("/SpiffeWorkloadAPI/FetchJWTSVID")
n = int(sys.argv[2])
for _ in range(n):
    call(b"\\n\\x03api", metadata=[("workload.spiffe.io", "true")], timeout=20)
print(n)
"""
        procs = [subprocess.Popen([sys.executable, "-c", script, str(d.socket), "1300"],
                                  stdout=subprocess.PIPE, text=True, extra_groups=[6000 + i])
                 for i in range(8)]
        total = sum(int(p.communicate(timeout=120)[0]) for p in procs)
        assert total >= 10_000, f"only {total} requests in the normal run"
        assert _findings(d) == [], _findings(d)
        # Then 20 refusals in 10 s from one uid (nobody has an entry for gid 6999).
        for _ in range(20):
            out = subprocess.run([sys.executable, "-c", FETCH_JWT, str(d.socket)],
                                 capture_output=True, text=True, extra_groups=[6999])
            assert out.stdout.strip() == "REFUSED PERMISSION_DENIED", out.stdout + out.stderr
        bursts = [f for f in _findings(d) if f["details"]["signal"] == "denial-burst"]
        assert bursts and "20 refusals" in bursts[0]["reason"]
    finally:
        d.stop()


def test_jti_replay_at_validation(short_tmp: Path) -> None:
    d = make_daemon(short_tmp, FAST)
    try:
        rec = d.register("validator", "unix:uid:0")
        token = fetch_jwt(str(d.socket), "svc").svids[0].svid
        d.cli("validate", "jwt", "--audience", "svc", "--token", token)
        assert not _findings(d)
        d.cli("validate", "jwt", "--audience", "svc", "--token", token)
        time.sleep(0.2)
        replay = [f for f in _findings(d) if f["details"]["signal"] == "jti-replay"]
        assert replay and replay[0]["agent_id"] == rec["id"]
    finally:
        d.stop()
