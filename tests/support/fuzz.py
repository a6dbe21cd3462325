"""Generated input for the fuzz suites (protobuf messages from descriptors, config documents,
CLI argument lists) and the checks of what a user would notice: a status that names a client
problem, a documented exit code with one line on stderr, a daemon still serving."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
from google.protobuf import descriptor as d_
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tests.support.daemon import REPO, Daemon
from tests.support.hardening import healthy, soak

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


# -- checks ----------------------------------------------------------------------------------

def serving(d: Daemon) -> None:
    assert d.alive(), f"daemon died:\n{d.log.read_text()[-3000:]}"
    assert healthy(d), "daemon stopped serving"


def check_status(code: grpc.StatusCode, details: str, what: str) -> None:
    if what.startswith("/ensign.attestation.v1.") and code == grpc.StatusCode.UNAVAILABLE:
        assert "TPM" in details, details  # this node has no TPM
        return
    assert code in SENSIBLE, f"{what}: {code.name} {details!r}"


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
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for f in desc.fields:
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            key = _SCALARS[f.message_type.fields_by_name["key"].type]
            vf = f.message_type.fields_by_name["value"]
            if vf.message_type is not None:
                continue
            fields[f.name] = st.dictionaries(key, _SCALARS[vf.type], max_size=4)
            continue
        one: st.SearchStrategy[Any]
        if f.message_type is not None:
            if depth >= 2:
                continue
            one = _nested(f.message_type, depth + 1)
        elif f.type == _T.TYPE_ENUM:
            assert f.enum_type is not None
            one = st.sampled_from([v.number for v in f.enum_type.values])
        else:
            one = _SCALARS[f.type]
        fields[f.name] = st.lists(one, max_size=4) if f.is_repeated else one

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        values = {}
        for name, strategy in fields.items():
            if draw(st.booleans()):
                values[name] = draw(strategy)
        return cls(**values)

    return build()


def _nested(desc: d_.Descriptor, depth: int) -> st.SearchStrategy[Message]:
    return st.deferred(lambda: messages(desc, depth))


def methods(*modules: ModuleType) -> list[tuple[str, d_.MethodDescriptor]]:
    """(full method path, descriptor) of every RPC of the services in these _pb2 modules."""
    out = []
    for module in modules:
        for service in module.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                out.append((f"/{service.full_name}/{m.name}", m))
    return out


# -- config files ----------------------------------------------------------------------------

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
    """The shipped config with up to four values replaced, sometimes an unknown key, and
    sometimes no TOML at all."""
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


# -- the CLI, many runs per interpreter -------------------------------------------------------

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
    results = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(results) == len(argvs), out.stderr
    return results


def assert_cli_result(r: dict[str, Any]) -> int:
    """A documented exit code, no traceback, one `ensign…` line on stderr when refused; the
    exit code."""
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
    return code
