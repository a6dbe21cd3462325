"""Opening files a caller may have chosen, without letting it block, mislead or exhaust us.

Every open is O_NONBLOCK (a FIFO or a device never blocks the thread) and is followed by fstat:
only regular files are read, and only up to a size cap. `open_trusted()` walks a path one
component at a time from a directory fd with O_NOFOLLOW, so no symlink anywhere in it is
followed, and checks that nobody but root could have changed any component.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat

from ensign.daemon.text import escape

CHUNK = 1 << 20
_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC


class Refused(Exception):
    """The file may not be used; the message says why (escaped: it is recorded)."""


def regular(fd: int, what: str, max_bytes: int) -> os.stat_result:
    """fstat `fd`: a regular file of at most `max_bytes`, or Refused."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise Refused(f"{what} is not a regular file")
    if st.st_size > max_bytes:
        raise Refused(f"{what} is {st.st_size} bytes, over the limit of {max_bytes}")
    return st


def open_regular(path: str, what: str, max_bytes: int, *, dir_fd: int | None = None,
                 follow: bool = False) -> tuple[int, os.stat_result]:
    """Open a regular file of at most `max_bytes` for reading; the caller closes the fd."""
    flags = _FILE if follow else _FILE | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags, dir_fd=dir_fd)
    except OSError as e:
        raise Refused(f"cannot open {what}: {e.strerror}") from None
    try:
        return fd, regular(fd, what, max_bytes)
    except BaseException:
        os.close(fd)
        raise


def root_only(st: os.stat_result) -> str | None:
    """Why a file or directory could be changed by someone other than root, or None."""
    if st.st_uid != 0:
        return f"is owned by uid {st.st_uid}, not root"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "is writable by group or others"
    return None


def clean_absolute(path: str) -> bool:
    """An absolute path without empty, `.` or `..` components."""
    parts = path.split("/")
    return path.startswith("/") and all(p not in ("", ".", "..") for p in parts[1:])


def open_trusted(root_fd: int, path: str, what: str,
                 max_bytes: int) -> tuple[int, int, os.stat_result]:
    """Walk the absolute `path` from `root_fd` with O_NOFOLLOW at every step; the root, each
    directory and the file must be root's alone (root_only). Returns the file's fd, its
    directory's fd (O_PATH, for finding files beside it) and its stat; the caller closes both.
    """
    if not clean_absolute(path):
        raise Refused(f"{what} {escape(path)} is not a plain absolute path")
    why = root_only(os.fstat(root_fd))
    if why:
        raise Refused(f"{what}: the root directory {why}")
    parts = path.split("/")[1:]
    dir_fd = os.dup(root_fd)
    try:
        walked = ""
        for name in parts[:-1]:
            walked += "/" + name
            try:
                nxt = os.open(name, _DIR, dir_fd=dir_fd)
            except OSError as e:
                raise Refused(f"{what}: cannot open directory {escape(walked)} without "
                              f"following links: {e.strerror}") from None
            os.close(dir_fd)
            dir_fd = nxt
            why = root_only(os.fstat(dir_fd))
            if why:
                raise Refused(f"{what}: directory {escape(walked)} {why}")
        fd, st = open_regular(parts[-1], f"{what} {escape(path)}", max_bytes, dir_fd=dir_fd)
        why = root_only(st)
        if why:
            os.close(fd)
            raise Refused(f"{what} {escape(path)} {why}")
        return fd, dir_fd, st
    except BaseException:
        os.close(dir_fd)
        raise


def read_capped(fd: int, what: str, max_bytes: int) -> bytes:
    """The whole file from the start, refusing one that grew past `max_bytes`."""
    chunks, size = [], 0
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise Refused(f"{what} grew over the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def sha256_capped(fd: int, what: str, max_bytes: int) -> str:
    h = hashlib.sha256()
    size = 0
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise Refused(f"{what} grew over the limit of {max_bytes} bytes")
        h.update(chunk)
    return h.hexdigest()


def close_all(*fds: int | None) -> None:
    for fd in fds:
        if fd is not None and fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
