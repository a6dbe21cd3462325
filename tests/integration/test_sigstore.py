"""Sigstore attestation of agent builds, against a private trust root, and verify-artifact."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ensign.attestors._files import Refused, open_trusted
from ensign.attestors._launcher import (
    ScriptRefused,
    assigned_names,
    env_file_names,
    exec_start,
    interpreter_kind,
    launched_script,
    parse_service,
    script_of,
)
from tests.support.daemon import NOBODY, REPO, Daemon, make_daemon
from tests.support.exe import copy_exe, run_exe
from tests.support.exe import tampered as tampered_bytes
from tests.support.sigstore import GHA, OID_REPOSITORY, SCT_LEAF_INDEX, PrivateSigstore
from tests.support.units import trusted_tmp

IDENTITY = "https://github.com/acme/agent/.github/workflows/release.yml@refs/tags/v1.2.3"
OTHER = "https://github.com/mallory/agent/.github/workflows/release.yml@refs/tags/v6.6.6"
SHARED = REPO.parent / "shared" / "sigstore-assets"


@pytest.fixture(scope="module")
def fulcio() -> PrivateSigstore:
    return PrivateSigstore()


def _sigstore_daemon(
    root: Path, fulcio: PrivateSigstore, trusted_root: bytes | None = None
) -> Daemon:
    (root / "bundles").mkdir(exist_ok=True)
    tr = root / "trusted_root.json"
    tr.write_bytes(
        trusted_root if trusted_root is not None else json.dumps(fulcio.trusted_root()).encode()
    )
    return make_daemon(
        root,
        "[attestors.sigstore]\nenabled = true\n"
        f'trusted_root = "{tr}"\nbundle_dirs = ["{root / "bundles"}"]\n',
    )


def _evidence_of(d: Daemon, pid_hint: str = "") -> list[dict[str, Any]]:
    out = d.cli("audit", "list", "--type", "attestation", "-o", "json").stdout
    return [r["details"]["evidence"] for r in json.loads(out)]


def test_signed_binary_gets_an_identity_and_variants_do_not(
    short_tmp: Path, fulcio: PrivateSigstore
) -> None:
    d = _sigstore_daemon(short_tmp, fulcio)
    try:
        d.register(
            "signed-agent", "unix:uid:0", f"sigstore:identity:{IDENTITY}", f"sigstore:issuer:{GHA}"
        )
        bins = short_tmp / "bin"
        bins.mkdir(mode=0o755)
        signed = copy_exe(bins / "agent")
        data = signed.read_bytes()
        (bins / "agent.sigstore.json").write_text(
            json.dumps(
                fulcio.sign(data, IDENTITY, extra={OID_REPOSITORY: "https://github.com/acme/agent"})
            )
        )
        unsigned = copy_exe(bins / "agent-unsigned")
        tampered = bins / "agent-tampered"
        tampered.write_bytes(tampered_bytes(data))
        tampered.chmod(0o755)
        shutil.copy(bins / "agent.sigstore.json", bins / "agent-tampered.sigstore.json")
        other = copy_exe(bins / "agent-other")
        (bins / "agent-other.sigstore.json").write_text(json.dumps(fulcio.sign(data, OTHER)))
        wrong = copy_exe(bins / "agent-wrongbundle")
        (bins / "agent-wrongbundle.sigstore.json").write_text(
            json.dumps(fulcio.sign(b"some other build", IDENTITY))
        )

        assert run_exe(signed, d) == "ISSUED"
        for exe in (unsigned, tampered, other, wrong):
            assert run_exe(exe, d) == "REFUSED PERMISSION_DENIED", exe.name
        evidence = _evidence_of(d)
        by_path = {e.get("unix.exe_path"): e for e in evidence}
        assert "no Sigstore bundle" in by_path[str(unsigned)]["sigstore.error"]
        assert by_path[str(tampered)]["sigstore.failed_check"] == "artifact-digest"
        assert by_path[str(wrong)]["sigstore.failed_check"] == "artifact-digest"
        assert by_path[str(other)]["sigstore.signer"] == OTHER  # verified, wrong signer
        assert by_path[str(signed)]["sigstore.signer"] == IDENTITY
        denials = d.audit("--type", "request.denied")
        assert len(denials) == 4 and all("sigstore" in json.dumps(r) for r in denials), denials
        assert d.alive()
    finally:
        d.stop()


def test_rekor_v2_builds_get_identities_offline(short_tmp: Path, fulcio: PrivateSigstore) -> None:
    """What signers produce since the production root lists a Rekor v2 log: entries without
    an integrated time (time from an RFC 3161 timestamp), checkpoints with witness
    cosignatures, SCTs with extensions, DSSE provenance logged as dsse/0.0.2; the trust root
    given as a ClientTrustConfig. Crashed the attestor (integrated_time None) before."""
    (short_tmp / "bundles").mkdir()
    config = short_tmp / "trust_config.json"
    config.write_text(json.dumps(fulcio.client_trust_config()))
    d = make_daemon(
        short_tmp,
        "[attestors.sigstore]\nenabled = true\n"
        f'trusted_root = "{config}"\nbundle_dirs = ["{short_tmp / "bundles"}"]\n',
    )
    try:
        d.register("v2-agent", "unix:uid:0", f"sigstore:identity:{IDENTITY}",
                   "sigstore:repository:https://github.com/acme/agent")
        d.register("provenance-agent", "unix:uid:0",
                   "sigstore:builder:https://github.com/actions/runner")
        bins = short_tmp / "bin"
        bins.mkdir(mode=0o755)
        signed = copy_exe(bins / "agent")
        data = signed.read_bytes()
        (bins / "agent.sigstore.json").write_text(json.dumps(fulcio.sign(
            data, IDENTITY, extra={OID_REPOSITORY: "https://github.com/acme/agent"},
            rekor="v2", witnesses=2, sct_extensions=SCT_LEAF_INDEX, embed_tsa_cert=False)))
        built = copy_exe(bins / "built")
        built.write_bytes(data + b"\0")  # another build: its own digest
        built.chmod(0o755)
        digest = hashlib.sha256(built.read_bytes()).hexdigest()
        (short_tmp / "bundles" / f"{digest}.sigstore.json").write_text(json.dumps(fulcio.attest(
            built.read_bytes(), "built", OTHER, "https://github.com/actions/runner",
            rekor="v2", entry="dsse")))
        tampered = bins / "tampered"
        tampered.write_bytes(data[:-1] + bytes([data[-1] ^ 0x01]))
        tampered.chmod(0o755)
        shutil.copy(bins / "agent.sigstore.json", bins / "tampered.sigstore.json")

        assert run_exe(signed, d) == "ISSUED"
        assert run_exe(built, d) == "ISSUED"
        assert run_exe(tampered, d) == "REFUSED PERMISSION_DENIED"
        by_path = {e.get("unix.exe_path"): e for e in _evidence_of(d)}
        assert by_path[str(signed)]["sigstore.signer"] == IDENTITY
        assert by_path[str(built)]["sigstore.signer"] == OTHER
        assert by_path[str(tampered)]["sigstore.failed_check"] == "artifact-digest"
        assert d.alive()
    finally:
        d.stop()


# -- scripts: the launcher's rules, piece by piece (the attacks: hardening/test_signed_scripts)


@pytest.mark.parametrize(("argv", "script"), [
    (["/usr/bin/python3", "-I", "/opt/a/agent.py"], "/opt/a/agent.py"),
    (["/usr/bin/python3", "-I", "-s", "-E", "-B", "-P", "-u", "-O", "/a.py", "x", "-c"], "/a.py"),
    (["/usr/bin/python3", "-B", "-I", "/a.py"], "/a.py"),
    (["/usr/bin/python3", "-I"], "no script"),
    (["/usr/bin/python3", "/a.py"], "-I"),  # not isolated: user site, PYTHON* variables
    (["/usr/bin/python3", "-IB", "/a.py"], "-IB"),  # flags only as words of their own
    (["/usr/bin/python3", "-I", "-bW", "/signed.py", "/evil.py"], "-bW"),
    (["/usr/bin/python3", "-I", "-i", "/a.py"], "-i"),
    (["/usr/bin/python3", "-I", "-c", "print(1)"], "-c"),
    (["/usr/bin/python3", "-I", "-m", "agent"], "-m"),
    (["/usr/bin/python3", "-I", "-X", "dev", "/a.py"], "-X"),
    (["/usr/bin/python3", "-I", "agent.py"], "not a plain absolute path"),
    (["/usr/bin/python3", "-I", "/a/../evil/agent.py"], "not a plain absolute path"),
    (["/usr/bin/python3", "-I", "/a//agent.py"], "not a plain absolute path"),
    (["/usr/bin/node", "/srv/agent.js", "--port=1"], "/srv/agent.js"),
    (["/usr/bin/node", "-r", "/evil.js", "/srv/agent.js"], "flags are not allowed"),
    (["/usr/bin/node", "--import", "/evil.mjs", "/srv/agent.js"], "flags are not allowed"),
])
def test_only_allowed_interpreter_flags_and_an_absolute_script(argv: list[str],
                                                               script: str) -> None:
    kind = interpreter_kind(argv[0])
    assert kind in ("python", "node")
    if script.startswith("/"):
        assert script_of(argv, kind) == script
    else:
        with pytest.raises(ScriptRefused) as e:
            script_of(argv, kind)
        assert e.value.rule == "exec-start" and script in str(e.value)


@pytest.mark.parametrize(("text", "why"), [
    ("[Service]\nExecStart=/usr/bin/python3 -I /a.py\nExecStart=/usr/bin/python3 -I /b.py\n",
     "2 ExecStart lines"),
    ("[Service]\nExecStart=-/usr/bin/python3 -I /a.py\n", "prefix"),
    ("[Service]\nExecStart=@/usr/bin/python3 x -I /a.py\n", "prefix"),
    ("[Service]\nExecStart=python3 -I /a.py\n", "relative"),
    ("[Service]\nExecStart=/usr/bin/python3 -I /srv/%i.py\n", "specifiers"),
    ("[Service]\nExecStart=/usr/bin/python3 -I $SCRIPT\n", "variables"),
    ("[Service]\nExecStart=/usr/bin/python3 -I \"/a b.py\"\n", "quotes"),
    ("[Service]\nExecStart=/usr/bin/python3 -I \\\n  /a.py\n", "continuations"),
    ("[Service]\nExecStart=/usr/bin/python3 -I /a.py\n[Service]\nExecStart=\n", "0 ExecStart"),
    ("[Unit]\nExecStart=/usr/bin/python3 -I /a.py\n", "0 ExecStart"),
])
def test_exec_start_must_be_one_plain_command(text: str, why: str) -> None:
    with pytest.raises(ScriptRefused) as e:
        exec_start(parse_service(text))
    assert why in str(e.value)


def test_reset_and_environment_parsing() -> None:
    service = parse_service("[Service]\nExecStart=/x\nExecStart=\n"
                            "ExecStart=/usr/bin/python3 -I /a.py\n"
                            "Environment=\"PYTHONPATH=/home/u/lib\" LANG=C\n")
    assert exec_start(service) == ["/usr/bin/python3", "-I", "/a.py"]
    assert assigned_names(service["Environment"][0]) == ["PYTHONPATH", "LANG"]
    assert env_file_names("# c\nA=1\n\nNODE_OPTIONS=--require /x\n") == ["A", "NODE_OPTIONS"]
    for bad in ("export A=1\n", "A\n", "A=1 \\\n"):
        with pytest.raises(ScriptRefused):
            env_file_names(bad)


@pytest.fixture
def trusted() -> Iterator[Path]:
    d = trusted_tmp()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _walk(trusted: Path, path: Path, cap: int = 1 << 20) -> str:
    root = os.open("/", os.O_PATH | os.O_DIRECTORY)
    try:
        fd, dir_fd, _ = open_trusted(root, str(path), "script", cap)
    except Refused as e:
        return str(e)
    finally:
        os.close(root)
    os.close(fd)
    os.close(dir_fd)
    return "ok"


def test_open_trusted_refuses_what_others_could_change_or_what_blocks(trusted: Path) -> None:
    (trusted / "a").mkdir(mode=0o755)
    ok = trusted / "a" / "agent.py"
    ok.write_text("print(1)\n")
    assert _walk(trusted, ok) == "ok"
    fifo = trusted / "a" / "fifo"
    os.mkfifo(fifo)  # would block an open without O_NONBLOCK: it returns at once instead
    assert "not a regular file" in _walk(trusted, fifo)
    (trusted / "a" / "link.py").symlink_to(ok)
    assert "Too many levels of symbolic links" in _walk(trusted, trusted / "a" / "link.py")
    (trusted / "l").symlink_to(trusted / "a")
    assert "without following links" in _walk(trusted, trusted / "l" / "agent.py")
    assert "over the limit" in _walk(trusted, ok, cap=3)
    os.chown(ok, NOBODY, 0)
    assert "owned by uid 65534" in _walk(trusted, ok)
    os.chown(ok, 0, 0)
    (trusted / "a").chmod(0o775)
    assert "writable by group or others" in _walk(trusted, ok)
    (trusted / "a").chmod(0o1777)  # sticky is not enough: others could add files beside it
    assert "writable by group or others" in _walk(trusted, ok)
    assert "directory /tmp is writable by group or others" in _walk(trusted, Path("/tmp/x.py"))


def _fake_proc(trusted: Path, cgroup: str, argv: list[str], environ: bytes = b"") -> Path:
    proc = trusted / "proc"
    (proc / "7").mkdir(parents=True, exist_ok=True)
    (proc / "7" / "cgroup").write_text(f"0::{cgroup}\n")
    (proc / "7" / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in argv))
    (proc / "7" / "environ").write_bytes(environ)
    return proc


def test_launcher_rules_on_a_fake_proc(trusted: Path) -> None:
    units = trusted / "units"
    units.mkdir()
    script = trusted / "agent.py"
    script.write_text("")
    argv = ["/usr/bin/python3", "-I", str(script)]
    (units / "agent.service").write_text(f"[Service]\nExecStart={' '.join(argv)}\n")
    (units / "tmpl@.service").write_text(f"[Service]\nExecStart={' '.join(argv)}\n")
    py = os.path.realpath("/usr/bin/python3")
    interpreters = {py, os.path.realpath("/usr/bin/node")}

    def rule(cgroup: str, exe: str = py, cmd: list[str] = argv, environ: bytes = b"") -> str:
        proc = _fake_proc(trusted, cgroup, cmd, environ)
        try:
            launch = launched_script(7, exe, [units], interpreters, proc)
        except ScriptRefused as e:
            return e.rule
        return launch.script

    assert rule("/system.slice/agent.service") == str(script)
    assert rule("/system.slice/system-tmpl.slice/tmpl@x.service") == str(script)  # template
    assert rule("/user.slice/user-0.slice/user@0.service/agent.service") == "system-unit"
    assert rule("/system.slice/agent.service/sub") == "system-unit"
    assert rule("/system.slice/other.service") == "unit-file"
    assert rule("/system.slice/agent.service", exe="/usr/bin/node") == "interpreter"
    assert rule("/system.slice/agent.service", cmd=[*argv, "x"]) == "cmdline"
    assert rule("/system.slice/agent.service", cmd=argv[:1] + argv[2:]) == "cmdline"
    assert rule("/system.slice/agent.service", environ=b"A=1\0LD_PRELOAD=/x.so\0") == "environment"
    (units / "agent.service.d").mkdir()
    assert rule("/system.slice/agent.service") == str(script)  # an empty drop-in directory
    (units / "agent.service.d" / "10-x.conf").write_text("[Service]\nEnvironment=A=1\n")
    assert rule("/system.slice/agent.service") == "unit-file"
    (units / "tmpl@.service.d").mkdir()
    (units / "tmpl@.service.d" / "x.conf").write_text("")
    assert rule("/system.slice/system-tmpl.slice/tmpl@x.service") == "unit-file"


def test_bad_bundle_and_bad_trusted_root_are_clear_and_daemon_serves(
    short_tmp: Path, fulcio: PrivateSigstore
) -> None:
    d = _sigstore_daemon(short_tmp, fulcio, trusted_root=b"{not json")
    try:
        d.register("needs-sig", "unix:uid:0", f"sigstore:identity:{IDENTITY}")
        d.register("plain", "unix:uid:0", "unix:gid:0")
        bins = short_tmp / "bin"
        bins.mkdir(mode=0o755)
        exe = copy_exe(bins / "agent")
        (bins / "agent.sigstore.json").write_text("{malformed")
        assert run_exe(exe, d) == "ISSUED"  # via the plain entry; sigstore gave nothing
        evidence = [e for e in _evidence_of(d) if e.get("unix.exe_path") == str(exe)]
        assert "trusted-root: cannot load" in evidence[0]["sigstore.error"]
    finally:
        d.stop()
    second = short_tmp / "second"
    second.mkdir(mode=0o755)
    d2 = _sigstore_daemon(second, fulcio)
    try:
        d2.register("needs-sig", "unix:uid:0", f"sigstore:identity:{IDENTITY}")
        assert run_exe(exe, d2) == "REFUSED PERMISSION_DENIED"
        evidence = [e for e in _evidence_of(d2) if e.get("unix.exe_path") == str(exe)]
        assert evidence[0]["sigstore.failed_check"] == "bundle"
        assert d2.alive()
    finally:
        d2.stop()


def _verify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ensign.daemon", "verify-artifact", *args],
        capture_output=True,
        text=True,
    )


def test_verify_artifact_private_root_and_provenance(
    tmp_path: Path, fulcio: PrivateSigstore
) -> None:
    root = tmp_path / "root.json"
    root.write_text(json.dumps(fulcio.trusted_root()))
    art = tmp_path / "agent.tar"
    art.write_bytes(os.urandom(4096))
    (tmp_path / "agent.tar.sigstore.json").write_text(
        json.dumps(fulcio.sign(art.read_bytes(), IDENTITY))
    )
    ok = _verify(
        str(art),
        "--trusted-root",
        str(root),
        "--cert-identity",
        IDENTITY,
        "--cert-oidc-issuer",
        GHA,
        "-o",
        "json",
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["signer"] == IDENTITY
    regexp = _verify(
        str(art),
        "--trusted-root",
        str(root),
        "--cert-identity-regexp",
        r"https://github\.com/acme/agent/.*@refs/tags/v.*",
        "--cert-oidc-issuer",
        GHA,
    )
    assert regexp.returncode == 0, regexp.stderr
    no_prov = _verify(
        str(art),
        "--trusted-root",
        str(root),
        "--cert-identity",
        IDENTITY,
        "--cert-oidc-issuer",
        GHA,
        "--provenance",
    )
    assert no_prov.returncode == 65 and "provenance" in no_prov.stderr
    prov = tmp_path / "prov.json"
    prov.write_text(
        json.dumps(
            fulcio.attest(
                art.read_bytes(), "agent.tar", IDENTITY, "https://github.com/actions/runner"
            )
        )
    )
    ok = _verify(
        str(art),
        "--bundle",
        str(prov),
        "--trusted-root",
        str(root),
        "--cert-identity",
        IDENTITY,
        "--cert-oidc-issuer",
        GHA,
        "--provenance",
        "-o",
        "json",
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["builder"] == "https://github.com/actions/runner"
    other = tmp_path / "other.bin"
    other.write_bytes(b"other")
    wrong = _verify(
        str(other),
        "--bundle",
        str(prov),
        "--trusted-root",
        str(root),
        "--cert-identity",
        IDENTITY,
        "--cert-oidc-issuer",
        GHA,
    )
    assert wrong.returncode == 65 and "attestation-subject" in wrong.stderr
    garbage = tmp_path / "garbage.json"
    garbage.write_text("[]")
    bad_root = _verify(
        str(art),
        "--trusted-root",
        str(garbage),
        "--cert-identity",
        IDENTITY,
        "--cert-oidc-issuer",
        GHA,
    )
    assert bad_root.returncode == 65 and "trusted-root" in bad_root.stderr
    assert len(bad_root.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/sigstore-assets not present")
@pytest.mark.parametrize(
    ("variant", "identity", "issuer", "ok"),
    [
        (
            "good",
            "https://github.com/trailofbits/rfc8785.py/.github/workflows/release.yml"
            "@refs/tags/v0.1.2",
            GHA,
            True,
        ),
        (
            "tampered",
            "https://github.com/trailofbits/rfc8785.py/.github/workflows/release.yml"
            "@refs/tags/v0.1.2",
            GHA,
            False,
        ),
        (
            "good",
            "https://github.com/trailofbits/rfc8785.py/.github/workflows/release.yml"
            "@refs/tags/v9.9.9",
            GHA,
            False,
        ),
        (
            "good",
            "https://github.com/trailofbits/rfc8785.py/.github/workflows/release.yml"
            "@refs/tags/v0.1.2",
            "https://accounts.google.com",
            False,
        ),
    ],
    ids=["accepts", "tampered", "wrong-identity", "wrong-issuer"],
)
def test_verify_artifact_real_production_bundle(
    tmp_path: Path, variant: str, identity: str, issuer: str, ok: bool
) -> None:
    src = SHARED / "sigstore-python" / "bundle_v3_github.whl"
    art = tmp_path / src.name
    data = src.read_bytes()
    art.write_bytes(data if variant == "good" else data[:100] + bytes([data[100] ^ 1]) + data[101:])
    result = _verify(
        str(art),
        "--bundle",
        str(src) + ".sigstore",
        "--cert-identity",
        identity,
        "--cert-oidc-issuer",
        issuer,
    )
    assert (result.returncode == 0) is ok, result.stderr
    if not ok:
        assert result.returncode == 65 and "verification failed at" in result.stderr
