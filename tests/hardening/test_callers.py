"""Adversarial callers: another uid, a connection handed to another process, a reused pid, a
missing or doubled security header. Each test names the attacker's move; SECURITY.md lists
which claim each test backs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import Any

import grpc
import pytest

from ensign.proto import delegation_pb2, workload_pb2
from tests.support.clients import HEADER, call
from tests.support.daemon import NOBODY, Daemon, needs_root
from tests.support.hardening import healthy
from tests.support.scripts import FETCH_ON_SOCKET, handoff, raw_as


def _denials(d: Daemon) -> list[dict[str, Any]]:
    return d.audit("--type", "request.denied")


# -- another uid --------------------------------------------------------------------------------

@needs_root
def test_other_uid_cannot_get_roots_identity(node: tuple[Daemon, dict[str, Any]]) -> None:
    d, root_entry = node
    want = workload_pb2.JWTSVIDRequest(audience=["a"], spiffe_id=str(root_entry["spiffe_id"]))
    out = raw_as(NOBODY, d.socket, "/SpiffeWorkloadAPI/FetchJWTSVID", want.SerializeToString())
    assert out.startswith("STATUS PERMISSION_DENIED"), out
    out = raw_as(NOBODY, d.socket, "/SpiffeWorkloadAPI/FetchX509SVID", streaming=True)
    assert out.startswith("STATUS PERMISSION_DENIED"), out
    # Even with an identity of its own, nobody cannot name root's.
    d.register("nobody-agent", f"unix:uid:{NOBODY}")
    out = raw_as(NOBODY, d.socket, "/SpiffeWorkloadAPI/FetchJWTSVID", want.SerializeToString())
    assert out.startswith("STATUS PERMISSION_DENIED"), out
    theirs = [r for r in _denials(d) if r["process"]["uid"] == NOBODY]
    assert len(theirs) == 3, theirs
    assert str(root_entry["spiffe_id"]) in theirs[-1]["reason"], theirs[-1]
    assert d.alive()


@needs_root
def test_other_uid_cannot_use_the_admin_api_even_on_a_misconfigured_socket(
    node: tuple[Daemon, dict[str, Any]],
) -> None:
    d, root_entry = node
    out = raw_as(NOBODY, d.admin_socket, "/ensign.admin.v1.Admin/ListAgents", mode="none")
    assert out.startswith("STATUS UNAVAILABLE"), out  # 0600: connect() is refused by the kernel
    os.chmod(d.admin_socket, 0o666)  # an operator's mistake
    for method, req in [("ListAgents", b""),
                        ("DeleteAgent", b"\n" + bytes([len(str(root_entry["id"]))])
                         + str(root_entry["id"]).encode())]:
        out = raw_as(NOBODY, d.admin_socket, f"/ensign.admin.v1.Admin/{method}", req,
                     mode="none")
        assert out.startswith("STATUS PERMISSION_DENIED") and "may not use the admin API" in out
    assert d.cli("agent", "show", str(root_entry["id"])).returncode == 0


@needs_root
def test_refused_admin_calls_are_audited(node: tuple[Daemon, dict[str, Any]]) -> None:
    d, _ = node
    os.chmod(d.admin_socket, 0o666)
    out = raw_as(NOBODY, d.admin_socket, "/ensign.admin.v1.Admin/GetStatus", mode="none")
    assert out.startswith("STATUS PERMISSION_DENIED"), out
    admin = [r for r in d.audit("--result", "denied")
             if "GetStatus" in str(r) and (r.get("process") or {}).get("uid") == NOBODY]
    assert len(admin) == 1, d.audit("--result", "denied")[-3:]


# -- the caller's pid changes hands ----------------------------------------------------------------

def test_socket_handed_to_another_process_is_refused_and_audited(
    node: tuple[Daemon, dict[str, Any]],
) -> None:
    d, _ = node
    out = handoff(d.socket)
    assert out.stdout.startswith("REFUSED UNAUTHENTICATED"), out.stdout + out.stderr
    refused = [r for r in _denials(d) if "exited" in r["reason"]]
    assert refused, _denials(d)
    assert healthy(d)


_PID_REUSE = textwrap.dedent("""
    import os, socket, sys, time
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
    s = socket.socket(fileno=fds[0])
""") + FETCH_ON_SOCKET + "os._exit(0)\n"


@needs_root
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
    assert out.stdout.startswith("REFUSED UNAUTHENTICATED"), out.stdout + out.stderr
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
    before = len(d.audit("--result", "denied"))
    code, _, _ = call(d.socket, "/SpiffeWorkloadAPI/FetchJWTSVID",
                      workload_pb2.JWTSVIDRequest(audience=["a"]).SerializeToString(), metadata=())
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    after = d.audit("--result", "denied")
    assert len(after) == before + 1 and "security header" in after[-1]["reason"], after[-1]
