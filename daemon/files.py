"""Durable, private file writes (a crash leaves either the old file or the new one, never
half), and the lock that keeps one daemon per directory."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from ensign.daemon.errors import ConfigError

LOCK_FILE = "daemon.lock"


def ensure_private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)


def write_private(path: Path, data: bytes) -> None:
    """Atomically replace `path` with `data`, mode 0600, fsynced with its directory."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class DirLock:
    """An exclusive lock on a directory: `DIR/daemon.lock`, held with flock() while the process
    lives, holding its pid. The kernel drops it when the process dies (even by kill -9), so a
    stale file never blocks a restart. The descriptor is close-on-exec: children (swtpm) never
    inherit it."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd = fd
        self.path = path

    @classmethod
    def take(cls, directory: Path, what: str,
             hint: str = "stop it first, or give this one its own directory") -> DirLock:
        """Lock `directory` (created 0700 if missing), or raise ConfigError naming the pid that
        holds it. Nothing in the directory is changed when the lock is held elsewhere."""
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = directory / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as e:
            raise ConfigError(f"cannot open the lock file {path}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"pid {holder}" if holder else "another process"
            raise ConfigError(f"{what} {directory} is in use by a running ensign daemon ({who}); "
                              + hint) from None
        except OSError as e:
            os.close(fd)
            raise ConfigError(f"cannot lock {path}: {e.strerror or e}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(fd, path)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = -1


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None
