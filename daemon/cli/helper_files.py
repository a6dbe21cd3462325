"""`ensign helper`'s settings and file writes: no sockets, no processes.

Settings take spiffe-helper's key names (`cert_dir`, `svid_file_name`, `jwt_svids`, ...) so its
config files carry over (HCL's `key = value` lines read as TOML); unknown keys are errors.
Every file is replaced atomically: written to a temp file in the same directory, fsynced,
renamed over the old one, then the directory fsynced, so a reader sees the old file or the new
one, never half of either. The directory is opened once and used by descriptor (no path
re-resolution between checks and writes), and refused when others could swap files in it.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator

from ensign.daemon.config_types import StrictModel
from ensign.daemon.errors import ConfigError, PermissionDenied, UsageError


class JwtFile(StrictModel):
    jwt_audience: str = Field(min_length=1)
    jwt_extra_audiences: tuple[str, ...] = ()
    jwt_svid_file_name: str

    @field_validator("jwt_svid_file_name")
    @classmethod
    def _plain(cls, v: str) -> str:
        return plain_name(v)


class HelperSettings(StrictModel):
    """What to write where, and whom to tell. spiffe-helper's names and defaults."""

    agent_address: str = ""  # the Workload API socket; default $SPIFFE_ENDPOINT_SOCKET
    cert_dir: str = ""
    svid_file_name: str = "svid.pem"
    svid_key_file_name: str = "svid_key.pem"
    svid_bundle_file_name: str = "svid_bundle.pem"
    jwt_svids: tuple[JwtFile, ...] = ()
    jwt_bundle_file_name: str = ""  # the JWKS, when set
    add_intermediates_to_bundle: bool = False
    hint: str = ""  # pick the SVID with this hint instead of the first
    cert_file_mode: int = Field(default=0o644, ge=0, le=0o777)
    key_file_mode: int = Field(default=0o600, ge=0, le=0o777)
    jwt_svid_file_mode: int = Field(default=0o600, ge=0, le=0o777)
    jwt_bundle_file_mode: int = Field(default=0o600, ge=0, le=0o777)
    daemon_mode: bool = True  # False: write once and exit (--once)
    cmd: str = ""
    cmd_args: str = ""
    renew_signal: str = ""
    pid_file_name: str = ""

    @field_validator("svid_file_name", "svid_key_file_name", "svid_bundle_file_name")
    @classmethod
    def _plain(cls, v: str) -> str:
        return plain_name(v)

    @field_validator("jwt_bundle_file_name")
    @classmethod
    def _plain_or_empty(cls, v: str) -> str:
        return plain_name(v) if v else v


def plain_name(name: str) -> str:
    """A file name inside cert_dir: no directories, no dot files, nothing to escape with."""
    if not name or "/" in name or name in (".", "..") or name.startswith(".") or "\0" in name:
        raise ValueError(f"{name!r} must be a plain file name inside cert_dir")
    return name


def load_settings(path: Path | None, overrides: dict[str, Any]) -> HelperSettings:
    """The config file (TOML), then the command line's flags over it."""
    data: dict[str, Any] = {}
    source = "command line"
    if path is not None:
        source = str(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise ConfigError(f"{path}: cannot read config file: {e.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return HelperSettings.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'config'}: "
            f"{'unknown key' if err['type'] == 'extra_forbidden' else err['msg']}"
            for err in e.errors())
        raise ConfigError(f"{source}: {problems}") from None


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
