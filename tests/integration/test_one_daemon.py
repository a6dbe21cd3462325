"""One daemon per data directory: a second one started on the same state exits 78 naming the
running one and changes nothing (its swtpm, its audit chain, its sockets, its env file)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.support.cli import one_line_error
from tests.support.daemon import ENSIGN, Daemon, _wait_for_socket, make_daemon


def _inode(path: Path) -> tuple[int, int]:
    st = path.lstat()
    return st.st_dev, st.st_ino


def _audit_bytes(data_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((data_dir / "audit").iterdir())}


def _only_grew(before: dict[str, bytes], after: dict[str, bytes]) -> bool:
    """The first daemon may append its own records meanwhile; nothing else changed."""
    return before.keys() <= after.keys() and all(after[k].startswith(v)
                                                  for k, v in before.items())


def _second(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ENSIGN, "daemon", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=60)


def test_second_dev_daemon_on_one_state_dir_exits_78_and_changes_nothing(
        short_tmp: Path) -> None:
    state = short_tmp / "s"
    log = (short_tmp / "first.log").open("wb")
    first = subprocess.Popen([*ENSIGN, "daemon", "--dev", "--state-dir", str(state)],
                             stdout=log, stderr=subprocess.STDOUT, cwd=short_tmp)
    try:
        _wait_for_socket(state / "agent.sock", first, short_tmp / "first.log", timeout=60)
        _wait_for_socket(state / "admin.sock", first, short_tmp / "first.log", timeout=60)
        deadline = time.monotonic() + 60  # dev mode writes env once both sockets serve
        while not (state / "env").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        env = {**os.environ, "SPIFFE_ENDPOINT_SOCKET": f"unix://{state}/agent.sock",
               "ENSIGN_ADMIN_SOCKET": f"unix://{state}/admin.sock"}
        swtpm_pidfile = state / "data" / "tpm" / "swtpm.pid"
        swtpm = int(swtpm_pidfile.read_text()) if swtpm_pidfile.exists() else None
        sockets = {n: _inode(state / n) for n in ("agent.sock", "admin.sock")}
        env_file = (state / "env").stat()
        audit = _audit_bytes(state / "data")

        second = _second("--dev", "--state-dir", str(state), cwd=short_tmp)

        assert f"pid {first.pid}" in one_line_error(second, 78)
        assert {n: _inode(state / n) for n in sockets} == sockets
        assert _only_grew(audit, _audit_bytes(state / "data"))
        assert (state / "env").stat().st_mtime_ns == env_file.st_mtime_ns
        if swtpm is not None:  # the first daemon's TPM kept running, untouched
            os.kill(swtpm, 0)
            assert int(swtpm_pidfile.read_text()) == swtpm
        health = subprocess.run([*ENSIGN, "healthcheck"], env=env, capture_output=True,
                                text=True, timeout=30)
        assert health.returncode == 0 and health.stdout.strip() == "healthy", health
        status = subprocess.run([*ENSIGN, "status"], env=env, capture_output=True, text=True,
                                timeout=30)
        assert status.returncode == 0 and "serving" in status.stdout
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 0
    check = subprocess.run([*ENSIGN, "audit", "verify", "--data-dir", str(state / "data")],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and check.stdout.startswith("audit ok"), check


def test_second_config_on_one_data_dir_exits_78_and_the_chain_stays_whole(
        daemon: Daemon) -> None:
    other = daemon.root / "other.toml"
    other.write_text(daemon.config_path.read_text()
                     .replace(str(daemon.socket), str(daemon.root / "b-agent.sock"))
                     .replace(str(daemon.admin_socket), str(daemon.root / "b-admin.sock")))
    audit = _audit_bytes(daemon.data_dir)
    assert daemon.proc is not None

    second = _second("--config", str(other), cwd=daemon.root)

    line = one_line_error(second, 78)
    assert f"pid {daemon.proc.pid}" in line and str(daemon.data_dir) in line
    assert not (daemon.root / "b-agent.sock").exists()
    assert _only_grew(audit, _audit_bytes(daemon.data_dir))
    daemon.register("still", "unix:uid:0")
    assert daemon.stop() == 0
    assert daemon.cli("audit", "verify", "--data-dir", str(daemon.data_dir)).returncode == 0


def test_a_daemon_that_finds_its_socket_in_use_leaves_it_alone(daemon: Daemon) -> None:
    other = daemon.root / "other.toml"
    other.write_text(daemon.config_path.read_text()
                     .replace(str(daemon.data_dir), str(daemon.root / "data2")))
    sockets = {p: _inode(p) for p in (daemon.socket, daemon.admin_socket)}

    second = _second("--config", str(other), cwd=daemon.root)

    assert second.returncode == 78
    assert "agent.sock is in use" in second.stderr.strip().splitlines()[-1]
    assert {p: _inode(p) for p in sockets} == sockets
    assert daemon.cli("healthcheck").stdout.strip() == "healthy"
    assert daemon.cli("status").returncode == 0


def test_a_killed_daemon_does_not_block_a_restart(short_tmp: Path) -> None:
    d = make_daemon(short_tmp)
    d.stop(signal.SIGKILL)
    d.start()  # the kernel dropped the lock with the process
    assert d.cli("healthcheck").stdout.strip() == "healthy"
    d.stop()
