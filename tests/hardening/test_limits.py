"""Adversarial: slowloris, many connections, request floods and oversized or half-sent
messages. Other callers must go on being served, and whatever the attacker held is released."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from ensign.proto import workload_pb2
from tests.support import h2raw
from tests.support.clients import HEADER, call
from tests.support.daemon import ENSIGN, NOBODY, Daemon, make_daemon, needs_root, run_as, spawn_as
from tests.support.hardening import fd_count, healthy, rss_kib, settle_fds
from tests.support.scripts import raw_as

VALIDATE = "/SpiffeWorkloadAPI/ValidateJWTSVID"
FETCH = "/SpiffeWorkloadAPI/FetchJWTSVID"


def _denials(d: Daemon) -> list[dict[str, Any]]:
    return d.audit("--type", "request.denied")


def test_slowloris_clients_do_not_starve_others(node: tuple[Daemon, dict[str, Any]]) -> None:
    d, _ = node
    assert d.proc is not None
    pid = d.proc.pid
    assert healthy(d)
    baseline = fd_count(pid)
    idle: list[socket.socket] = []
    channels: list[grpc.Channel] = []
    streams = []
    try:
        for _ in range(100):  # connect and say nothing
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(d.socket))
            idle.append(s)
        idle += [h2raw.half_request(d.socket) for _ in range(100)]
        idle += [h2raw.half_request(d.admin_socket) for _ in range(20)]
        for _ in range(30):  # streams held open and never read
            ch = grpc.insecure_channel(f"unix:{d.socket}")
            channels.append(ch)
            it = ch.unary_stream("/SpiffeWorkloadAPI/FetchX509SVID")(b"", metadata=HEADER)
            streams.append(it)
        # An honest client is still served, and so is the admin.
        code, details, _ = call(d.socket, FETCH,
                                workload_pb2.JWTSVIDRequest(audience=["a"]).SerializeToString(),
                                timeout=20)
        assert code == grpc.StatusCode.OK, details
        assert d.cli("agent", "list").returncode == 0
        assert healthy(d)
    finally:
        for it in streams:
            it.cancel()
        for ch in channels:
            ch.close()
        for s in idle:
            s.close()
    # When they give up, everything they held is released.
    assert settle_fds(pid, baseline) <= baseline
    assert healthy(d)


_HOLDER = """
import sys, time, grpc
sock, n = sys.argv[1], int(sys.argv[2])
chans, its = [], []
for i in range(n):
    ch = grpc.insecure_channel("unix:" + sock, options=[("grpc.use_local_subchannel_pool", 1)])
    it = ch.unary_stream("/SpiffeWorkloadAPI/FetchX509SVID")(
        b"", metadata=[("workload.spiffe.io", "true")], timeout=30)
    try:
        next(it)
        print("OK", flush=True)
    except grpc.RpcError as e:
        print("STATUS", e.code().name, e.details(), flush=True)
    chans.append(ch); its.append(it)
sys.stdin.read()
"""


@needs_root
def test_connection_cap_per_uid(short_tmp: Path) -> None:
    """`[limits] max_connections_per_uid = 4`: the 5th concurrent connection of one uid gets
    UNAVAILABLE naming the limit (audited); other uids are unaffected; closing frees a slot."""
    d = make_daemon(short_tmp, "[limits]\nmax_connections_per_uid = 4\n")
    try:
        d.register("nobody", f"unix:uid:{NOBODY}")
        d.register("root", "unix:uid:0")
        holder = spawn_as(NOBODY, _HOLDER, str(d.socket), "5")
        assert holder.stdout is not None
        lines = [holder.stdout.readline().strip() for _ in range(5)]
        assert lines[:4] == ["OK"] * 4, lines
        assert lines[4].startswith("STATUS UNAVAILABLE") and "too many connections" in lines[4], (
            lines)
        # Root is another uid: not counted against nobody's cap.
        code, _, _ = call(d.socket, FETCH, b"\n\x01a")
        assert code == grpc.StatusCode.OK
        denied = [r for r in _denials(d) if r["process"]["uid"] == NOBODY]
        assert len(denied) == 1 and "too many connections" in denied[0]["reason"], denied
        holder.communicate("")
        out = raw_as(NOBODY, d.socket, FETCH, b"\n\x01a")
        assert out.startswith("OK"), out
    finally:
        d.stop()


_BURST = """
import sys, grpc
sock, n = sys.argv[1], int(sys.argv[2])
ch = grpc.insecure_channel("unix:" + sock)
codes = {}
for i in range(n):
    try:
        ch.unary_unary("/SpiffeWorkloadAPI/FetchJWTSVID")(
            b"\\n\\x01a", metadata=[("workload.spiffe.io", "true")], timeout=10)
        codes["OK"] = codes.get("OK", 0) + 1
    except grpc.RpcError as e:
        key = e.code().name + ("/limit" if "request rate" in e.details() else "")
        codes[key] = codes.get(key, 0) + 1
print(codes)
"""


@needs_root
def test_request_rate_limit_per_uid(short_tmp: Path) -> None:
    """`[limits] requests_per_second_per_uid = 5`, `burst_per_uid = 5`: a burst of 40 from one
    uid gets some OK and the rest UNAVAILABLE naming the rate (audited); another uid is served
    meanwhile; after a second the uid is served again."""
    d = make_daemon(short_tmp, "[limits]\nrequests_per_second_per_uid = 5\nburst_per_uid = 5\n")
    try:
        d.register("nobody", f"unix:uid:{NOBODY}")
        d.register("root", "unix:uid:0")
        out = run_as(NOBODY, _BURST, str(d.socket), "40")
        codes = eval(out.stdout)  # our own client's dict literal
        assert codes.get("OK", 0) >= 1 and codes.get("UNAVAILABLE/limit", 0) >= 20, codes
        assert set(codes) <= {"OK", "UNAVAILABLE/limit"}, codes
        assert sum(codes.values()) == 40, codes
        code, _, _ = call(d.socket, FETCH, b"\n\x01a")
        assert code == grpc.StatusCode.OK
        assert any("request rate" in r["reason"] for r in _denials(d))
        time.sleep(1.5)
        assert raw_as(NOBODY, d.socket, FETCH, b"\n\x01a").startswith("OK")
    finally:
        d.stop()


def test_oversized_request_is_refused_before_it_is_read(short_tmp: Path, tmp_path: Path) -> None:
    """`[limits] max_request_bytes = 4096`: a larger request gets RESOURCE_EXHAUSTED naming the
    limit, also one of 64 MiB (refused on its length prefix, so the daemon never buffers it);
    small requests go on being served, and the admin socket still takes a larger `agent apply`."""
    d = make_daemon(short_tmp, "[limits]\nmax_request_bytes = 4096\n")
    try:
        d.register("me", f"unix:uid:{os.getuid()}")
        assert d.proc is not None
        rss_before = rss_kib(d.proc.pid)
        for size in (5000, 64 * 1024 * 1024):
            big = workload_pb2.ValidateJWTSVIDRequest(audience="a", svid="e" * size)
            code, details, _ = call(d.socket, VALIDATE, big.SerializeToString(), timeout=60)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (size, code, details)
            assert "over the 4096-byte limit" in details, details
        # The 64 MiB body was refused, not held: the daemon grew far less than the message.
        assert rss_kib(d.proc.pid) - rss_before < 32 * 1024
        code, _, _ = call(d.socket, FETCH, b"\n\x01a")
        assert code == grpc.StatusCode.OK
        agents = "".join(f'[[agent]]\nname = "bulk-{i}"\nowner = "ops@example.org"\n'
                         f'purpose = "{"p" * 64}"\nselectors = ["unix:uid:{20000 + i}"]\n\n'
                         for i in range(60))
        assert len(agents) > 8192
        (tmp_path / "agents.toml").write_text(agents)
        d.cli("agent", "apply", "-f", str(tmp_path / "agents.toml"))
        assert len(json.loads(d.cli("agent", "list", "-o", "json").stdout)) == 61
    finally:
        d.stop()


def test_message_cut_short_is_invalid_argument(daemon: Daemon) -> None:
    """A caller that ends its request before the message it announced gets INVALID_ARGUMENT
    saying so; the daemon logs no internal error and goes on serving."""
    daemon.register("me", f"unix:uid:{os.getuid()}")
    for declared in (256, 200_000):  # a small message, and one counted in the large budget
        s = h2raw.half_request(daemon.socket, VALIDATE, declared)
        try:
            # DATA, END_STREAM: nothing more is coming
            s.sendall(h2raw.frame(h2raw.DATA, h2raw.END_STREAM, 1, b""))
            assert h2raw.grpc_status(s, 10) == str(grpc.StatusCode.INVALID_ARGUMENT.value[0])
        finally:
            s.close()
    code, _, _ = call(daemon.socket, FETCH, b"\n\x01a")
    assert code == grpc.StatusCode.OK
    assert "internal error" not in daemon.log.read_text()


def test_large_requests_share_a_budget_small_ones_never_wait(short_tmp: Path) -> None:
    """`max_pending_request_bytes = 4 MiB`: four callers each sending a 1,000,000-byte message
    slowly fill it; a fifth large message is refused at once (RESOURCE_EXHAUSTED), small calls go
    on being served, and when the slow callers go away the budget is whole again."""
    d = make_daemon(short_tmp, "[limits]\nmax_request_bytes = 1048576\n"
                               "max_pending_request_bytes = 4194304\n")
    held: list[socket.socket] = []
    try:
        d.register("me", f"unix:uid:{os.getuid()}")
        held = [h2raw.half_request(d.socket, VALIDATE, 1_000_000) for _ in range(4)]
        # accepted, waiting for the rest
        assert [h2raw.grpc_status(s, 0.5) for s in held] == [None] * 4
        fifth = h2raw.half_request(d.socket, VALIDATE, 1_000_000)
        held.append(fifth)
        assert h2raw.grpc_status(fifth, 10) == str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])
        big = workload_pb2.ValidateJWTSVIDRequest(audience="a", svid="e" * 200_000)
        code, details, _ = call(d.socket, VALIDATE, big.SerializeToString())
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "retry later" in details, details
        code, _, _ = call(d.socket, FETCH, b"\n\x01a")
        assert code == grpc.StatusCode.OK  # small requests never wait on the budget
        for s in held:
            s.close()
        held = []
        deadline = time.monotonic() + 10
        while True:  # the slow callers' share comes back once the daemon sees them go
            code, details, _ = call(d.socket, VALIDATE, big.SerializeToString())
            if code != grpc.StatusCode.RESOURCE_EXHAUSTED:
                break
            assert time.monotonic() < deadline, details
            time.sleep(0.1)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details  # read whole, then judged
    finally:
        for s in held:
            s.close()
        d.stop()


@pytest.mark.parametrize(("body", "ok"), [
    ("max_connections_per_uid = 64\nrequests_per_second_per_uid = 50\nburst_per_uid = 10\n",
     True),
    ("max_connections_per_uid = 0\nrequests_per_second_per_uid = 0\n", True),  # 0 = off
    ("max_connections_per_uid = -1\n", False),
    ('requests_per_second_per_uid = "fast"\n', False),
    ("burst_per_uid = 0\n", False),
    ("max_conections_per_uid = 4\n", False),
    ("max_request_bytes = 65536\n", True),
    ("max_request_bytes = 10\n", False),
    ("max_request_bytes = 2097152\nmax_pending_request_bytes = 1048576\n", False),
])
def test_limits_config_is_validated(tmp_path: Path, body: str, ok: bool) -> None:
    cfg = tmp_path / "ensign.toml"
    cfg.write_text(f'trust_domain = "example.org"\n[limits]\n{body}')
    out = subprocess.run([*ENSIGN, "config", "check", "--config", str(cfg)],
                         capture_output=True, text=True)
    if ok:
        assert out.returncode == 0, out.stderr
    else:
        assert out.returncode == 78 and "limits" in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
