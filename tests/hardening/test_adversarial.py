"""Adversarial: what a process on the node can try, and what the daemon must refuse (and audit).

Each test names the attacker's move. SECURITY.md lists which claim each test backs.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import hpack
import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from ensign.proto import delegation_pb2, workload_pb2
from tests.integration.test_peer_identity import _HANDOFF
from tests.support.daemon import ENSIGN, NOBODY, Daemon, make_daemon, run_as
from tests.support.hardening import HEADER, audit, call, fd_count, healthy, rss_kib, settle_fds
from tests.support.sigstore import GHA, PrivateSigstore

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (other uids, groups)")

# A raw grpcio client for any uid: method, hex request, header mode; prints the outcome.
_CLIENT = """
import sys, grpc
sock, method, req, mode, streaming = sys.argv[1:6]
md = {"one": [("workload.spiffe.io", "true")], "none": [],
      "two": [("workload.spiffe.io", "true"), ("workload.spiffe.io", "true")],
      "false": [("workload.spiffe.io", "false")]}[mode]
ch = grpc.insecure_channel("unix:" + sock)
try:
    if streaming == "1":
        it = ch.unary_stream(method)(bytes.fromhex(req), metadata=md, timeout=10)
        out = next(it)
        it.cancel()
    else:
        out = ch.unary_unary(method)(bytes.fromhex(req), metadata=md, timeout=10)
    print("OK", out.hex())
except grpc.RpcError as e:
    print("STATUS", e.code().name, e.details())
"""


def _as(uid: int, sock: Path, method: str, req: bytes = b"", *, mode: str = "one",
        streaming: bool = False) -> str:
    out = run_as(uid, _CLIENT, str(sock), method, req.hex(), mode, "1" if streaming else "0")
    return out.stdout.strip() or out.stderr.strip()


def _denials(d: Daemon) -> list[dict[str, Any]]:
    return audit(d, "--type", "request.denied")


@pytest.fixture(scope="module")
def node() -> Iterator[tuple[Daemon, dict[str, Any]]]:
    """A daemon where root (this test process) holds an identity and nobody holds none."""
    root = Path(tempfile.mkdtemp(prefix="ens", dir="/tmp"))
    root.chmod(0o755)
    d = make_daemon(root)
    root_entry = d.register("root-agent", "unix:uid:0")
    yield d, root_entry
    if d.alive():
        d.stop()
    shutil.rmtree(root, ignore_errors=True)


# -- another uid --------------------------------------------------------------------------------

@ROOT_ONLY
def test_other_uid_cannot_get_roots_identity(node: tuple[Daemon, dict[str, Any]]) -> None:
    d, root_entry = node
    want = workload_pb2.JWTSVIDRequest(audience=["a"], spiffe_id=str(root_entry["spiffe_id"]))
    out = _as(NOBODY, d.socket, "/SpiffeWorkloadAPI/FetchJWTSVID", want.SerializeToString())
    assert out.startswith("STATUS PERMISSION_DENIED"), out
    out = _as(NOBODY, d.socket, "/SpiffeWorkloadAPI/FetchX509SVID", streaming=True)
    assert out.startswith("STATUS PERMISSION_DENIED"), out
    # Even with an identity of its own, nobody cannot name root's.
    d.register("nobody-agent", f"unix:uid:{NOBODY}")
    out = _as(NOBODY, d.socket, "/SpiffeWorkloadAPI/FetchJWTSVID", want.SerializeToString())
    assert out.startswith("STATUS PERMISSION_DENIED"), out
    theirs = [r for r in _denials(d) if r["process"]["uid"] == NOBODY]
    assert len(theirs) >= 3, theirs
    assert any(str(root_entry["spiffe_id"]) in r["reason"] for r in theirs)
    assert d.alive()


@ROOT_ONLY
def test_other_uid_cannot_use_the_admin_api_even_on_a_misconfigured_socket(
    node: tuple[Daemon, dict[str, Any]],
) -> None:
    d, root_entry = node
    out = _as(NOBODY, d.admin_socket, "/ensign.admin.v1.Admin/ListAgents", mode="none")
    assert out.startswith("STATUS UNAVAILABLE"), out  # 0600: connect() is refused by the kernel
    os.chmod(d.admin_socket, 0o666)  # an operator's mistake
    for method, req in [("ListAgents", b""),
                        ("DeleteAgent", b"\n" + bytes([len(str(root_entry["id"]))])
                         + str(root_entry["id"]).encode())]:
        out = _as(NOBODY, d.admin_socket, f"/ensign.admin.v1.Admin/{method}", req, mode="none")
        assert out.startswith("STATUS PERMISSION_DENIED") and "may not use the admin API" in out
    assert d.cli("agent", "show", str(root_entry["id"])).returncode == 0


@ROOT_ONLY
def test_refused_admin_calls_are_audited(node: tuple[Daemon, dict[str, Any]]) -> None:
    d, _ = node
    os.chmod(d.admin_socket, 0o666)
    out = _as(NOBODY, d.admin_socket, "/ensign.admin.v1.Admin/GetStatus", mode="none")
    assert out.startswith("STATUS PERMISSION_DENIED"), out
    admin = [r for r in audit(d, "--result", "denied")
             if "GetStatus" in json.dumps(r) and (r.get("process") or {}).get("uid") == NOBODY]
    assert admin, audit(d, "--result", "denied")[-3:]


# -- the caller's pid changes hands ----------------------------------------------------------------

def test_socket_handed_to_another_process_is_refused_and_audited(
    node: tuple[Daemon, dict[str, Any]],
) -> None:
    d, _ = node
    out = subprocess.run([sys.executable, "-c", _HANDOFF, str(d.socket)], capture_output=True,
                         text=True, timeout=30)
    assert "REFUSED UNAUTHENTICATED" in out.stdout, out.stdout + out.stderr
    refused = [r for r in _denials(d) if "exited" in r["reason"]]
    assert refused, _denials(d)
    assert healthy(d)


_PID_REUSE = textwrap.dedent("""
    import array, asyncio, os, socket, sys, time
    path = sys.argv[1]
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:                       # C: connects (the kernel records C), hands the fd over
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        time.sleep(0.5)                # the daemon accepts and pins C
        socket.send_fds(child, [b"x"], [s.fileno()])
        os._exit(0)
    _, fds, _, _ = socket.recv_fds(parent, 1, 1)
    os.waitpid(pid, 0)                 # C is gone; now make the next fork get C's pid
    for _ in range(50):
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(pid - 1))
        d = os.fork()
        if d == 0:
            break
        os.waitpid(d, 0)
        if d == pid:
            os._exit(0)
    else:
        print("NOREUSE", flush=True)
        os._exit(0)
    if os.getpid() != pid:
        os._exit(0)
    from grpclib.client import Channel
    from ensign.proto import workload_pb2 as pb
    from ensign.proto.workload_grpc import SpiffeWorkloadAPIStub
    s = socket.socket(fileno=fds[0])
    async def main():
        loop = asyncio.get_running_loop()
        ch = Channel(path=path)
        async def create():
            _, proto = await loop.create_unix_connection(ch._protocol_factory, sock=s)
            return proto
        ch._create_connection = create
        try:
            await SpiffeWorkloadAPIStub(ch).FetchJWTSVID(
                pb.JWTSVIDRequest(audience=["a"]), metadata={"workload.spiffe.io": "true"})
            print("ISSUED", os.getpid(), flush=True)
        except Exception as e:
            print("REFUSED", getattr(e, "status", e).name, getattr(e, "message", ""), flush=True)
        ch.close()
    asyncio.run(main())
    os._exit(0)
""")


@ROOT_ONLY
def test_real_pid_reuse_gets_no_identity(node: tuple[Daemon, dict[str, Any]]) -> None:
    """C connects and exits; D is forked *with C's pid* (ns_last_pid) and uses C's connection.
    SO_PEERCRED still says C's pid, which now names D: only the pidfd pin tells them apart."""
    if not os.access("/proc/sys/kernel/ns_last_pid", os.W_OK):
        pytest.skip("ns_last_pid is not writable here")
    d, _ = node
    out = subprocess.run([sys.executable, "-c", _PID_REUSE, str(d.socket)], capture_output=True,
                         text=True, timeout=60)
    if "NOREUSE" in out.stdout:
        pytest.skip("could not get the pid back (busy machine)")
    assert "REFUSED UNAUTHENTICATED" in out.stdout, out.stdout + out.stderr
    assert any("exited" in r["reason"] or "reused" in r["reason"] for r in _denials(d))
    assert healthy(d)


# -- the security header ------------------------------------------------------------------------

WORKLOAD_RPCS = [
    ("/SpiffeWorkloadAPI/FetchX509SVID", b"", True),
    ("/SpiffeWorkloadAPI/FetchX509Bundles", b"", True),
    ("/SpiffeWorkloadAPI/FetchJWTBundles", b"", True),
    ("/SpiffeWorkloadAPI/FetchJWTSVID",
     workload_pb2.JWTSVIDRequest(audience=["a"]).SerializeToString(), False),
    ("/SpiffeWorkloadAPI/ValidateJWTSVID",
     workload_pb2.ValidateJWTSVIDRequest(audience="a", svid="x.y.z").SerializeToString(), False),
    ("/ensign.delegation.v1.Delegation/ExchangeToken",
     delegation_pb2.ExchangeTokenRequest(subject_token="x.y.z", audience="a")
     .SerializeToString(), False),
]


@pytest.mark.parametrize("mode", ["none", "two", "false"])
@pytest.mark.parametrize(("method", "req", "streaming"), WORKLOAD_RPCS,
                         ids=[m.rsplit("/", 1)[1] for m, _, _ in WORKLOAD_RPCS])
def test_missing_doubled_or_false_security_header_is_refused(
    node: tuple[Daemon, dict[str, Any]], method: str, req: bytes, streaming: bool, mode: str,
) -> None:
    d, _ = node
    md = {"none": (), "two": HEADER * 2, "false": (("workload.spiffe.io", "false"),)}[mode]
    code, details, _ = call(d.socket, method, req, metadata=md, stream=streaming)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "security header" in details, (
        code, details)
    assert d.alive()


def test_missing_security_header_is_audited(node: tuple[Daemon, dict[str, Any]]) -> None:
    d, _ = node
    code, _, _ = call(d.socket, "/SpiffeWorkloadAPI/FetchJWTSVID",
                      workload_pb2.JWTSVIDRequest(audience=["a"]).SerializeToString(), metadata=())
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert any("security header" in r["reason"] for r in audit(d, "--result", "denied"))


# -- swapped executables and bundles (Sigstore) ------------------------------------------------

IDENTITY = "https://github.com/acme/agent/.github/workflows/release.yml@refs/tags/v1.2.3"
OTHER = "https://github.com/mallory/agent/.github/workflows/release.yml@refs/tags/v6.6.6"
_SIG_CLIENT = """
import sys, grpc
ch = grpc.insecure_channel("unix:" + sys.argv[1])
try:
    ch.unary_unary("/SpiffeWorkloadAPI/FetchJWTSVID")(
        b"\\n\\x01a", metadata=[("workload.spiffe.io", "true")], timeout=20)
    print("ISSUED")
except grpc.RpcError as e:
    print("REFUSED", e.code().name)
"""


def _run_exe(exe: Path, d: Daemon) -> str:
    env = {"PYTHONPATH": sysconfig.get_paths()["purelib"], "PATH": "/usr/bin:/bin"}
    out = subprocess.run([str(exe), "-c", _SIG_CLIENT, str(d.socket)], capture_output=True,
                         text=True, env=env, timeout=60)
    return out.stdout.strip() or out.stderr.strip()


@pytest.fixture(scope="module")
def fulcio() -> PrivateSigstore:
    return PrivateSigstore()


@pytest.fixture(scope="module")
def sig_daemon(fulcio: PrivateSigstore) -> Iterator[Daemon]:
    """A Sigstore-enabled daemon with an entry that needs IDENTITY's signature."""
    root = Path(tempfile.mkdtemp(prefix="ens", dir="/tmp"))
    root.chmod(0o755)
    tr = root / "trusted_root.json"
    tr.write_text(json.dumps(fulcio.trusted_root()))
    (root / "bundles").mkdir()
    d = make_daemon(root, f'[attestors.sigstore]\nenabled = true\ntrusted_root = "{tr}"\n'
                          f'bundle_dirs = ["{root / "bundles"}"]\n')
    d.register("signed-agent", "unix:uid:0", f"sigstore:identity:{IDENTITY}",
               f"sigstore:issuer:{GHA}")
    yield d
    if d.alive():
        d.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def signed(sig_daemon: Daemon, fulcio: PrivateSigstore) -> tuple[Daemon, Path, bytes]:
    """A signed build of its own, already attested once (ISSUED)."""
    bins = Path(tempfile.mkdtemp(prefix="bin", dir=sig_daemon.root))
    bins.chmod(0o755)
    exe = bins / "agent"
    shutil.copy2(os.path.realpath(sys.executable), exe)
    data = exe.read_bytes()
    (bins / "agent.sigstore.json").write_text(json.dumps(fulcio.sign(data, IDENTITY)))
    assert _run_exe(exe, sig_daemon) == "ISSUED"
    return sig_daemon, exe, data


def _tampered(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0x01])  # section headers: still runs


def _sigstore_denials(d: Daemon) -> list[dict[str, Any]]:
    return [r for r in audit(d, "--type", "attestation")
            if r["details"]["evidence"].get("sigstore.failed_check")
            or r["details"]["evidence"].get("sigstore.error")]


def test_executable_replaced_after_attestation(signed: tuple[Daemon, Path, bytes]) -> None:
    d, exe, data = signed
    swap = exe.with_name("swap")
    swap.write_bytes(_tampered(data))
    swap.chmod(0o755)
    os.replace(swap, exe)  # a new file at the attested path, the old bundle beside it
    assert _run_exe(exe, d) == "REFUSED PERMISSION_DENIED"
    failed = _sigstore_denials(d)
    assert failed and failed[-1]["details"]["evidence"]["sigstore.failed_check"] == (
        "artifact-digest")
    assert _denials(d)


def test_executable_edited_in_place_with_mtime_restored(
    signed: tuple[Daemon, Path, bytes],
) -> None:
    d, exe, data = signed
    st = exe.stat()
    with exe.open("r+b") as f:  # same inode, same size, same mtime: only ctime moves
        f.seek(len(data) - 1)
        f.write(bytes([data[-1] ^ 0x01]))
    os.utime(exe, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert _run_exe(exe, d) == "REFUSED PERMISSION_DENIED"
    assert _sigstore_denials(d)


def test_bundle_replaced_or_removed_after_attestation(
    signed: tuple[Daemon, Path, bytes], fulcio: PrivateSigstore,
) -> None:
    d, exe, data = signed
    bundle = exe.with_name("agent.sigstore.json")
    bundle.write_text(json.dumps(fulcio.sign(data, OTHER)))  # valid, but someone else's
    assert _run_exe(exe, d) == "REFUSED PERMISSION_DENIED"
    bundle.unlink()
    assert _run_exe(exe, d) == "REFUSED PERMISSION_DENIED"
    evidence = [r["details"]["evidence"] for r in audit(d, "--type", "attestation")]
    assert any(e.get("sigstore.signer") == OTHER for e in evidence)
    assert "no Sigstore bundle" in evidence[-1].get("sigstore.error", "")
    assert len(_denials(d)) >= 2


def test_symlinked_executable_is_known_by_its_real_path(short_tmp: Path) -> None:
    d = make_daemon(short_tmp)
    try:
        bins = short_tmp / "bin"
        bins.mkdir(mode=0o755)
        real = bins / "real-agent"
        shutil.copy2(os.path.realpath(sys.executable), real)
        link = bins / "trusted-agent"
        link.symlink_to(real)
        # An entry for the link's path: a caller cannot pick its path by naming a symlink.
        d.register("by-link", "unix:uid:0", f"unix:path:{link}")
        assert _run_exe(link, d) == "REFUSED PERMISSION_DENIED"
        assert any(str(real) in json.dumps(r) for r in _denials(d))
        d.register("by-real-path", "unix:uid:0", f"unix:path:{real}")
        assert _run_exe(link, d) == "ISSUED"
    finally:
        d.stop()


# -- slowloris and many connections ----------------------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream_id.to_bytes(4, "big") \
        + payload


def _half_request(path: Path, method: str = "/SpiffeWorkloadAPI/FetchJWTSVID",
                  declared: int = 256) -> socket.socket:
    """A request whose headers arrive and whose body never completes: its message prefix
    promises `declared` bytes, of which 1 is sent."""
    headers = hpack.Encoder().encode([
        (":method", "POST"), (":scheme", "http"), (":path", method),
        (":authority", "localhost"), ("content-type", "application/grpc"), ("te", "trailers"),
        ("workload.spiffe.io", "true")])
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(path))
    s.sendall(PREFACE + _frame(4, 0, 0, b"") + _frame(1, 4, 1, headers)
              + _frame(0, 0, 1, b"\x00" + declared.to_bytes(4, "big") + b"\x0a"))
    return s


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
        idle += [_half_request(d.socket) for _ in range(100)]
        idle += [_half_request(d.admin_socket) for _ in range(20)]
        for _ in range(30):  # streams held open and never read
            ch = grpc.insecure_channel(f"unix:{d.socket}")
            channels.append(ch)
            it = ch.unary_stream("/SpiffeWorkloadAPI/FetchX509SVID")(b"", metadata=HEADER)
            streams.append(it)
        # An honest client is still served, and so is the admin.
        code, details, _ = call(d.socket, "/SpiffeWorkloadAPI/FetchJWTSVID",
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


LIMITS_SKIP = pytest.mark.skipif(importlib.util.find_spec("ensign.daemon.server.limits") is None,
                                 reason="needs [limits] in the daemon")
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


@LIMITS_SKIP
@ROOT_ONLY
def test_connection_cap_per_uid(short_tmp: Path) -> None:
    """`[limits] max_connections_per_uid = 4`: the 5th concurrent connection of one uid gets
    UNAVAILABLE naming the limit (audited); other uids are unaffected; closing frees a slot."""
    d = make_daemon(short_tmp, "[limits]\nmax_connections_per_uid = 4\n")
    try:
        d.register("nobody", f"unix:uid:{NOBODY}")
        d.register("root", "unix:uid:0")
        holder = subprocess.Popen(
            ["/usr/bin/python3", "-c", _HOLDER, str(d.socket), "5"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, user=NOBODY, group=NOBODY, extra_groups=[],
            env={"PYTHONPATH": str(_nobody_site()), "PATH": "/usr/bin:/bin"})
        assert holder.stdout is not None
        lines = [holder.stdout.readline().strip() for _ in range(5)]
        assert lines[:4] == ["OK"] * 4, lines
        assert lines[4].startswith("STATUS UNAVAILABLE") and "too many connections" in lines[4], (
            lines)
        # Root is another uid: not counted against nobody's cap.
        code, _, _ = call(d.socket, "/SpiffeWorkloadAPI/FetchJWTSVID", b"\n\x01a")
        assert code == grpc.StatusCode.OK
        denied = [r for r in _denials(d) if r["process"]["uid"] == NOBODY]
        assert denied and "too many connections" in denied[-1]["reason"], denied[-1:]
        holder.communicate("")
        out = _as(NOBODY, d.socket, "/SpiffeWorkloadAPI/FetchJWTSVID", b"\n\x01a")
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


@LIMITS_SKIP
@ROOT_ONLY
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
        code, _, _ = call(d.socket, "/SpiffeWorkloadAPI/FetchJWTSVID", b"\n\x01a")
        assert code == grpc.StatusCode.OK
        assert any("request rate" in r["reason"] for r in _denials(d))
        time.sleep(1.5)
        assert _as(NOBODY, d.socket, "/SpiffeWorkloadAPI/FetchJWTSVID", b"\n\x01a").startswith(
            "OK")
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
            code, details, _ = call(d.socket, "/SpiffeWorkloadAPI/ValidateJWTSVID",
                                    big.SerializeToString(), timeout=60)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (size, code, details)
            assert "over the 4096-byte limit" in details, details
        # The 64 MiB body was refused, not held: the daemon grew far less than the message.
        assert rss_kib(d.proc.pid) - rss_before < 32 * 1024
        code, _, _ = call(d.socket, "/SpiffeWorkloadAPI/FetchJWTSVID", b"\n\x01a")
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


def _grpc_status(s: socket.socket, timeout: float) -> str | None:
    """The grpc-status the daemon ended stream 1 with, or None if it has not within `timeout`."""
    s.settimeout(timeout)
    buf, decoder = b"", hpack.Decoder()
    try:
        while True:
            while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
                size, kind = int.from_bytes(buf[:3], "big"), buf[3]
                payload, buf = buf[9:9 + size], buf[9 + size:]
                if kind == 1:  # HEADERS (response headers, then the trailers)
                    fields = dict(decoder.decode(payload))
                    status = fields.get("grpc-status") or fields.get(b"grpc-status")
                    if status is not None:
                        return status.decode() if isinstance(status, bytes) else str(status)
            chunk = s.recv(65536)
            if not chunk:
                return None
            buf += chunk
    except TimeoutError:
        return None


VALIDATE = "/SpiffeWorkloadAPI/ValidateJWTSVID"


def test_message_cut_short_is_invalid_argument(daemon: Daemon) -> None:
    """A caller that ends its request before the message it announced gets INVALID_ARGUMENT
    saying so; the daemon logs no internal error and goes on serving."""
    daemon.register("me", f"unix:uid:{os.getuid()}")
    for declared in (256, 200_000):  # a small message, and one counted in the large budget
        s = _half_request(daemon.socket, VALIDATE, declared)
        try:
            s.sendall(_frame(0, 1, 1, b""))  # DATA, END_STREAM: nothing more is coming
            assert _grpc_status(s, 10) == str(grpc.StatusCode.INVALID_ARGUMENT.value[0])
        finally:
            s.close()
    code, _, _ = call(daemon.socket, "/SpiffeWorkloadAPI/FetchJWTSVID", b"\n\x01a")
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
        held = [_half_request(d.socket, VALIDATE, 1_000_000) for _ in range(4)]
        assert all(_grpc_status(s, 0.5) is None for s in held)  # accepted, waiting for the rest
        fifth = _half_request(d.socket, VALIDATE, 1_000_000)
        held.append(fifth)
        assert _grpc_status(fifth, 10) == str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])
        big = workload_pb2.ValidateJWTSVIDRequest(audience="a", svid="e" * 200_000)
        code, details, _ = call(d.socket, "/SpiffeWorkloadAPI/ValidateJWTSVID",
                                big.SerializeToString())
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "retry later" in details, details
        code, _, _ = call(d.socket, "/SpiffeWorkloadAPI/FetchJWTSVID", b"\n\x01a")
        assert code == grpc.StatusCode.OK  # small requests never wait on the budget
        for s in held:
            s.close()
        held = []
        deadline = time.monotonic() + 10
        while True:  # the slow callers' share comes back once the daemon sees them go
            code, details, _ = call(d.socket, "/SpiffeWorkloadAPI/ValidateJWTSVID",
                                    big.SerializeToString())
            if code != grpc.StatusCode.RESOURCE_EXHAUSTED:
                break
            assert time.monotonic() < deadline, details
            time.sleep(0.1)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details  # read whole, then judged
    finally:
        for s in held:
            s.close()
        d.stop()


@LIMITS_SKIP
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


def _nobody_site() -> Path:
    from tests.support.daemon import nobody_site_packages

    return nobody_site_packages()


# -- delegation tokens ----------------------------------------------------------------------------

IDP = "https://idp.example.org"
CAL = "https://calendar.example.org"
GID_A, GID_B = 5101, 5102


class Idp:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())

    def jwks(self) -> str:
        jwk = json.loads(pyjwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        return json.dumps({"keys": [{**jwk, "kid": "idp-1", "use": "sig", "alg": "ES256"}]})

    def token(self, may_act: Any, ttl: int = 600, key: Any = None) -> str:
        now = int(time.time())
        return pyjwt.encode({"iss": IDP, "sub": "alice", "aud": "ensign", "iat": now,
                             "exp": now + ttl, "scope": "calendar.read calendar.write",
                             "may_act": may_act}, key or self.key, algorithm="ES256",
                            headers={"kid": "idp-1"})


@pytest.fixture(scope="module")
def deleg() -> Iterator[tuple[Daemon, Idp, dict[str, Any], dict[str, Any]]]:
    root = Path(tempfile.mkdtemp(prefix="ens", dir="/tmp"))
    root.chmod(0o755)
    idp = Idp()
    (root / "jwks.json").write_text(idp.jwks())
    d = make_daemon(root, "[delegation]\nenabled = true\nmax_chain_depth = 2\n"
                          f'[[delegation.issuers]]\nissuer = "{IDP}"\n'
                          f'jwks_file = "{root / "jwks.json"}"\naudience = "ensign"\n')
    d.cli("role", "create", "planner", "--audience", f"{CAL}*", "--scope", "calendar.read",
          "--scope", "calendar.write", "--may-act-for-users", "--may-redelegate")
    d.cli("role", "create", "reader", "--audience", f"{CAL}*", "--scope", "calendar.read",
          "--may-act-for-users")
    a = d.register("agent-a", "unix:uid:0", f"unix:supplementary_gid:{GID_A}",
                   extra=("--role", "planner"))
    b = d.register("agent-b", "unix:uid:0", f"unix:supplementary_gid:{GID_B}",
                   extra=("--role", "reader"))
    yield d, idp, a, b
    d.stop()
    shutil.rmtree(root, ignore_errors=True)


def _exchange(d: Daemon, gid: int, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SPIFFE_ENDPOINT_SOCKET": d.endpoint}
    return subprocess.run([*ENSIGN, "token", "exchange", "--subject-token", "-", "--audience",
                           CAL, *args], input=token, capture_output=True, text=True, env=env,
                          extra_groups=[gid], timeout=30)


def _b64(d: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")


def _refused(d: Daemon, agent: dict[str, Any], out: subprocess.CompletedProcess[str],
             expect: str) -> None:
    assert out.returncode == 77, out.stdout + out.stderr
    assert expect in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    trail = audit(d, "--agent", str(agent["id"]), "--type", "token.exchanged")
    assert trail[-1]["result"] == "denied" and expect in trail[-1]["reason"], trail[-1]


@ROOT_ONLY
def test_delegation_token_attacks(deleg: tuple[Daemon, Idp, dict[str, Any], dict[str, Any]],
                                  ) -> None:
    d, idp, a, b = deleg
    first = _exchange(d, GID_A, idp.token({"sub": a["spiffe_id"]}), "--scope", "calendar.read")
    assert first.returncode == 0, first.stderr
    token = first.stdout.strip()
    header_b64, payload_b64, sig = token.split(".")
    claims = pyjwt.decode(token, options={"verify_signature": False})
    header = pyjwt.get_unverified_header(token)

    # Forged: the human's token signed by someone else's key under the IdP's key id.
    forged_idp = idp.token({"sub": a["spiffe_id"]}, key=ec.generate_private_key(ec.SECP256R1()))
    _refused(d, a, _exchange(d, GID_A, forged_idp), "Signature verification failed")
    # Forged: a delegated token re-signed with an attacker key under the CA's key id.
    forged = pyjwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256",
                          headers={"kid": header["kid"], "typ": "at+jwt"})
    _refused(d, b, _exchange(d, GID_B, forged), "rejected")
    # Escalated: scope widened in the payload, the CA's signature kept.
    wider = _b64({**claims, "scope": "calendar.read calendar.write"})
    _refused(d, b, _exchange(d, GID_B, f"{header_b64}.{wider}.{sig}"), "rejected")
    # Escalated: asking more than the delegated token carries.
    _refused(d, b, _exchange(d, GID_B, token, "--scope", "calendar.write"), "calendar.write")
    # Replayed: the agent presents its own delegated token again.
    _refused(d, a, _exchange(d, GID_A, token), "re-delegate to itself")
    # Replayed: a JWT-SVID is not a human's consent.
    svid = _exchange_svid(d)
    _refused(d, a, _exchange(d, GID_A, svid), "")
    # Expired: a delegated token past its exp.
    short = _exchange(d, GID_A, idp.token({"sub": a["spiffe_id"]}), "--scope", "calendar.read",
                      "--ttl", "1s")
    assert short.returncode == 0, short.stderr
    time.sleep(2.1)
    _refused(d, b, _exchange(d, GID_B, short.stdout.strip()), "expired")
    # The honest chain still works: A's token, presented by B, for what A holds.
    ok = _exchange(d, GID_B, token, "--scope", "calendar.read")
    assert ok.returncode == 0, ok.stderr
    assert payload_b64  # (the original token was never modified in place)


def _exchange_svid(d: Daemon) -> str:
    """Agent A's own JWT-SVID (fetched with A's group)."""
    env = {**os.environ, "SPIFFE_ENDPOINT_SOCKET": d.endpoint}
    out = subprocess.run([*ENSIGN, "fetch", "jwt", "--audience", f"{CAL}/x"], env=env,
                         capture_output=True, text=True, extra_groups=[GID_A], timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split()[-1]


# -- the audit trail, edited behind the daemon's back -----------------------------------------

@pytest.fixture(scope="module")
def segmented() -> Iterator[Path]:
    """A stopped daemon's data dir whose audit log spans several segments."""
    root = Path(tempfile.mkdtemp(prefix="ens", dir="/tmp"))
    root.chmod(0o755)
    d = make_daemon(root, '[audit]\nsegment_size = "4KiB"\ncheckpoint_every = 5\n')
    d.register("logger", "unix:uid:0")
    for i in range(40):
        call(d.socket, "/SpiffeWorkloadAPI/FetchJWTSVID",
             workload_pb2.JWTSVIDRequest(audience=[f"aud{i}"]).SerializeToString())
    assert d.stop() == 0
    assert len(list((d.data_dir / "audit").glob("segment-*.jsonl"))) >= 4
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _edit(audit_dir: Path) -> None:
    seg = sorted(audit_dir.glob("segment-*.jsonl"))[1]
    lines = seg.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b'"result":"success"', b'"result":"failure"')
    seg.write_bytes(b"".join(lines))


def _delete(audit_dir: Path) -> None:
    sorted(audit_dir.glob("segment-*.jsonl"))[1].unlink()


def _reorder(audit_dir: Path) -> None:
    one, two = sorted(audit_dir.glob("segment-*.jsonl"))[1:3]
    tmp = one.with_suffix(".tmp")
    one.rename(tmp)
    two.rename(one)
    tmp.rename(two)


def _drop_newest(audit_dir: Path) -> None:
    sorted(audit_dir.glob("segment-*.jsonl"))[-1].unlink()


@pytest.mark.parametrize("tamper", [_edit, _delete, _reorder, _drop_newest],
                         ids=["edited", "deleted", "reordered", "newest-deleted"])
def test_audit_segments_tampered_are_named_and_stay_named_after_restart(
    segmented: Path, short_tmp: Path, tamper: Any,
) -> None:
    root = short_tmp
    shutil.copytree(segmented / "data", root / "data")
    tamper(root / "data" / "audit")
    verify = [*ENSIGN, "audit", "verify", "--data-dir", str(root / "data")]
    out = subprocess.run(verify, capture_output=True, text=True)
    assert out.returncode == 65, out.stdout + out.stderr
    assert "audit verification failed" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    # A daemon started on the edited log does not launder it: new records and checkpoints are
    # appended, and the tampering is still reported afterwards.
    d = Daemon(root=root)
    try:
        d.start()
    except RuntimeError:
        return  # refusing to start on a broken log is also a refusal
    try:
        call(d.socket, "/SpiffeWorkloadAPI/FetchJWTSVID", b"\n\x01z")
    finally:
        d.stop()
    again = subprocess.run(verify, capture_output=True, text=True)
    assert again.returncode == 65, again.stdout + again.stderr
