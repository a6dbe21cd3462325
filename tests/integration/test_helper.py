"""`ensign helper` against a real daemon: files openssl accepts, rewrites on rotation with a
signal each time, surviving a daemon kill and restart, config files, unsafe directories."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from tests.support.daemon import ENSIGN, NOBODY, Daemon, make_daemon

COUNTER = """
import signal, sys, time
out = open(sys.argv[1], "a", buffering=1)
signal.signal(signal.SIGHUP, lambda *_: out.write("HUP\\n"))
while True:
    time.sleep(1)
"""


@pytest.fixture(scope="module")
def d(shared_daemon: Daemon) -> Daemon:
    shared_daemon.register("helped", "unix:uid:0")
    return shared_daemon


@pytest.fixture
def rotating(short_tmp: Path) -> Iterator[Daemon]:
    d = make_daemon(short_tmp, '[svid]\nx509_ttl = "6s"\n')  # rotation every ~3 s
    d.register("helped", "unix:uid:0")
    yield d
    if d.alive():
        d.stop()


def out_dir(d: Daemon, name: str = "out", mode: int = 0o700) -> Path:
    p = Path(tempfile.mkdtemp(prefix=name, dir=d.root))
    p.chmod(mode)
    return p


def serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def openssl_verify(out: Path) -> str:
    return subprocess.run(["openssl", "verify", "-CAfile", str(out / "svid_bundle.pem"),
                           str(out / "svid.pem")], capture_output=True, text=True).stdout


def wait_for(predicate: Callable[[], bool], bound: float = 40) -> bool:
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_once_writes_files_that_openssl_and_the_daemon_accept(d: Daemon) -> None:
    out = out_dir(d)
    r = d.cli("helper", "--once", "--write", str(out), "--jwt-audience", "db",
              "--jwt-audience", "api")
    assert r.stderr.count("ensign helper: wrote") == 3
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert modes == {"svid.pem": 0o644, "svid_bundle.pem": 0o644, "svid_key.pem": 0o600,
                     "jwt_svid.token": 0o600, "jwt_svid.2.token": 0o600}
    assert openssl_verify(out) == f"{out / 'svid.pem'}: OK\n"
    cert = x509.load_pem_x509_certificate((out / "svid.pem").read_bytes())
    key = load_pem_private_key((out / "svid_key.pem").read_bytes(), None)
    assert key.public_key() == cert.public_key()
    for name, audience in (("jwt_svid.token", "db"), ("jwt_svid.2.token", "api")):
        token = (out / name).read_text()
        v = d.cli("validate", "jwt", "--audience", audience, "--token", token)
        assert v.stdout.startswith("valid: spiffe://example.org/agent/")


def test_long_running_helper_rewrites_signals_and_outlives_a_daemon_restart(
        rotating: Daemon) -> None:
    d = rotating
    out = out_dir(d)
    hups, pid_file, log = d.root / "hups", d.root / "target.pid", d.root / "helper.log"
    target = subprocess.Popen([sys.executable, "-c", COUNTER, str(hups)])
    pid_file.write_text(f"{target.pid}\n")
    env = {**os.environ, "SPIFFE_ENDPOINT_SOCKET": d.endpoint}
    with log.open("wb") as f:
        helper = subprocess.Popen([*ENSIGN, "helper", "--write", str(out), "--signal", "SIGHUP",
                                   "--pid-file", str(pid_file)], env=env, stderr=f)
    try:
        seen: set[int] = set()

        def rotated(n: int) -> Callable[[], bool]:
            def check() -> bool:
                if (out / "svid.pem").exists():
                    seen.add(serial(out / "svid.pem"))
                return len(seen) >= n
            return check

        assert wait_for(rotated(3))  # the first SVID and two rotations
        d.stop(signal.SIGKILL)
        assert wait_for(lambda: "reconnecting" in log.read_text(), 20)
        assert helper.poll() is None  # the daemon's death is not the helper's
        before = len(seen)
        d.start()
        assert wait_for(rotated(before + 1))  # reconnected and wrote the new daemon's SVID
        assert helper.poll() is None
        assert openssl_verify(out) == f"{out / 'svid.pem'}: OK\n"
    finally:
        helper.send_signal(signal.SIGTERM)
        code = helper.wait(timeout=15)
    assert code == 0
    writes = log.read_text().count("wrote svid.pem")
    assert writes >= 4
    assert wait_for(lambda: hups.exists() and hups.read_text().count("HUP") == writes, 5)
    assert target.poll() is None
    target.kill()
    target.wait()


def test_config_file_with_spiffe_helper_keys_and_a_hook(d: Daemon) -> None:
    out = out_dir(d)
    marker = out / "hook-ran"
    cfg = d.root / "helper.conf"
    cfg.write_text(
        f'agent_address = "{d.socket}"\n'
        f'cert_dir = "{out}"\n'
        'svid_file_name = "cert.pem"\nsvid_key_file_name = "key.pem"\n'
        'svid_bundle_file_name = "ca.pem"\njwt_bundle_file_name = "jwks.json"\n'
        'jwt_svids = [{jwt_audience = "db", jwt_svid_file_name = "db.jwt"}]\n'
        'daemon_mode = false\ncert_file_mode = 0o640\n'
        'cmd = "/bin/sh"\n'
        f"cmd_args = \"-c 'test -s {out}/cert.pem && echo ok > {marker}'\"\n")
    d.cli("helper", "--config", str(cfg))
    names = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert names == {"cert.pem": 0o640, "ca.pem": 0o640, "key.pem": 0o600, "db.jwt": 0o600,
                     "jwks.json": 0o600, "hook-ran": names["hook-ran"]}
    assert marker.read_text() == "ok\n"  # the hook ran after the files were in place
    assert b'"keys"' in (out / "jwks.json").read_bytes()

    cfg.write_text(f'cert_dir = "{out}"\nsvid_filename = "x.pem"\n')
    r = d.cli("helper", "--config", str(cfg), check=False)
    assert r.returncode == 78
    assert r.stderr.strip().splitlines() == [
        f"ensign: {cfg}: svid_filename: unknown key"]


@pytest.mark.parametrize(("mode", "owner", "ok"), [
    (0o777, 0, False), (0o1777, NOBODY, False), (0o1777, 0, True), (0o755, 0, True),
    (0o775, 0, False), (0o755, NOBODY, False)])
def test_directories_others_can_write_are_refused(d: Daemon, mode: int, owner: int,
                                                  ok: bool) -> None:
    out = out_dir(d, "shared", mode)
    os.chown(out, owner, owner)
    r = d.cli("helper", "--once", "--write", str(out), check=False)
    if ok:
        assert r.returncode == 0 and (out / "svid.pem").exists()
    else:
        assert r.returncode == 77
        reason = (f"belongs to uid {owner}, not to you or root; use a directory only you can "
                  "write" if owner != 0 else
                  "writable by others; use a directory only this user can write (or a sticky "
                  "one it owns)")
        assert r.stderr.strip().splitlines() == [f"ensign: {out}: {reason}"]
        assert list(out.iterdir()) == []


def test_bad_input_is_one_line_and_an_exit_code(d: Daemon) -> None:
    out = out_dir(d)
    cases = [
        (["--once", "--write", str(out), "--socket", str(d.root / "nope.sock")], 69,
         "no daemon socket"),
        (["--once"], 64, "where to write"),
        (["--write", str(out), "--pid-file", "/x"], 64, "--pid-file needs --signal"),
        (["--write", str(out), "--signal", "SIGNOPE", "--pid-file", "/x"], 64,
         "unknown signal"),
        (["--once", "--write", str(out / "missing")], 64, "no such directory"),
    ]
    for args, code, text in cases:
        r = d.cli("helper", *args, check=False)
        assert r.returncode == code, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and text in r.stderr, r.stderr
