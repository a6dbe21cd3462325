"""Standing in for systemd launching a unit, for real: cgroup v2 paths made under the host's
hierarchy (as root), a process started inside one before it runs a single instruction of its
own program, and directories only root can write all the way up (for unit files and scripts).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# The child stops itself until the parent has moved it, then runs the real argv.
_HOLD = 'kill -STOP $$; exec "$@"'


def trusted_tmp() -> Path:
    """A temporary directory whose every component only root can write (not under /tmp, which
    anyone can write): where script attestation accepts scripts and unit files."""
    run = Path("/run")
    st = run.stat()
    if os.geteuid() != 0 or st.st_uid != 0 or st.st_mode & 0o022:
        pytest.skip("needs root and a /run that only root can write")
    d = Path(tempfile.mkdtemp(prefix="ens-trusted-", dir=run))
    d.chmod(0o755)
    return d


def cgroup2_mount() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (from /proc/self/mountinfo), if anywhere."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split(" - ")
        if len(fields) == 2 and fields[1].split()[0] == "cgroup2":
            return Path(fields[0].split()[4])
    return None


def own_cgroup() -> str:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    return ""


def unique(stem: str) -> str:
    return f"{stem}{os.getpid()}x{secrets.token_hex(3)}"


@contextlib.contextmanager
def cgroups(*paths: str) -> Iterator[dict[str, Path]]:
    """Make each cgroup path (like `/system.slice/x.service`) under the cgroup2 mount; skip
    the test if that is not possible. Removes what it made (parents shared with others stay
    if they are not empty)."""
    mount = cgroup2_mount()
    if os.geteuid() != 0 or mount is None or not os.access(mount, os.W_OK):
        pytest.skip("needs root and a writable cgroup v2 hierarchy")
    if own_cgroup() != "/":
        # Paths are read relative to the reader's cgroup namespace; ours must be the root.
        pytest.skip("the test runner is not at the root of its cgroup namespace")
    made: list[Path] = []
    try:
        out = {}
        for p in paths:
            d = mount
            for part in p.strip("/").split("/"):
                d = d / part
                try:
                    d.mkdir()
                    made.append(d)
                except FileExistsError:
                    pass
                except OSError as e:
                    pytest.skip(f"cannot create cgroup {d}: {e}")
            out[p] = d
        yield out
    finally:
        for d in sorted(made, key=lambda x: len(x.parts), reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()


def spawn_in(cgroup: Path, argv: list[str], *, uid: int = 0, env: dict[str, str] | None = None,
             cwd: str = "/", stdin: int | None = subprocess.DEVNULL) -> subprocess.Popen[str]:
    """Start `argv` under `uid`, already inside `cgroup` when its program starts."""
    proc = subprocess.Popen(
        ["/bin/sh", "-c", _HOLD, "sh", *argv], stdin=stdin, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=env if env is not None else {},
        cwd=cwd, user=uid, group=uid, extra_groups=[],
    )
    try:
        while _state(proc.pid) != "T":
            if proc.poll() is not None:
                raise RuntimeError(f"{argv[0]} exited before it was moved: {proc.returncode}")
            time.sleep(0.005)
        (cgroup / "cgroup.procs").write_text(str(proc.pid))
        os.kill(proc.pid, signal.SIGCONT)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def _state(pid: int) -> str:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2]


def run_in(cgroup: Path, argv: list[str], *, uid: int = 0, env: dict[str, str] | None = None,
           cwd: str = "/", input: str | None = None,
           timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = spawn_in(cgroup, argv, uid=uid, env=env, cwd=cwd,
                    stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL)
    try:
        out, err = proc.communicate(input, timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
