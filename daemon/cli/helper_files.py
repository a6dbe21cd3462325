"""`ensign helper`'s file writes: no sockets, no processes, no settings (helper_settings).

Every file is replaced atomically: written to a temp file in the same directory, fsynced,
renamed over the old one, then the directory fsynced, so a reader sees the old file or the new
one, never half of either. The directory is opened once and used by descriptor (no path
re-resolution between checks and writes), and refused when others could swap files in it.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ensign.daemon.errors import PermissionDenied, UsageError


def plain_name(name: str) -> str:
    """A file name inside cert_dir: no directories, no dot files, nothing to escape with."""
    if not name or "/" in name or name in (".", "..") or name.startswith(".") or "\0" in name:
        raise ValueError(f"{name!r} must be a plain file name inside cert_dir")
    return name


@dataclass
class CertDir:
    """The output directory, opened once; every write goes through its descriptor."""

    path: Path
    fd: int

    @classmethod
    def open(cls, path: Path) -> CertDir:
        """The directory, opened once: files are then written relative to this very directory.
        Refused (exit 77) if another user could place or swap files in it: it must be the
        caller's or root's, and not writable by group or others unless sticky and the caller's
        (where nobody else may replace the caller's files)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise UsageError(f"{path}: no such directory (create it first)") from None
        except NotADirectoryError:
            raise UsageError(f"{path}: not a directory") from None
        try:
            st, uid = os.fstat(fd), os.geteuid()
            if st.st_uid not in (uid, 0):
                raise PermissionDenied(f"{path}: belongs to uid {st.st_uid}, not to you or root; "
                                       "use a directory only you can write")
            if st.st_mode & 0o022 and not (st.st_mode & stat.S_ISVTX and st.st_uid == uid):
                raise PermissionDenied(f"{path}: writable by others; use a directory only this "
                                       "user can write (or a sticky one it owns)")
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd)

    def write(self, name: str, data: bytes, mode: int) -> None:
        tmp = f".{name}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=self.fd)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     mode & 0o600, dir_fd=self.fd)  # no wider than 0600 until it is complete
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode)  # exactly the mode asked for, whatever the umask
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self.fd)
            raise
        os.close(fd)
        os.rename(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def sync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


def parse_signal(name: str) -> int:
    """SIGHUP, HUP or 1."""
    import signal

    text = name.strip().upper()
    if text.isdigit():
        number = int(text)
        if number in {s.value for s in signal.Signals}:
            return number
    else:
        try:
            return int(signal.Signals[text if text.startswith("SIG") else "SIG" + text])
        except KeyError:
            pass
    raise UsageError(f"unknown signal {name!r}")


def read_pid(path: Path) -> int:
    """The pid in a pid file; a missing, empty or nonsense file is an error, never pid 0/-1."""
    try:
        text = path.read_text(encoding="ascii", errors="replace")[:64].strip()
    except OSError as e:
        raise UsageError(f"{path}: cannot read pid file: {e.strerror}") from None
    if not text.isdigit() or int(text) < 2:
        raise UsageError(f"{path}: not a process id: {text[:20]!r}")
    return int(text)
