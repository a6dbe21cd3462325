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
from tests.support.clients import HEADER, channel, fetch_jwt, status_of, stream, unary
from tests.support.daemon import Daemon, make_daemon
from tests.support.exe import copy_exe, run_exe, tampered

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


_REFUSED = """
import sys, grpc
ch = grpc.insecure_channel("unix:" + sys.argv[1])
call = ch.unary_unary("/SpiffeWorkloadAPI/FetchJWTSVID")
for _ in range(20):
    try:
        call(b"\\n\\x01a", metadata=[("workload.spiffe.io", "true")], timeout=20)
    except grpc.RpcError as e:
        print(e.code().name)
"""


def test_binary_drift_is_flagged_even_while_learning(short_tmp: Path) -> None:
    # A changed executable is a fact, not a statistic: flagged inside the learning period.
    d = make_daemon(short_tmp, FAST.replace('learning_period = "3s"', 'learning_period = "1h"'))
    try:
        bins = short_tmp / "bin"
        bins.mkdir(mode=0o755)
        exe = copy_exe(bins / "agent")
        rec = d.register("drifter", "unix:uid:0", f"unix:path:{exe}")

        def run() -> None:
            assert run_exe(exe, d) == "ISSUED"

        run()
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
        # Then 20 refusals in 10 s from one uid (nobody has an entry for gid 6999), from one
        # process: 20 process start-ups may take longer than the window on a busy machine.
        out = subprocess.run([sys.executable, "-c", _REFUSED, str(d.socket)],
                             capture_output=True, text=True, extra_groups=[6999])
        assert out.stdout.split() == ["PERMISSION_DENIED"] * 20, out.stderr
        bursts = [f for f in _findings(d) if f["details"]["signal"] == "denial-burst"]
        assert bursts and "20 refusals" in bursts[0]["reason"]
    finally:
        d.stop()


_HOLDER = """
import sys, time, grpc
from ensign.proto import workload_pb2 as pb
ch = grpc.insecure_channel("unix:" + sys.argv[1])
fetch = ch.unary_unary("/SpiffeWorkloadAPI/FetchJWTSVID")
req = pb.JWTSVIDRequest(audience=[sys.argv[2]]).SerializeToString()
for _ in range(int(sys.argv[3])):  # the daemon hands out its cached token until half life
    raw = fetch(req, metadata=[("workload.spiffe.io", "true")], timeout=20)
    print(pb.JWTSVIDResponse.FromString(raw).svids[0].svid, flush=True)
    time.sleep(0.1)
"""

_VALIDATOR = """
import sys, grpc
from ensign.proto import workload_pb2 as pb
ch = grpc.insecure_channel("unix:" + sys.argv[1])
validate = ch.unary_unary("/SpiffeWorkloadAPI/ValidateJWTSVID")
n = 0
for line in sys.stdin:  # every token a holder presents, checked for this service's audience
    req = pb.ValidateJWTSVIDRequest(audience=sys.argv[2], svid=line.strip())
    validate(req.SerializeToString(), metadata=[("workload.spiffe.io", "true")], timeout=20)
    n += 1
print(n)
"""


def test_holders_reusing_their_tokens_raise_nothing_and_keep_their_identity(
        short_tmp: Path) -> None:
    # 8 agents present their (cached, reused) JWT-SVIDs to their services 50 times each; the
    # services' validators check every presentation. With action = "suspend", nobody may be
    # suspended for that: bearer tokens are reused until half life by design.
    d = make_daemon(short_tmp, FAST.replace("[anomaly]\n", '[anomaly]\naction = "suspend"\n'))
    try:
        agents = short_tmp / "agents.toml"  # two services and eight holders, in one apply
        agents.write_text("".join(
            f'[[agent]]\nname = "svc-{k}"\nkind = "service"\n'
            f'selectors = ["unix:uid:0", "unix:supplementary_gid:{7000 + k}"]\n'
            for k in range(2)) + "".join(
            f'[[agent]]\nname = "holder-{i}"\nowner = "tests@example.org"\n'
            f'selectors = ["unix:uid:0", "unix:supplementary_gid:{6000 + i}"]\n'
            for i in range(8)))
        d.cli("agent", "apply", "-f", str(agents))
        pipes = []
        for i in range(8):
            holder = subprocess.Popen(
                [sys.executable, "-c", _HOLDER, str(d.socket), f"svc-{i % 2}", "50"],
                stdout=subprocess.PIPE, text=True, extra_groups=[6000 + i])
            validator = subprocess.Popen(
                [sys.executable, "-c", _VALIDATOR, str(d.socket), f"svc-{i % 2}"],
                stdin=holder.stdout, stdout=subprocess.PIPE, text=True,
                extra_groups=[7000 + i % 2])
            assert holder.stdout is not None
            holder.stdout.close()  # the validator owns the read end
            pipes.append((holder, validator))
        validated = [int(v.communicate(timeout=120)[0] or 0) for _, v in pipes]
        assert [h.wait(timeout=30) for h, _ in pipes] == [0] * 8
        assert validated == [50] * 8
        records = json.loads(d.cli("audit", "list", "--type", "svid.validated", "-o",
                                   "json").stdout)
        assert len(records) == 400
        assert len({r["details"]["jti"] for r in records}) <= 16  # each token reused many times
        assert _findings(d) == []
        listed = json.loads(d.cli("agent", "list", "-o", "json").stdout)
        assert sorted((a["name"], a["state"]) for a in listed) == sorted(
            [(f"holder-{i}", "active") for i in range(8)]
            + [(f"svc-{k}", "active") for k in range(2)])
    finally:
        d.stop()


def test_token_misuse_is_named_and_only_alerts(short_tmp: Path) -> None:
    d = make_daemon(short_tmp, FAST.replace("[anomaly]\n", '[anomaly]\naction = "suspend"\n'))
    try:
        rec = d.register("holder", "unix:uid:0")
        sock = str(d.socket)
        token = fetch_jwt(sock, "svc").svids[0].svid

        def validate(audience: str) -> bytes:
            req = pb.ValidateJWTSVIDRequest(audience=audience, svid=token).SerializeToString()
            return unary(sock, "ValidateJWTSVID", req)

        validate("svc")
        validate("svc")  # reuse by its holder: normal
        assert _findings(d) == []
        # presented to a service it was not minted for: forwarded or stolen
        code, details = status_of(validate, "payments")
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "'payments'" in details
        # still used after its agent was suspended
        d.cli("agent", "suspend", str(rec["id"]), "--reason", "test")
        code, details = status_of(validate, "svc")  # and refused: the agent is suspended
        assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT,
                                   "the token's agent is suspended")
        found = _findings(d, str(rec["id"]))
        assert [(f["details"]["signal"], f["details"]["action"]) for f in found] == [
            ("token-misdirected", "alert"), ("token-inactive-agent", "alert")]
        assert "'payments'" in found[0]["reason"] and "['svc']" in found[0]["reason"]
        shown = json.loads(d.cli("agent", "show", str(rec["id"]), "-o", "json").stdout)
        assert [h["reason"] for h in shown["history"]][-1] == "test"  # suspended by us only
        d.cli("agent", "resume", str(rec["id"]))  # the token signals never suspended it
        assert fetch_jwt(str(d.socket), "svc").svids
    finally:
        d.stop()
