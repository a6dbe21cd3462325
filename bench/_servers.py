"""Start the servers under test as subprocesses: the real daemon and the bare echo baseline."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
_CLK_TCK = os.sysconf("SC_CLK_TCK")

DAEMON_CONFIG = """\
trust_domain = "example.org"
socket_path = "{tmp}/agent.sock"
admin_socket_path = "{tmp}/admin.sock"
data_dir = "{tmp}/data"
log_level = "warning"
"""


@dataclass(frozen=True, slots=True)
class Running:
    socket: Path
    pid: int

    def cpu_seconds(self) -> float:
        """User plus system CPU time the server process has used so far."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def _tail(log: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    return ""


def wait_for_socket(path: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Return once `path` accepts connections; raise if `proc` exits or time runs out."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}:\n{_tail(log)}")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(str(path))
            except OSError:
                pass
            else:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} not accepting after {START_TIMEOUT:g}s:\n{_tail(log)}")
        time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def _process(argv: Sequence[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        stop(proc)


def _admin(admin_socket: Path, *args: str) -> None:
    """Run an `ensign` admin command against the daemon's admin socket."""
    done = subprocess.run(
        [sys.executable, "-m", "ensign.daemon", *args], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "ENSIGN_ADMIN_SOCKET": f"unix://{admin_socket}"},
    )
    if done.returncode != 0:
        raise RuntimeError(f"ensign {' '.join(args)} failed ({done.returncode}): "
                           f"{done.stderr.strip()}")


@contextlib.contextmanager
def daemon(tmp: Path, python_args: Sequence[str] = (), extra_config: str = "") -> Iterator[Running]:
    """Run `ensign daemon` on a fresh config in `tmp`, this uid registered as agent `bench`.

    Yields the Workload API socket and the pid. `python_args` go before `-m ensign.daemon`, e.g.
    `("-m", "cProfile", "-o", "x.prof")` to profile it. `extra_config` (TOML) is appended to the
    config, e.g. `'[svid]\nx509_ttl = "30s"\n'`.
    """
    (tmp / "ensign.toml").write_text(DAEMON_CONFIG.format(tmp=tmp) + extra_config)
    sock, admin, log = tmp / "agent.sock", tmp / "admin.sock", tmp / "daemon.log"
    argv = [sys.executable, *python_args, "-m", "ensign.daemon", "daemon",
            "--config", str(tmp / "ensign.toml")]
    with _process(argv, log) as proc:
        wait_for_socket(sock, proc, log)
        wait_for_socket(admin, proc, log)
        # Audiences are denied to agents without a role: grant "bench" through one.
        _admin(admin, "role", "create", "bench-client", "--audience", "bench")
        _admin(admin, "agent", "register", "--name", "bench", "--owner", "bench",
               "--role", "bench-client", "--selector", f"unix:uid:{os.getuid()}")
        yield Running(sock, proc.pid)


@contextlib.contextmanager
def echo(tmp: Path) -> Iterator[Running]:
    """Run the bare grpclib echo server in `tmp`; yields its socket and pid."""
    sock, log = tmp / "echo.sock", tmp / "echo.log"
    with _process([sys.executable, "-m", "bench.echo_server", "--socket", str(sock)], log) as p:
        wait_for_socket(sock, p, log)
        yield Running(sock, p.pid)
