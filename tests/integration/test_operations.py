"""Running under systemd: the unit verifies, readiness and stopping are notified, SIGHUP
reloads, operators can see status and change the log level, and logs never hold secrets."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.clients import fetch_jwt
from tests.support.daemon import ENSIGN, REPO, Daemon

UNIT = REPO / "systemd" / "ensign.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_unit_verifies(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this checkout's entry point.
    unit = tmp_path / "ensign.service"
    unit.write_text(UNIT.read_text().replace("/usr/bin/ensign",
                                             str(Path(sys.executable).parent / "ensign")))
    out = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                         text=True)
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr


def test_notify_ready_only_when_serving_and_stopping_on_sigterm(short_tmp: Path) -> None:
    notify = short_tmp / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify))
    listener.settimeout(20)
    d = Daemon(root=short_tmp)
    d.write_config()
    proc = subprocess.Popen([*ENSIGN, "daemon", "--config", str(d.config_path)],
                            env={**os.environ, "NOTIFY_SOCKET": str(notify)},
                            stderr=subprocess.DEVNULL)
    try:
        message = listener.recv(4096).decode()
        assert "READY=1" in message
        probe = socket.socket(socket.AF_UNIX)
        probe.connect(str(d.socket))  # the socket answers by the time READY=1 arrives
        probe.close()
        proc.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in listener.recv(4096).decode()
        assert proc.wait(timeout=15) == 0
    finally:
        proc.kill()
        listener.close()


def test_sighup_reloads_log_level_and_keeps_registry(daemon: Daemon) -> None:
    rec = daemon.register("steady", "unix:uid:0")
    daemon.extra_config = ""
    daemon.config_path.write_text(daemon.config_path.read_text()
                                  .replace('log_level = "debug"', 'log_level = "error"'))
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    level = ""
    while time.monotonic() < deadline:
        level = daemon.cli("log-level").stdout.strip()
        if level == "error":
            break
        time.sleep(0.1)
    assert level == "error"
    shown = json.loads(daemon.cli("agent", "show", str(rec["id"]), "-o", "json").stdout)
    assert (shown["id"], shown["state"]) == (rec["id"], "active")
    # A broken config on reload is refused; the daemon keeps running on the old one.
    daemon.config_path.write_text("this is = = not toml")
    daemon.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert daemon.alive() and daemon.cli("healthcheck").returncode == 0
    assert daemon.cli("log-level", "info").stdout.strip() == "info"


def test_status(daemon: Daemon) -> None:
    daemon.register("one", "unix:uid:0")
    st = json.loads(daemon.cli("status", "-o", "json").stdout)
    assert st["trust_domain"] == "example.org" and st["entries"] == 1
    assert st["problem"] == "" and "unix" in st["attestors"]
    assert st["attestor_state"]["unix"].startswith("ready"), st
    assert "serving" in daemon.cli("status").stdout


def test_logs_never_hold_keys_or_tokens(daemon: Daemon, tmp_path: Path) -> None:
    daemon.register("logged", "unix:uid:0")
    tokens = [fetch_jwt(str(daemon.socket), f"a{i}").svids[0].svid for i in range(3)]
    daemon.cli("fetch", "x509", "--write", str(tmp_path))
    daemon.cli("validate", "jwt", "--audience", "a0", "--token", tokens[0])
    daemon.cli("validate", "jwt", "--audience", "wrong", "--token", tokens[0], check=False)
    daemon.stop()
    text = daemon.log.read_text()
    assert "PRIVATE KEY" not in text
    for token in tokens:
        assert token not in text and token.split(".")[2] not in text
    assert not re.search(r"eyJ[\w-]+\.eyJ[\w-]+\.[\w-]+", text)
    key_b64 = "".join((tmp_path / "svid.0.key").read_text().splitlines()[1:-1])
    assert key_b64[:40] not in text
