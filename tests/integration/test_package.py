"""The .deb: `make deb`'s package installs with dpkg, places its files with the right owner and
mode, runs from /opt/ensign and serves a py-spiffe client, and leaves /var/lib/ensign on
`dpkg -r` but not on `dpkg -P`.

Installs into the real system, so it needs root; the tests run in file order and share one
install (the last one removes it). The package is purged afterwards whatever happens.
"""

from __future__ import annotations

import grp
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from spiffe import WorkloadApiClient

from tests.support.daemon import REPO, _wait_for_socket

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="installs a .deb into the system: needs root"),
    pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb is not installed"),
    # building the venv (pip, and tpm2-pytss's C extension on a cold cache) comes first
    pytest.mark.timeout(900),
]

PKG = "ensign"
VENV = Path("/opt/ensign")
STATE = Path("/var/lib/ensign")
ETC = Path("/etc/ensign")
UNIT = Path("/lib/systemd/system/ensign.service")
TMPFILES = Path("/usr/lib/tmpfiles.d/ensign.conf")
TRUSTED_ROOT = ETC / "sigstore/trusted_root.json"


def _run(*cmd: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["DEBIAN_FRONTEND"] = "noninteractive"
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, (
        f"{' '.join(cmd)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )
    return result


def _status() -> str:
    """dpkg's status of the package: "" when dpkg does not know it."""
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", PKG], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else ""


def _purge() -> None:
    if _status() and not _status().endswith("not-installed"):
        subprocess.run(["dpkg", "--purge", PKG], capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def deb() -> Path:
    """The package, built once per session by the same script as `make deb`."""
    # gzip: xz would add ~40s for a package that is thrown away
    r = subprocess.run([str(REPO / "packaging/build_deb.sh")], capture_output=True, text=True,
                       timeout=840, cwd=REPO, env={**os.environ, "ENSIGN_DEB_COMPRESS": "gzip"})
    assert r.returncode == 0, f"build_deb.sh exited {r.returncode}:\n{r.stderr[-4000:]}"
    path = Path(r.stdout.strip().splitlines()[-1])
    assert path.is_file() and path.suffix == ".deb", r.stdout
    return path


@pytest.fixture(scope="module")
def installed(deb: Path) -> Iterator[Path]:
    status = _status()
    if status and not status.endswith("not-installed"):
        pytest.fail(f"{PKG} is already on this machine ({status}); this test installs and purges "
                    f"it, which would delete {STATE}. Remove it first: dpkg --purge {PKG}")
    if STATE.exists():
        pytest.fail(f"{STATE} exists without the package; purging would delete it. Move it away.")
    try:
        grp.getgrnam(PKG)
        group_existed = True
    except KeyError:
        group_existed = False
    try:
        _run("dpkg", "--install", str(deb))
        yield deb
    finally:
        _purge()
        if not group_existed:
            subprocess.run(["groupdel", PKG], capture_output=True)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


def _owner(p: Path) -> tuple[int, int]:
    st = p.lstat()
    return st.st_uid, st.st_gid


def test_control_fields(installed: Path) -> None:
    fields = _run("dpkg-deb", "--field", str(installed), "Depends", "Suggests").stdout
    depends = re.search(r"^Depends: (.*)$", fields, re.M)
    suggests = re.search(r"^Suggests: (.*)$", fields, re.M)
    assert depends and suggests, fields
    deps = [d.strip() for d in depends.group(1).split(",")]
    assert "python3 (>= 3.11)" in deps
    assert "libtss2-esys-3.0.2-0 | libtss2-esys0" in deps
    # the venv links to one interpreter: the package must pull exactly that one in
    python = (VENV / "bin/python3").resolve().name
    assert python in deps, (python, deps)
    assert {s.strip() for s in suggests.group(1).split(",")} >= {"swtpm", "tpm2-tools"}
    conffiles = _run("dpkg-query", "-W", "-f=${Conffiles}", PKG).stdout
    assert "/etc/ensign/ensign.toml " in conffiles
    assert str(TRUSTED_ROOT) + " " in conffiles


def test_files_owner_and_mode(installed: Path) -> None:
    listed = [Path(line) for line in _run("dpkg", "-L", PKG).stdout.splitlines()
              if line.startswith("/") and line != "/."]
    assert listed
    for p in listed:
        if not p.exists() and not p.is_symlink():
            # dpkg lists shared directories such as /etc that it did not create
            raise AssertionError(f"{p} is listed by dpkg but missing")
        assert _owner(p) == (0, 0), f"{p} is owned by {_owner(p)}"
        mode = _mode(p)
        if p.is_symlink():
            continue
        assert not mode & (stat.S_IWGRP | stat.S_IWOTH), f"{p} is writable by others: {mode:o}"
        assert not mode & (stat.S_ISUID | stat.S_ISGID), f"{p} is set-id: {mode:o}"
        if p.is_dir():
            assert mode == 0o755, f"{p}: {mode:o}"

    # the app: a venv at its final path, the only executables its entry points
    assert os.readlink("/usr/bin/ensign") == str(VENV / "bin/ensign")
    assert _mode(VENV / "bin/ensign") == 0o755
    assert (VENV / "bin/ensign").read_text().startswith(f"#!{VENV}/bin/python\n")
    cfg = (VENV / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = false" in cfg
    where = _run(str(VENV / "bin/python"), "-c",
                 "import ensign.daemon, sys; print(ensign.daemon.__file__); print(sys.prefix)")
    module, prefix = where.stdout.split()
    assert module.startswith(f"{VENV}/lib/") and prefix == str(VENV), where.stdout
    libs = [p for p in (VENV / "lib").rglob("*") if p.is_file() and not p.is_symlink()]
    assert all(_mode(p) == 0o644 for p in libs if "__pycache__" not in p.parts)

    for path, text in ((UNIT, REPO / "systemd/ensign.service"),
                       (TMPFILES, REPO / "systemd/ensign.tmpfiles"),
                       (ETC / "ensign.toml", REPO / "packaging/ensign.toml")):
        assert _mode(path) == 0o644 and _owner(path) == (0, 0), path
        assert path.read_text() == text.read_text(), f"{path} differs from {text}"
    assert _mode(ETC) == 0o755

    # Sigstore's public-good production root, as the sigstore package ships it
    root = json.loads(TRUSTED_ROOT.read_text())
    assert _mode(TRUSTED_ROOT) == 0o644
    assert root["mediaType"].startswith("application/vnd.dev.sigstore.trustedroot")
    assert any("rekor.sigstore.dev" in t["baseUrl"] for t in root["tlogs"])

    # state (CA keys, registry, audit) is root's alone; members of the group use the admin socket
    assert _mode(STATE) == 0o700 and _owner(STATE) == (0, 0)
    assert grp.getgrnam(PKG).gr_gid < 1000


def test_installed_daemon_serves_py_spiffe(installed: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="ensdeb", dir="/tmp"))
    proc: subprocess.Popen[bytes] | None = None
    log = tmp / "daemon.log"
    log_text = ""
    try:
        tmp.chmod(0o755)
        sock, admin, data = tmp / "agent.sock", tmp / "admin.sock", tmp / "data"
        text = (ETC / "ensign.toml").read_text()
        for key, value in (("socket_path", sock), ("admin_socket_path", admin),
                           ("data_dir", data)):
            text, n = re.subn(rf'^{key} = ".*"$', f'{key} = "{value}"', text, flags=re.M)
            assert n == 1, key
        config = tmp / "ensign.toml"
        config.write_text(text)
        assert tomllib.loads(text)["data_dir"] == str(data)

        env = {k: v for k, v in os.environ.items()
               if k not in ("VIRTUAL_ENV", "PYTHONPATH", "SPIFFE_ENDPOINT_SOCKET",
                            "ENSIGN_ADMIN_SOCKET", "ENSIGN_CONFIG")}
        with log.open("wb") as out:
            proc = subprocess.Popen(["/usr/bin/ensign", "daemon", "--config", str(config)],
                                    stdout=out, stderr=subprocess.STDOUT, cwd=tmp, env=env)
        _wait_for_socket(sock, proc, log, timeout=30)
        _wait_for_socket(admin, proc, log, timeout=30)

        reg = subprocess.run(
            ["/usr/bin/ensign", "agent", "register", "--name", "t", "--owner", "o",
             "--selector", "unix:uid:0", "--admin-socket", f"unix://{admin}", "-o", "json"],
            capture_output=True, text=True, timeout=30, env=env)
        assert reg.returncode == 0, f"{reg.stderr}\n{log.read_text(errors='replace')}"
        agent = json.loads(reg.stdout)

        with WorkloadApiClient(socket_path=f"unix://{sock}") as client:
            svid = client.fetch_x509_svid()
        assert str(svid.spiffe_id) == agent["spiffe_id"]
        assert str(svid.spiffe_id).startswith("spiffe://example.org/")

        # the daemon made its data directories and keys private (run, as here, under umask 022)
        keys = [data / "ca/state.json", *data.rglob("*.pem")]
        assert len(keys) >= 2, sorted(data.rglob("*"))
        for p in [data, *data.rglob("*")]:
            if p.is_dir():
                assert _mode(p) == 0o700, f"{p}: {_mode(p):o}"
        for p in keys:
            assert _mode(p) == 0o600 and _owner(p) == (0, 0), f"{p}: {_mode(p):o}"
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if log.exists():
            log_text = log.read_text(errors="replace")
        shutil.rmtree(tmp, ignore_errors=True)
    assert proc.returncode == 0, f"daemon exited {proc.returncode}:\n{log_text}"


def test_remove_keeps_state_and_purge_deletes_it(installed: Path) -> None:
    marker = STATE / "ca-state-stand-in"
    marker.write_text("kept across dpkg -r\n")
    _run("dpkg", "--remove", PKG)
    assert _status() == "deinstall ok config-files"
    for gone in (VENV, Path("/usr/bin/ensign"), UNIT, TMPFILES):
        assert not gone.exists() and not gone.is_symlink(), f"{gone} survived dpkg -r"
    assert marker.read_text() == "kept across dpkg -r\n"
    assert _mode(STATE) == 0o700
    assert (ETC / "ensign.toml").exists(), "conffiles stay until purge"

    _run("dpkg", "--purge", PKG)
    assert _status() in ("", "unknown ok not-installed")
    assert not STATE.exists(), f"{STATE} survived dpkg -P"
    assert not ETC.exists(), f"{ETC} survived dpkg -P"
