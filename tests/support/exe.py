"""Executables as attested callers: this test process's own, and copies of the interpreter
(signed, tampered, symlinked) that run FETCH_JWT, so that the attested executable is the copy."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.support.daemon import Daemon
from tests.support.scripts import FETCH_JWT


def this_exe() -> str:
    """The real path of the executable of this process (what the daemon attests for it)."""
    return os.path.realpath(f"/proc/{os.getpid()}/exe")


def sha256_of(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def copy_exe(dst: Path) -> Path:
    """A copy of the interpreter at `dst`, mode and times kept."""
    shutil.copy2(os.path.realpath(sys.executable), dst)
    return dst


def tampered(data: bytes) -> bytes:
    """An executable's bytes with the last one flipped (section headers: it still runs)."""
    return data[:-1] + bytes([data[-1] ^ 0x01])


def run_exe(exe: Path, d: Daemon) -> str:
    """Run FETCH_JWT with `exe` as the interpreter against `d`: "ISSUED" or "REFUSED <CODE>"."""
    env = {"PYTHONPATH": sysconfig.get_paths()["purelib"], "PATH": "/usr/bin:/bin"}
    out = subprocess.run([str(exe), "-c", FETCH_JWT, str(d.socket)], capture_output=True,
                         text=True, env=env, timeout=60)
    return out.stdout.strip() or out.stderr.strip()
