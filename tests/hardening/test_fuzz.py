"""Fuzz: hypothesis-generated input for every RPC, raw HTTP/2 garbage, oversized messages and
metadata, config files and CLI arguments.

What a user would notice is asserted: the daemon never crashes or hangs, answers with a status
that names a client problem (never UNKNOWN or INTERNAL), and keeps serving after every input;
the CLI exits with one of its documented codes and at most one line on stderr, no traceback.
Short form: modest example counts; `make soak` multiplies them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import descriptor as d_
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ensign.proto import admin_pb2, attestation_pb2, delegation_pb2, workload_pb2
from tests.support.daemon import REPO, Daemon, make_daemon
from tests.support.hardening import HEADER, call, fd_count, healthy, settle_fds, soak

EXAMPLES = soak(40, 400)
SLOW_EXAMPLES = soak(8, 60)  # each example is a process or a connection
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
SLOW = settings(FUZZ, max_examples=SLOW_EXAMPLES)

# Statuses that say "your request was refused"; UNKNOWN/INTERNAL/DEADLINE_EXCEEDED are bugs.
SENSIBLE = {
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.OUT_OF_RANGE,
}
CLI_EXITS = {0, 64, 65, 66, 69, 74, 75, 77, 78}
IDP = "https://idp.example.org"
CAL = "https://calendar.example.org/x"


# -- messages from descriptors ---------------------------------------------------------------

_T = d_.FieldDescriptor
_SCALARS: dict[int, st.SearchStrategy[Any]] = {
    _T.TYPE_STRING: st.one_of(
        st.text(max_size=40),
        st.sampled_from(["", "*", "spiffe://example.org/agent/x", "unix:uid:0", "agt_0",
                         "active", "decommissioned", "../..", "a" * 600, "30s", "-1",
                         "https://calendar.example.org/*", "\x00", "svid."]),
    ),
    _T.TYPE_BYTES: st.binary(max_size=64),
    _T.TYPE_BOOL: st.booleans(),
    _T.TYPE_INT64: st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-5, 100_000)),
    _T.TYPE_INT32: st.integers(-(2**31), 2**31 - 1),
    _T.TYPE_UINT32: st.integers(0, 2**32 - 1),
    _T.TYPE_UINT64: st.integers(0, 2**64 - 1),
    _T.TYPE_DOUBLE: st.floats(allow_nan=True),
    _T.TYPE_FLOAT: st.floats(width=32),
}


def messages(desc: d_.Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Any message of this type: every field optional, random values, bounded nesting."""
    cls = GetMessageClass(desc)
    fields = {}
    for f in desc.fields:
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            key = _SCALARS[f.message_type.fields_by_name["key"].type]
            vf = f.message_type.fields_by_name["value"]
            if vf.message_type is not None:
                continue
            fields[f.name] = st.dictionaries(key, _SCALARS[vf.type], max_size=4)
            continue
        if f.message_type is not None:
            if depth >= 2:
                continue
            one = st.deferred(lambda f=f: messages(f.message_type, depth + 1))
        elif f.type == _T.TYPE_ENUM:
            one = st.sampled_from([v.number for v in f.enum_type.values])
        else:
            one = _SCALARS[f.type]
        is_repeated = f.is_repeated
        fields[f.name] = st.lists(one, max_size=4) if is_repeated else one

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        values = {}
        for name, strategy in fields.items():
            if draw(st.booleans()):
                values[name] = draw(strategy)
        return cls(**values)

    return build()


def _methods(*modules: Any) -> list[tuple[str, d_.MethodDescriptor]]:
    out = []
    for module in modules:
        for service in module.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                out.append((f"/{service.full_name}/{m.name}", m))
    return out


WORKLOAD = _methods(workload_pb2, delegation_pb2, attestation_pb2)
ADMIN = _methods(admin_pb2)


# -- daemons ---------------------------------------------------------------------------------

def _tmp_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="ens", dir="/tmp"))
    root.chmod(0o755)
    return root


@pytest.fixture(scope="module")
def idp_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def fuzzed(idp_key: ec.EllipticCurvePrivateKey) -> Iterator[Daemon]:
    """One daemon with delegation on and an identity for this test process."""
    root = _tmp_root()
    jwk = json.loads(pyjwt.algorithms.ECAlgorithm.to_jwk(idp_key.public_key()))
    (root / "jwks.json").write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "ES256"}]}))
    d = make_daemon(root, "[delegation]\nenabled = true\n"
                          f'[[delegation.issuers]]\nissuer = "{IDP}"\n'
                          f'jwks_file = "{root / "jwks.json"}"\naudience = "ensign"\n')
    d.cli("role", "create", "fuzz", "--audience", "https://calendar.example.org/*",
          "--scope", "calendar.read", "--may-act-for-users", "--may-redelegate")
    d.register("fuzz-me", f"unix:uid:{os.getuid()}", extra=("--role", "fuzz"))
    yield d
    if d.alive():
        d.stop()
    import shutil

    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def admin_target() -> Iterator[Daemon]:
    """A daemon of its own for admin fuzzing (random registrations, applies and prunes)."""
    root = _tmp_root()
    d = make_daemon(root)
    yield d
    if d.alive():
        d.stop()
    import shutil

    shutil.rmtree(root, ignore_errors=True)


def _serving(d: Daemon) -> None:
    assert d.alive(), f"daemon died:\n{d.log.read_text()[-3000:]}"
    assert healthy(d), "daemon stopped serving"


def _check(code: grpc.StatusCode, details: str, what: str) -> None:
    if what.startswith("/ensign.attestation.v1.") and code == grpc.StatusCode.UNAVAILABLE:
        assert "no TPM" in details or "TPM" in details, details  # this node has no TPM
        return
    assert code in SENSIBLE, f"{what}: {code.name} {details!r}"


# -- every RPC, structured and raw ------------------------------------------------------------

def _invoke(d: Daemon, sock: Path, path: str, m: d_.MethodDescriptor, raw: bytes,
            metadata: tuple[tuple[str, str], ...] = HEADER) -> tuple[grpc.StatusCode, str]:
    code, details, _ = call(sock, path, raw, metadata=metadata, stream=m.server_streaming,
                            timeout=15)
    return code, details


@pytest.mark.parametrize(("path", "method"), WORKLOAD, ids=[p for p, _ in WORKLOAD])
def test_workload_socket_rpcs_survive_generated_requests(
    fuzzed: Daemon, path: str, method: d_.MethodDescriptor
) -> None:
    @FUZZ
    @given(msg=messages(method.input_type))
    def run(msg: Message) -> None:
        code, details = _invoke(fuzzed, fuzzed.socket, path, method, msg.SerializeToString())
        _check(code, details, f"{path} {msg}")

    run()
    _serving(fuzzed)


@pytest.mark.parametrize(("path", "method"), ADMIN, ids=[p for p, _ in ADMIN])
def test_admin_rpcs_survive_generated_requests(
    admin_target: Daemon, path: str, method: d_.MethodDescriptor
) -> None:
    @FUZZ
    @given(msg=messages(method.input_type))
    def run(msg: Message) -> None:
        code, details = _invoke(admin_target, admin_target.admin_socket, path, method,
                                msg.SerializeToString(), metadata=())
        _check(code, details, f"{path} {msg}")

    run()
    _serving(admin_target)


@FUZZ
@given(target=st.sampled_from(WORKLOAD + ADMIN), raw=st.binary(max_size=512))
def test_garbage_bytes_as_messages(
    fuzzed: Daemon, admin_target: Daemon, target: tuple[str, d_.MethodDescriptor], raw: bytes
) -> None:
    path, method = target
    # Admin garbage goes to the admin fuzzing daemon: bytes that decode as a valid
    # `ApplyAgents {prune: true}` are an admin's order to decommission every agent, which the
    # daemon rightly carries out, and the later tests here need `fuzzed`'s agent alive.
    d = admin_target if path.startswith("/ensign.admin") else fuzzed
    sock = d.admin_socket if d is admin_target else d.socket
    code, details = _invoke(d, sock, path, method, raw)
    _check(code, details, f"{path} {raw!r}")
    assert d.alive()


def _idp_token(key: ec.EllipticCurvePrivateKey, claims: dict[str, Any], kid: str) -> str:
    return pyjwt.encode(claims, key, algorithm="ES256", headers={"kid": kid})


_CLAIM = st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.text(max_size=20),
                   st.lists(st.text(max_size=10), max_size=3),
                   st.dictionaries(st.sampled_from(["sub", "act", "iss"]),
                                   st.text(max_size=30), max_size=3))


@FUZZ
@given(
    claims=st.dictionaries(
        st.sampled_from(["iss", "sub", "aud", "exp", "iat", "nbf", "scope", "scp", "may_act",
                         "act", "client_id", "jti"]), _CLAIM, max_size=10),
    valid_core=st.booleans(),
    kid=st.sampled_from(["k1", "k2", ""]),
    audience=st.sampled_from(["https://calendar.example.org/x", "", "x" * 300]),
    scopes=st.lists(st.sampled_from(["calendar.read", "calendar.write", "", "a b"]), max_size=3),
    ttl=st.integers(-5, 10**12),
)
def test_exchange_token_with_signed_random_claims(
    fuzzed: Daemon, idp_key: ec.EllipticCurvePrivateKey, claims: dict[str, Any],
    valid_core: bool, kid: str, audience: str, scopes: list[str], ttl: int,
) -> None:
    # Tokens really signed by the trusted IdP, so the claim checks behind the signature run.
    claims = {k: v for k, v in claims.items() if k != "iss" or isinstance(v, str)}
    if valid_core:
        now = int(time.time())
        claims = {**claims, "iss": IDP, "aud": "ensign", "exp": now + 300, "iat": now,
                  "sub": str(claims.get("sub", "alice"))}
    token = _idp_token(idp_key, claims, kid)
    req = delegation_pb2.ExchangeTokenRequest(subject_token=token, audience=audience,
                                              scopes=scopes, requested_ttl_seconds=ttl)
    code, details, raw = call(fuzzed.socket, "/ensign.delegation.v1.Delegation/ExchangeToken",
                              req.SerializeToString(), timeout=15)
    _check(code, details, f"claims {claims}")
    if code == grpc.StatusCode.OK:
        out = delegation_pb2.ExchangeTokenResponse.FromString(raw)
        granted = pyjwt.decode(out.access_token, options={"verify_signature": False})
        # Whatever the claims said, nothing beyond the role's scope is ever granted.
        assert set(granted["scope"].split()) <= {"calendar.read"}
        assert granted["act"]["sub"].startswith("spiffe://example.org/")
    assert fuzzed.alive()


# -- metadata and size ------------------------------------------------------------------------

_HKEY = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=20)
_HVAL = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=100)


@FUZZ
@given(extra=st.lists(st.tuples(_HKEY, _HVAL), max_size=6), with_header=st.booleans())
def test_random_metadata(fuzzed: Daemon, extra: list[tuple[str, str]], with_header: bool) -> None:
    md = tuple((k, v) for k, v in extra if not k.startswith("grpc-"))
    if with_header:
        md = (*md, *HEADER)
    code, details, _ = call(fuzzed.socket, "/SpiffeWorkloadAPI/FetchJWTSVID",
                            workload_pb2.JWTSVIDRequest(audience=[CAL]).SerializeToString(),
                            metadata=md)
    _check(code, details, f"metadata {md}")
    workload_ok = [v for k, v in md if k == "workload.spiffe.io"] == ["true"]
    assert (code == grpc.StatusCode.OK) == workload_ok, (md, code, details)


@pytest.mark.parametrize("size", [64 * 1024, 4 * 1024 * 1024 + 1, 16 * 1024 * 1024])
def test_oversized_messages_are_refused_and_daemon_serves(fuzzed: Daemon, size: int) -> None:
    assert fuzzed.proc is not None
    for path, raw in [
        ("/SpiffeWorkloadAPI/FetchJWTSVID",
         workload_pb2.JWTSVIDRequest(audience=["x" * size]).SerializeToString()),
        ("/SpiffeWorkloadAPI/ValidateJWTSVID",
         workload_pb2.ValidateJWTSVIDRequest(audience="a", svid="e" * size).SerializeToString()),
        ("/ensign.delegation.v1.Delegation/ExchangeToken",
         delegation_pb2.ExchangeTokenRequest(subject_token="t" * size, audience="a")
         .SerializeToString()),
    ]:
        code, details, _ = call(fuzzed.socket, path, raw, timeout=30)
        assert code in SENSIBLE - {grpc.StatusCode.OK}, (path, size, code, details)
        if len(raw) > 1024 * 1024:  # `[limits] max_request_bytes`, refused on the length prefix
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (path, size, code, details)
    _serving(fuzzed)


@pytest.mark.parametrize(("count", "size"), [(1, 16 * 1024), (1, 1024 * 1024), (2000, 20)])
def test_oversized_metadata_is_refused_and_daemon_serves(
    fuzzed: Daemon, count: int, size: int
) -> None:
    md = (*HEADER, *((f"x-pad-{i}", "v" * size) for i in range(count)))
    code, details, _ = call(fuzzed.socket, "/SpiffeWorkloadAPI/FetchJWTSVID",
                            workload_pb2.JWTSVIDRequest(audience=["a"]).SerializeToString(),
                            metadata=md, timeout=30)
    # Either refused, or (if within limits) served; never a crash or a hang.
    assert code in SENSIBLE | {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}, (
        code, details)
    _serving(fuzzed)


# -- raw HTTP/2 garbage on the socket ---------------------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return (len(payload).to_bytes(3, "big") + bytes([kind & 0xFF, flags & 0xFF])
            + (stream_id & 0x7FFFFFFF).to_bytes(4, "big") + payload)


_FRAMES = st.lists(
    st.builds(_frame, st.integers(0, 12), st.integers(0, 255), st.integers(0, 9),
              st.binary(max_size=64)),
    max_size=8,
).map(b"".join)


def _blast(path: Path, data: bytes) -> None:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(2)
    try:
        s.connect(str(path))
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        while s.recv(65536):  # the daemon must answer or close; a timeout here is a hang
            pass
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        s.close()


@SLOW
@given(prefix=st.sampled_from([b"", PREFACE, PREFACE + _frame(4, 0, 0, b"")]),
       body=st.one_of(st.binary(max_size=2048), _FRAMES),
       admin=st.booleans())
def test_raw_http2_garbage(fuzzed: Daemon, prefix: bytes, body: bytes, admin: bool) -> None:
    _blast(fuzzed.admin_socket if admin else fuzzed.socket, prefix + body)
    _serving(fuzzed)


def test_garbage_connections_leave_no_fds_behind(fuzzed: Daemon) -> None:
    assert fuzzed.proc is not None
    pid = fuzzed.proc.pid
    assert healthy(fuzzed)
    baseline = fd_count(pid)
    for i in range(soak(50, 500)):
        _blast(fuzzed.socket, PREFACE + os.urandom(i * 7 % 300))
        _blast(fuzzed.socket, os.urandom(100))
    assert settle_fds(pid, baseline) <= baseline
    _serving(fuzzed)


# -- config files and CLI arguments ----------------------------------------------------------

def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v) if v == v and v not in (float("inf"), float("-inf")) else "nan"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(v)


def to_toml(doc: dict[str, Any], prefix: str = "") -> str:
    scalars = [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in doc.items()
               if not isinstance(v, dict)]
    out = ([f"[{prefix}]"] if prefix and scalars else []) + scalars
    for k, v in doc.items():
        if isinstance(v, dict):
            out.append(to_toml(v, f"{prefix}.{json.dumps(k)}" if prefix else json.dumps(k)))
    return "\n".join(out) + "\n"


DEFAULTS = tomllib.loads((REPO / "packaging" / "ensign.toml").read_text())


def _paths(doc: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for k, v in doc.items():
        out.append((*prefix, k))
        if isinstance(v, dict):
            out.extend(_paths(v, (*prefix, k)))
    return out


_VALUE = st.one_of(st.booleans(), st.integers(-(2**70), 2**70), st.text(max_size=30),
                   st.sampled_from(["0s", "-1s", "1h", "99999999d", "ec-p256", "rsa-1024",
                                    "1GiB", "0", "", "/nonexistent/x", "127.0.0.1:0"]),
                   st.lists(st.integers(-3, 40), max_size=4), st.floats())


@st.composite
def configs(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 4)) == 0:  # not TOML at all, or broken TOML
        return draw(st.one_of(st.text(max_size=200), st.sampled_from(
            ["[ca", "trust_domain = ", "a = 1\na = 2", "[[delegation.issuers]]\nissuer = 1"])))
    doc = json.loads(json.dumps(DEFAULTS))
    doc["data_dir"] = "/nonexistent/ensign-fuzz"
    for path in draw(st.lists(st.sampled_from(_paths(DEFAULTS)), max_size=4)):
        node = doc
        for k in path[:-1]:
            node = node[k] if isinstance(node.get(k), dict) else node.setdefault(k, {})
            if not isinstance(node, dict):
                break
        else:
            node[path[-1]] = draw(_VALUE)
    if draw(st.booleans()):
        doc[draw(st.text(alphabet="abcxyz_", min_size=1, max_size=8))] = draw(_VALUE)
    return to_toml(doc)


_DRIVER = r"""
import io, json, os, signal, sys
from ensign.daemon.cli import main
for line in sys.stdin:
    argv = json.loads(line)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.dup2(w, 2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        signal.alarm(20)
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            import traceback
            traceback.print_exc()
            code = 1
        sys.stderr.flush()
        os._exit(code)
    os.close(w)
    err = b""
    while chunk := os.read(r, 65536):
        err += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"argv": argv, "status": status, "stderr": err.decode(errors="replace")}),
          flush=True)
"""


def cli_batch(d: Daemon, argvs: list[list[str]], cwd: Path) -> list[dict[str, Any]]:
    """Run the real CLI entry point once per argv, each in a forked child (a fresh process
    state, stderr captured, 20 s alarm), from one interpreter to keep the suite fast."""
    env = {**os.environ, "SPIFFE_ENDPOINT_SOCKET": d.endpoint,
           "ENSIGN_ADMIN_SOCKET": f"unix://{d.admin_socket}"}
    env.pop("ENSIGN_CONFIG", None)
    out = subprocess.run([sys.executable, "-c", _DRIVER], input="".join(
        json.dumps(a) + "\n" for a in argvs), capture_output=True, text=True, env=env,
        cwd=cwd, timeout=60 + 25 * len(argvs))
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def _assert_cli_result(r: dict[str, Any]) -> None:
    status = r["status"]
    assert os.WIFEXITED(status), f"{r['argv']}: killed by signal (hang?) {status}"
    code = os.WEXITSTATUS(status)
    err = r["stderr"]
    assert "Traceback" not in err, f"{r['argv']}: traceback\n{err}"
    assert code in CLI_EXITS, f"{r['argv']}: exit {code}: {err}"
    if code != 0:
        lines = err.strip("\n").split("\n")
        assert len(lines) == 1 and lines[0].startswith("ensign"), (
            f"{r['argv']}: stderr is not one line: {err!r}")


@SLOW
@given(docs=st.lists(configs(), min_size=5, max_size=5))
def test_config_check_on_generated_files(fuzzed: Daemon, docs: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        argvs = []
        for i, text in enumerate(docs):
            p = Path(tmp) / f"c{i}.toml"
            p.write_text(text)
            argvs.append(["config", "check", "--config", str(p)])
        for r in cli_batch(fuzzed, argvs, Path(tmp)):
            _assert_cli_result(r)
            if os.WEXITSTATUS(r["status"]) != 0:
                assert os.WEXITSTATUS(r["status"]) == 78, r


def test_config_check_defaults_pass(fuzzed: Daemon) -> None:
    [r] = cli_batch(fuzzed, [["config", "check", "--config",
                              str(REPO / "packaging" / "ensign.toml")]], REPO)
    assert os.WEXITSTATUS(r["status"]) == 0, r


# Every command but the ones that run forever by design (`daemon`, `watch`).
COMMANDS = [
    ["config", "check"], ["config", "defaults"], ["fetch", "x509"], ["fetch", "jwt"],
    ["fetch", "bundles"], ["validate", "jwt"], ["healthcheck"], ["agent", "register"],
    ["agent", "list"], ["agent", "show"], ["agent", "update"], ["agent", "delete"],
    ["agent", "suspend"], ["agent", "resume"], ["agent", "decommission"], ["agent", "apply"],
    ["role", "create"], ["role", "list"], ["role", "show"], ["role", "update"],
    ["role", "delete"], ["audit", "list"], ["audit", "export"], ["audit", "verify"],
    ["token", "exchange"], ["token", "verify"], ["token", "inspect"],
    ["delegation", "grant"], ["delegation", "revoke"], ["delegation", "list"],
    ["anomaly", "list"], ["status"], ["log-level"], ["verify-artifact"], ["tpm", "challenge"],
    ["tpm", "verify-evidence"],
]  # `tpm status|quote|policy` without a TPM: see test_tpm_commands_without_a_tpm_exit_cleanly
FLAGS = ["--name", "--selector", "--owner", "--audience", "--token", "--spiffe-id", "--kind",
         "--scope", "--ttl", "--x509-ttl", "--jwt-ttl", "--expires-at", "--since", "--until",
         "--limit", "--type", "--format", "--output", "-o", "--data-dir", "--config",
         "--reason", "--bundle", "--nonce", "--file", "--subject-token", "--metadata",
         "--max-ttl", "--agent", "--subject", "--issuer", "--from-checkpoint", "--timeout"]
_ARG = st.one_of(
    st.sampled_from(FLAGS),
    st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
            max_size=20),
    st.sampled_from(["json", "text", "jsonl", "ocsf", "-", "unix:uid:0", "1s", "-1s", "agt_x",
                     "2026-13-45T99:00:00Z", "spiffe://", "../../etc/passwd", "nan", "1e999",
                     "99999999999d", "4000d", "99999999999999999999999", "-1"]),
)
argvs = st.one_of(
    st.tuples(st.sampled_from(COMMANDS), st.lists(_ARG, max_size=6)).map(lambda t: t[0] + t[1]),
    st.lists(_ARG, max_size=5),
)


@SLOW
@given(batch=st.lists(argvs, min_size=6, max_size=6))
def test_cli_arguments(fuzzed: Daemon, batch: list[list[str]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for r in cli_batch(fuzzed, batch, Path(tmp)):
            _assert_cli_result(r)
    _serving(fuzzed)


@pytest.mark.parametrize("argv", [["tpm", "status"], ["tpm", "policy", "--out", "/dev/null"],
                                  ["tpm", "quote", "--nonce", "00" * 16, "--out", "/dev/null"]])
def test_tpm_commands_without_a_tpm_exit_cleanly(fuzzed: Daemon, argv: list[str],
                                                 tmp_path: Path) -> None:
    [r] = cli_batch(fuzzed, [argv], tmp_path)
    _assert_cli_result(r)
    assert os.WEXITSTATUS(r["status"]) == 69 and "tpm" in r["stderr"].lower(), r


@pytest.mark.parametrize("argv", [
    ["audit", "list", "--limit", "99999999999999999999999"],
    ["audit", "verify", "--from-checkpoint", "-1"],
    ["token", "exchange", "--audience", "a", "--ttl", "99999999999d"],
    ["role", "create", "r", "--audience", "a", "--max-ttl", "99999999999999999999s"],
    ["audit", "export", "--format", "ocsf", "--since", "99999999d"],
], ids=["limit", "checkpoint", "ttl", "max-ttl", "since"])
def test_out_of_range_numbers_are_one_line_usage_errors(fuzzed: Daemon, argv: list[str],
                                                        tmp_path: Path) -> None:
    # These printed a traceback (int64 overflow in protobuf, timedelta overflow) before.
    [r] = cli_batch(fuzzed, [argv], tmp_path)
    _assert_cli_result(r)
    assert os.WEXITSTATUS(r["status"]) == 64, r
    assert "out of range" in r["stderr"] or "too long" in r["stderr"], r
