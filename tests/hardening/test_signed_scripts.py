"""Issue 15 item 1: an unsigned script cannot get a signed script's identity.

The five attacks of the issue, each run as uid 65534 against a daemon with Sigstore attestation
and an entry that requires the signed `agent.py`'s identity: none gets `sigstore:identity:`
selectors (nor the identity). The script's identity is given only when a trusted launcher
started it: a process in a host system unit whose root-owned definition runs `python3 -I` on
the signed script. Misconfigured units are refused with the rule that failed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import NOBODY, Daemon, make_daemon, nobody_site_packages
from tests.support.sigstore import PrivateSigstore
from tests.support.units import cgroups, run_in, trusted_tmp, unique

IDENTITY = "https://github.com/acme/agent/.github/workflows/release.yml@refs/tags/v1.2.3"
PYTHON = "/usr/bin/python3"

# The request every script makes; prints who asked and the outcome.
CALL = """
import os, sys
sys.path.insert(0, {site!r})
import grpc
def ask(tag, sock):
    ch = grpc.insecure_channel("unix:" + sock)
    call = ch.unary_unary("/SpiffeWorkloadAPI/FetchJWTSVID")
    try:
        call(b"\\n\\x01a", metadata=[("workload.spiffe.io", "true")], timeout=20)
        print(tag, "ISSUED", os.getpid(), flush=True)
    except grpc.RpcError as e:
        print(tag, "REFUSED", e.code().name, os.getpid(), flush=True)
"""


@dataclass
class Node:
    daemon: Daemon
    trusted: Path  # root's alone, all the way up: /run/<tmp>
    signed: Path   # trusted/signed/agent.py, with its bundle beside it
    units: Path
    evil: Path     # owned by uid 65534


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    fulcio = PrivateSigstore()
    root = Path(tempfile.mkdtemp(prefix="ens", dir="/tmp"))
    root.chmod(0o755)
    trusted = trusted_tmp()
    units = trusted / "units"
    signed_dir = trusted / "signed"
    for d in (units, signed_dir):
        d.mkdir(mode=0o755)
    site = str(nobody_site_packages())
    signed = signed_dir / "agent.py"
    signed.write_text(CALL.format(site=site) + "ask('SIGNED', sys.argv[1])\n")
    signed.chmod(0o644)
    bundle = signed_dir / "agent.py.sigstore.json"
    bundle.write_text(json.dumps(fulcio.sign(signed.read_bytes(), IDENTITY)))
    bundle.chmod(0o644)
    (root / "bundles").mkdir()
    (root / "trusted_root.json").write_text(json.dumps(fulcio.trusted_root()))
    d = make_daemon(root, (
        "[attestors.sigstore]\nenabled = true\n"
        f'trusted_root = "{root / "trusted_root.json"}"\n'
        f'bundle_dirs = ["{root / "bundles"}"]\nunit_dirs = ["{units}"]\n'))
    d.register("signed-script", f"unix:uid:{NOBODY}", f"sigstore:identity:{IDENTITY}")
    evil = root / "evil"
    evil.mkdir()
    os.chown(evil, NOBODY, NOBODY)
    try:
        yield Node(d, trusted, signed, units, evil)
    finally:
        if d.alive():
            d.stop()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(trusted, ignore_errors=True)


def attestation_of(d: Daemon, pid: int) -> dict[str, Any]:
    out = d.cli("audit", "list", "--type", "attestation", "-o", "json").stdout
    found = [r for r in json.loads(out) if r["process"]["pid"] == pid]
    assert found, f"no attestation record for pid {pid}"
    return dict(found[-1]["details"])


def outcomes(text: str) -> list[tuple[str, str, int]]:
    """(tag, outcome, pid) of each request a script made."""
    rows = [line.split() for line in text.splitlines() if line.startswith(("SIGNED", "EVIL"))]
    return [(r[0], r[1], int(r[-1])) for r in rows]


def as_nobody(argv: list[str], *, cwd: str = "/", env: dict[str, str] | None = None,
              input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, input=input,
                          env=env or {"PATH": "/usr/bin:/bin"}, user=NOBODY, group=NOBODY,
                          extra_groups=[], timeout=60)


def write_as_nobody(evil: Path, path: Path, text: str) -> None:
    """Write `path` below `evil`, the file and the directories made for it owned by 65534."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    for p in (path, *path.parents):
        if p == evil:
            break
        os.chown(p, NOBODY, NOBODY)


def test_the_issues_five_attacks_get_no_signed_identity(node: Node) -> None:
    d, signed, evil = node.daemon, node.signed, node.evil
    site = str(nobody_site_packages())
    evil_code = CALL.format(site=site)
    sock = str(d.socket)
    # The unsigned agent.py, which moves the evidence the old rule read before asking.
    bad = evil / "bad" / "agent.py"
    write_as_nobody(evil, bad, evil_code + f"""
if "chdir" in sys.argv:
    os.chdir({str(signed.parent)!r})  # the relative path now names the signed script
if "swap" in sys.argv:
    os.remove({str(evil / "link")!r})  # the directory the path went through is now the signed
    os.symlink({str(signed.parent)!r}, {str(evil / "link")!r})
ask("EVIL", {sock!r})
""")
    os.symlink(bad.parent, evil / "link")
    home = evil / "home"
    version = subprocess.run([PYTHON, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    write_as_nobody(evil, home / f".local/lib/python{version}/site-packages/usercustomize.py",
                    evil_code + f"ask('EVIL', {sock!r})\n")
    attacks = {
        "cd evil; python3 agent.py (chdir to the signed dir)":
            as_nobody([PYTHON, "agent.py", sock, "chdir"], cwd=str(bad.parent)),
        "python3 -bW /signed/agent.py /evil/agent.py":
            as_nobody([PYTHON, "-bW", str(signed), str(bad), sock]),
        "python3 -i /signed/agent.py with code on stdin":
            as_nobody([PYTHON, "-i", str(signed), sock],
                      input=f"exec(open({str(bad)!r}).read())\n"),
        "python3 /evil/link/agent.py, the link repointed at the signed dir":
            as_nobody([PYTHON, str(evil / "link" / "agent.py"), sock, "swap"]),
        "HOME=/evil/home python3 /signed/agent.py (usercustomize)":
            as_nobody([PYTHON, str(signed), sock],
                      env={"PATH": "/usr/bin:/bin", "HOME": str(home)}),
    }
    for name, result in attacks.items():
        asked = outcomes(result.stdout)
        assert any(tag == "EVIL" for tag, _, _ in asked), (name, result.stdout, result.stderr)
        for tag, outcome, pid in asked:
            assert outcome == "REFUSED", (name, tag, outcome)
            details = attestation_of(d, pid)
            assert not [s for s in details["selectors"] if s.startswith("sigstore:")], name
            assert details["evidence"]["sigstore.failed_rule"] == "system-unit", name
    assert d.alive()


def run_unit(node: Node, exec_start: list[str], *, unit_text: str = "",
             argv: list[str] | None = None, env: dict[str, str] | None = None,
             prepare: Any = None) -> dict[str, Any]:
    """Define a unit whose ExecStart is `exec_start`, start `argv` (default: the same) in its
    cgroup as uid 65534, and return the outcome and the attestation's details."""
    unit = unique("ens-agent") + ".service"
    (node.units / unit).write_text(
        f"[Unit]\nDescription=test\n\n[Service]\nUser=nobody\n"
        f"ExecStart={' '.join(exec_start)}\n{unit_text}")
    (node.units / unit).chmod(0o644)
    if prepare is not None:
        prepare(node.units / unit)
    with cgroups(f"/system.slice/{unit}") as cg:
        result = run_in(cg[f"/system.slice/{unit}"], argv or exec_start, uid=NOBODY,
                        env=env if env is not None else {"PATH": "/usr/bin:/bin", "LANG": "C"})
    asked = outcomes(result.stdout)
    assert len(asked) == 1, (result.stdout, result.stderr)
    details = attestation_of(node.daemon, asked[0][2])
    return {"outcome": asked[0][1], **details}


def test_a_signed_script_launched_by_its_system_unit_gets_its_identity(node: Node) -> None:
    got = run_unit(node, [PYTHON, "-I", "-B", str(node.signed), str(node.daemon.socket)])
    assert got["outcome"] == "ISSUED"
    assert f"sigstore:identity:{IDENTITY}" in got["selectors"]
    assert "sigstore:artifact:script" in got["selectors"]
    assert got["evidence"]["sigstore.script"] == str(node.signed)
    assert got["evidence"]["sigstore.unit"].startswith("ens-agent")


def _symlink_unit(path: Path) -> None:
    real = path.with_name("real-" + path.name)
    path.rename(real)
    path.symlink_to(real)


def _drop_in(path: Path) -> None:
    (path.parent / f"{path.name}.d").mkdir()
    (path.parent / f"{path.name}.d" / "override.conf").write_text("[Service]\nNice=5\n")


@pytest.mark.parametrize(("case", "rule"), [
    ("no -I", "exec-start"),
    ("a flag not allowed", "exec-start"),
    ("PYTHONPATH in Environment=", "environment"),
    ("PYTHONSTARTUP in the process's environment", "environment"),
    ("command line differs from ExecStart", "cmdline"),
    ("script in a directory others can write", "script-path"),
    ("script through a symlink", "script-path"),
    ("unit file is a symlink", "unit-file"),
    ("unit file writable by others", "unit-file"),
    ("a drop-in applies", "unit-file"),
])
def test_a_unit_that_breaks_a_rule_gets_no_script_identity(node: Node, case: str,
                                                           rule: str) -> None:
    sock = str(node.daemon.socket)
    good = [PYTHON, "-I", str(node.signed), sock]
    kwargs: dict[str, Any] = {}
    if case == "no -I":
        start = [PYTHON, str(node.signed), sock]
    elif case == "a flag not allowed":
        start = [PYTHON, "-I", "-X", "dev", str(node.signed), sock]
    elif case == "PYTHONPATH in Environment=":
        start, kwargs["unit_text"] = good, 'Environment="PYTHONPATH=/tmp" LANG=C\n'
    elif case == "PYTHONSTARTUP in the process's environment":
        start, kwargs["env"] = good, {"PATH": "/usr/bin", "PYTHONSTARTUP": "/tmp/x.py"}
    elif case == "command line differs from ExecStart":
        start, kwargs["argv"] = good, [*good, "extra"]
    elif case == "script in a directory others can write":
        loose = Path(tempfile.mkdtemp(prefix="ens", dir="/tmp"))  # under /tmp (1777)
        loose.chmod(0o755)
        shutil.copy(node.signed, loose / "agent.py")
        shutil.copy(node.signed.with_name("agent.py.sigstore.json"), loose)
        start = [PYTHON, "-I", str(loose / "agent.py"), sock]
    elif case == "script through a symlink":
        link = node.signed.with_name("link.py")
        if not link.exists():
            link.symlink_to(node.signed)
        start = [PYTHON, "-I", str(link), sock]
    elif case == "unit file is a symlink":
        start, kwargs["prepare"] = good, _symlink_unit
    elif case == "unit file writable by others":
        start, kwargs["prepare"] = good, lambda p: p.chmod(0o666)
    else:
        start, kwargs["prepare"] = good, _drop_in
    got = run_unit(node, start, **kwargs)
    assert got["outcome"] == "REFUSED", case
    assert not [s for s in got["selectors"] if s.startswith("sigstore:identity")], case
    assert got["evidence"]["sigstore.failed_rule"] == rule, got["evidence"]
