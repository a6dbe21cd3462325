"""The daemon harness: real daemon processes on real Unix sockets, driven by real clients."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
ENSIGN = [sys.executable, "-m", "ensign.daemon"]
NOBODY = 65534

#: For tests that switch uids, set groups or write kernel knobs.
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (other uids, groups)")


def _wait_for_socket(
    path: Path, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode}:\n{log.read_text()}")
        if path.exists():
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(str(path))
                return
            except OSError:
                pass
            finally:
                s.close()
        time.sleep(0.05)
    raise RuntimeError(f"daemon did not start:\n{log.read_text()}")


@dataclass
class Daemon:
    root: Path
    extra_config: str = ""
    # The core suites predate roles: they run with audiences allowed for agents without roles.
    allow_audiences: bool = True
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    env: dict[str, str] = field(default_factory=dict)
    trust_domain: str = "example.org"

    @property
    def socket(self) -> Path:
        return self.root / "agent.sock"

    @property
    def admin_socket(self) -> Path:
        return self.root / "admin.sock"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def config_path(self) -> Path:
        return self.root / "ensign.toml"

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    @property
    def log(self) -> Path:
        return self.root / "daemon.log"

    def write_config(self) -> None:
        self.config_path.write_text(
            f'trust_domain = "{self.trust_domain}"\n'
            f'socket_path = "{self.socket}"\n'
            f'admin_socket_path = "{self.admin_socket}"\n'
            f'data_dir = "{self.data_dir}"\n'
            f'log_level = "debug"\n' + self.extra_config
            + ("\n[policy]\ndefault_allow_audiences = true\n" if self.allow_audiences else "")
        )

    def start(self) -> None:
        self.write_config()
        self.starts += 1
        log = self.log.open("ab")
        self.proc = subprocess.Popen(
            [*ENSIGN, "daemon", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
        )
        _wait_for_socket(self.socket, self.proc, self.log)
        _wait_for_socket(self.admin_socket, self.proc, self.log)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cli(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "SPIFFE_ENDPOINT_SOCKET": self.endpoint,
            "ENSIGN_ADMIN_SOCKET": f"unix://{self.admin_socket}",
            **self.env,
        }
        result = subprocess.run(
            [*ENSIGN, *args], capture_output=True, text=True, env=env, input=input, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"ensign {' '.join(args)} exited {result.returncode}: {result.stderr}"
            )
        return result

    def register(
        self, name: str, *selectors: str, extra: tuple[str, ...] = ()
    ) -> dict[str, object]:
        args = ["agent", "register", "--name", name, "-o", "json", *extra]
        if "--owner" not in extra:
            args += ["--owner", "tests@example.org"]
        for s in selectors:
            args += ["--selector", s]
        record: dict[str, object] = json.loads(self.cli(*args).stdout)
        return record

    def audit(self, *args: str) -> list[dict[str, Any]]:
        """`ensign audit list -o json` with filters `args`, oldest first."""
        records: list[dict[str, Any]] = json.loads(
            self.cli("audit", "list", "-o", "json", *args).stdout)
        return records


def tmp_root() -> Path:
    """A short, world-traversable directory under /tmp for a module-scoped daemon (socket paths
    are limited to 107 bytes; cross-uid clients must reach the socket). The caller removes it."""
    root = Path(tempfile.mkdtemp(prefix="ens", dir="/tmp"))
    root.chmod(0o755)
    return root


def make_daemon(root: Path, extra_config: str = "", *, allow_audiences: bool = True,
                trust_domain: str = "example.org") -> Daemon:
    d = Daemon(root=root, extra_config=extra_config, allow_audiences=allow_audiences,
               trust_domain=trust_domain)
    d.start()
    return d


# -- processes under another uid ---------------------------------------------------------------

_NOBODY_SITE: Path | None = None


def nobody_site_packages() -> Path:
    """A copy of grpcio that uid 65534 can read, wherever the checkout lives (CI may clone
    somewhere other users cannot traverse)."""
    global _NOBODY_SITE
    if _NOBODY_SITE is None:
        import grpc
        import typing_extensions

        site = Path(tempfile.mkdtemp(prefix="ens-nobody-", dir="/tmp"))
        shutil.copytree(Path(grpc.__file__).parent, site / "grpc")
        shutil.copy(typing_extensions.__file__, site / "typing_extensions.py")
        for p in [site, *site.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        _NOBODY_SITE = site
    return _NOBODY_SITE


def nobody_env() -> dict[str, str]:
    """The environment of a process under another uid: grpcio importable, nothing else."""
    return {
        "PYTHONPATH": str(nobody_site_packages()),
        "PATH": "/usr/bin:/bin",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def _system_python() -> str:
    return "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable


def run_as(
    uid: int,
    code: str,
    *args: str,
    timeout: float = 30,
    env: dict[str, str] | None = None,
    script: Path | None = None,
    extra_groups: tuple[int, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """Run Python `code` (or a `script` file) under `uid` (and gid) with grpcio importable.
    Needs root. `env` replaces the default environment (which sets PYTHONPATH)."""
    if os.geteuid() != 0:
        pytest.skip("cross-uid tests need root")
    python = _system_python()
    argv = [python, str(script)] if script is not None else [python, "-c", code]
    return subprocess.run(
        [*argv, *args],
        capture_output=True,
        text=True,
        env=nobody_env() if env is None else env,
        timeout=timeout,
        user=uid,
        group=uid,
        extra_groups=list(extra_groups),
        cwd="/",
    )


def spawn_as(uid: int, code: str, *args: str) -> subprocess.Popen[str]:
    """Start Python `code` under `uid` with pipes on stdin and stdout, for a client that must
    hold something open while the test looks. Needs root."""
    if os.geteuid() != 0:
        pytest.skip("cross-uid tests need root")
    return subprocess.Popen(
        [_system_python(), "-c", code, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True, user=uid, group=uid, extra_groups=[], env=nobody_env(), cwd="/")


def kill_and_restart(d: Daemon, times: int, rng: random.Random, low: float, high: float) -> None:
    """kill -9 the daemon `times` times, `low`..`high` s apart, starting it again each time."""
    for _ in range(times):
        time.sleep(rng.uniform(low, high))
        assert d.proc is not None
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait(timeout=10)
        d.start()
