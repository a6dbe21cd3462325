"""Issue 15 item 2: no caller can make the audit trail drop records or hang other callers.

Callers of uid 65534 bring hostile bytes in every field they control: the path and name of
their executable (bytes that are not UTF-8, backslashes, escapes, controls), the script path
an interpreter runs, their command line and environment, the cgroup they sit in, and the
audiences, SPIFFE IDs and tokens of their requests. Meanwhile root asks for JWT-SVIDs without
pause. Afterwards: every root call was answered, every SVID anyone received has its record,
every caller's attestation was recorded, the sequence has no gap and `ensign audit verify`
passes. Before the fix one path with `\\xff` lost whole batches (and hung their waiters).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import jwt as pyjwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ensign.daemon.audit.query import read_records
from ensign.daemon.text import escape, unescape
from ensign.proto import workload_pb2 as pb
from tests.support.clients import HEADER
from tests.support.daemon import NOBODY, make_daemon, nobody_site_packages
from tests.support.hardening import soak
from tests.support.sigstore import PrivateSigstore
from tests.support.units import cgroup2_mount, own_cgroup, spawn_in, unique

FUZZ = settings(max_examples=soak(12, 120), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

# Reads the calls to make (method, hex request) on stdin; prints (method, status, hex reply).
CLIENT = """
import json, sys
sys.path.insert(0, sys.argv[1])
import grpc
job = json.loads(sys.stdin.read())
with grpc.insecure_channel("unix:" + job["socket"]) as ch:
    for method, request in job["calls"]:
        try:
            out = ch.unary_unary(method)(bytes.fromhex(request), timeout=30,
                                         metadata=[("workload.spiffe.io", "true")])
            print(json.dumps([method, "OK", out.hex()]), flush=True)
        except grpc.RpcError as e:
            print(json.dumps([method, e.code().name, ""]), flush=True)
"""
_HOSTILE = st.sampled_from([
    b"poison\xff", b"\xed\xb3\xbf", b"a\\b", b"\\xff", b"\\\\", b"\x1b[31m", b"\xc0\x80",
    b"\xf4\x90\x80\x80", b"e\xcc\x81", b"\t\r", b"\xff\xfe", "\u202e".encode(), b"\x7f",
    b" (deleted)",
])
_BYTES = st.lists(st.one_of(_HOSTILE, st.binary(min_size=1, max_size=6)), min_size=1,
                  max_size=3).map(lambda ps: b"".join(ps).replace(b"/", b"_").replace(b"\0", b"_"))
_NAME = _BYTES.map(lambda b: b"x" + b[:60])  # never "." or ".."
_TEXT = st.one_of(st.text(min_size=1, max_size=16),
                  st.sampled_from(["\\udcff", "a\\b", "\\x00", "\u202e", "\x00", "\n"]))


def _jwt(header: str, payload: str) -> str:
    """A token whose JSON holds escapes like \\udcff (lone surrogates once decoded)."""
    def b64(s: str) -> str:
        return base64.urlsafe_b64encode(s.encode()).rstrip(b"=").decode()
    return f"{b64(header)}.{b64(payload)}.{b64('sig')}"


# Root asking for a fresh JWT-SVID again and again until the stop file appears; prints the jti
# of every token it received and every failure, as one JSON object.
PROBER = """
import json, os, sys, grpc, jwt
from ensign.proto import workload_pb2 as pb
sock, stop = sys.argv[1], sys.argv[2]
jtis, failures, i = [], [], 0
with grpc.insecure_channel("unix:" + sock) as ch:
    call = ch.unary_unary("/SpiffeWorkloadAPI/FetchJWTSVID")
    while not os.path.exists(stop):
        i += 1
        req = pb.JWTSVIDRequest(audience=["probe-%d" % i]).SerializeToString()
        try:
            raw = call(req, metadata=[("workload.spiffe.io", "true")], timeout=20)
        except grpc.RpcError as e:
            failures.append("%s: %s" % (e.code().name, e.details()))
            continue
        token = pb.JWTSVIDResponse.FromString(raw).svids[0].svid
        jtis.append(jwt.decode(token, options={"verify_signature": False})["jti"])
print(json.dumps({"jtis": jtis, "failures": failures}))
"""


def test_hostile_bytes_in_every_caller_field_lose_no_record(short_tmp: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("cross-uid callers need root")
    fulcio = PrivateSigstore()
    (short_tmp / "tr.json").write_text(json.dumps(fulcio.trusted_root()))
    d = make_daemon(short_tmp, "[attestors.sigstore]\nenabled = true\n"
                    f'trusted_root = "{short_tmp / "tr.json"}"\nbundle_dirs = []\n')
    d.register("root", "unix:uid:0")
    d.register("nobody", f"unix:uid:{NOBODY}")
    client = short_tmp / "client.py"
    client.write_text(CLIENT)
    client.chmod(0o644)
    site = str(nobody_site_packages())
    evil = short_tmp / "evil"
    evil.mkdir()
    os.chown(evil, NOBODY, NOBODY)
    python = os.path.realpath(sys.executable)
    mount = cgroup2_mount()
    cgroup_base = None
    if mount is not None and os.access(mount, os.W_OK) and own_cgroup() == "/":
        cgroup_base = mount / unique("ens-fuzz")
        cgroup_base.mkdir()
    callers: list[dict[str, Any]] = []
    stop = short_tmp / "stop-probing"
    prober = subprocess.Popen([sys.executable, "-c", PROBER, str(d.socket), str(stop)],
                              stdout=subprocess.PIPE, text=True)

    @FUZZ
    @given(dir_name=_NAME, exe_name=_NAME, interpreted=st.booleans(),
           args=st.lists(_BYTES, max_size=3),
           env=st.dictionaries(_NAME.map(lambda b: b.replace(b"=", b"_")), _BYTES, max_size=3),
           cgroup=st.one_of(st.none(), _NAME.map(lambda b: b.replace(b"\n", b"_"))),
           audiences=st.lists(_TEXT, min_size=1, max_size=3), spiffe_id=_TEXT)
    def one(dir_name: bytes, exe_name: bytes, interpreted: bool, args: list[bytes],
            env: dict[bytes, bytes], cgroup: bytes | None, audiences: list[str],
            spiffe_id: str) -> None:
        where = os.path.join(os.fsencode(evil), os.fsencode(unique("c")), dir_name)
        os.makedirs(where)
        target = os.path.join(where, exe_name)
        if interpreted:  # the real interpreter on a script at a hostile path
            shutil.copy(client, os.fsdecode(target))
            argv = [b"/usr/bin/python3", target, os.fsencode(site), *args]
        else:  # a copy of the interpreter at a hostile path, as its executable
            shutil.copy2(python, os.fsdecode(target))
            argv = [target, os.fsencode(client), os.fsencode(site), *args]
        for p in (where, target, os.path.dirname(where)):
            os.chown(p, NOBODY, NOBODY)
        token = _jwt('{"alg":"ES256","kid":"\\udcff\\\\","typ":"JWT"}',
                     '{"sub":"\\udcff","aud":["\\ud800"],"exp":9999999999}')
        calls = [
            ("/SpiffeWorkloadAPI/FetchJWTSVID",
             pb.JWTSVIDRequest(audience=audiences).SerializeToString().hex()),
            ("/SpiffeWorkloadAPI/FetchJWTSVID", pb.JWTSVIDRequest(
                audience=audiences, spiffe_id=spiffe_id).SerializeToString().hex()),
            ("/SpiffeWorkloadAPI/ValidateJWTSVID", pb.ValidateJWTSVIDRequest(
                audience=audiences[0], svid=token).SerializeToString().hex()),
        ]
        job = json.dumps({"socket": str(d.socket), "calls": calls})
        environ = {b"PATH": b"/usr/bin:/bin", **env}
        if cgroup is not None and cgroup_base is not None:
            cg = Path(os.fsdecode(os.path.join(os.fsencode(cgroup_base), cgroup)))
            cg.mkdir(exist_ok=True)
            proc = spawn_in(cg, [os.fsdecode(a) for a in argv], uid=NOBODY,
                            env={os.fsdecode(k): os.fsdecode(v) for k, v in environ.items()},
                            stdin=subprocess.PIPE)
        else:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=environ,
                                    user=NOBODY, group=NOBODY, extra_groups=[])
        out, err = proc.communicate(job, timeout=120)
        rows = [json.loads(line) for line in out.splitlines()]
        assert len(rows) == len(calls), err
        for method, code, _ in rows:
            assert code in ("OK", "PERMISSION_DENIED", "INVALID_ARGUMENT"), (method, code, err)
        jtis = [pyjwt.decode(s.svid, options={"verify_signature": False})["jti"]
                for m, code, raw in rows if m.endswith("FetchJWTSVID") and code == "OK"
                for s in pb.JWTSVIDResponse.FromString(bytes.fromhex(raw)).svids]
        callers.append({"pid": proc.pid, "exe": target, "interpreted": interpreted,
                        "jtis": jtis})

    try:
        one()
    finally:
        stop.touch()
        probed = json.loads(prober.communicate(timeout=120)[0])
        if cgroup_base is not None:
            for sub in cgroup_base.iterdir():
                if sub.is_dir():
                    sub.rmdir()
            cgroup_base.rmdir()
    assert probed["failures"] == [], probed["failures"][:5]
    assert probed["jtis"], "root's prober got no answer at all"
    assert d.alive()
    d.stop()
    verified = d.cli("audit", "verify", "--data-dir", str(d.data_dir), check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    records = list(read_records(d.data_dir / "audit"))
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    issued = {r["details"]["jti"] for r in records
              if r["type"] == "svid.issued" and r["details"]["kind"] == "jwt"}
    assert set(probed["jtis"]) <= issued
    attested = {r["process"]["pid"]: r["details"] for r in records if r["type"] == "attestation"}
    for c in callers:
        assert set(c["jtis"]) <= issued, c
        details = attested[c["pid"]]  # every caller's attestation is in the trail
        if not c["interpreted"]:
            path = escape(os.fsdecode(c["exe"]))
            assert unescape(path) == os.fsdecode(c["exe"])
            if not path.endswith(" (deleted)"):
                assert f"unix:path:{path}" in details["selectors"]
            assert details["evidence"]["unix.exe_path"] == path


def test_a_non_utf8_executable_path_is_a_registrable_selector(short_tmp: Path) -> None:
    """The issue's `<dir>/poison\\xff/sleep`: its `unix:path:` is `\\xff` text an admin can
    register, and the caller gets that entry's identity while root is served beside it."""
    if os.geteuid() != 0:
        pytest.skip("cross-uid callers need root")
    d = make_daemon(short_tmp)
    try:
        poison = os.path.join(os.fsencode(short_tmp), b"poison\xff")
        os.mkdir(poison)
        exe = os.path.join(poison, b"sleep")
        shutil.copy2(os.path.realpath(sys.executable), os.fsdecode(exe))
        selector = f"unix:path:{short_tmp}/poison\\xff/sleep"
        assert escape(os.fsdecode(exe)) == selector[len("unix:path:"):]
        d.register("poisoned", selector, f"unix:uid:{NOBODY}")
        d.register("root", "unix:uid:0")
        client = short_tmp / "client.py"
        client.write_text(CLIENT)
        client.chmod(0o644)
        job = json.dumps({"socket": str(d.socket), "calls": [(
            "/SpiffeWorkloadAPI/FetchJWTSVID",
            pb.JWTSVIDRequest(audience=["a"]).SerializeToString().hex())]})
        out = subprocess.run([exe, os.fsencode(client), os.fsencode(nobody_site_packages())],
                             input=job, capture_output=True, text=True, timeout=60,
                             user=NOBODY, group=NOBODY, extra_groups=[])
        _, code, raw = json.loads(out.stdout.splitlines()[0])
        assert code == "OK", out.stderr
        svid = pb.JWTSVIDResponse.FromString(bytes.fromhex(raw)).svids[0]
        assert svid.spiffe_id.startswith("spiffe://example.org/agent/")
        with grpc.insecure_channel(f"unix:{d.socket}") as ch:  # root is answered too
            ch.unary_unary("/SpiffeWorkloadAPI/FetchJWTSVID")(
                pb.JWTSVIDRequest(audience=["b"]).SerializeToString(), metadata=HEADER,
                timeout=20)
        records = json.loads(d.cli("audit", "list", "--type", "attestation", "-o",
                                   "json").stdout)
        assert any(selector in r["details"]["selectors"] for r in records)
    finally:
        if d.alive():
            d.stop()
