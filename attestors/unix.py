"""The unix attestor: who the caller is (uids, groups) and what it runs (exe path, sha256).

uid and gid come from the connection's kernel credentials (SO_PEERCRED), never from anything
the caller can write. The executable is read through /proc/PID/exe, which names the image the
process actually runs even if the file on disk was replaced since.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import threading
from collections import OrderedDict
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from ensign.daemon import procfs as _procfs
from ensign.daemon.config_types import Size, StrictModel
from ensign.daemon.models import Attestation, Caller
from ensign.daemon.text import escape

from . import _files
from ._bounded import Bounded
from .base import AttestorError, value

log = logging.getLogger(__name__)

HASH_CACHE_SIZE = 4096
DELETED_SUFFIX = " (deleted)"

_FileKey = tuple[int, int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns


class UnixConfig(StrictModel):
    enabled: bool = True
    hash_executables: bool = True
    max_hash_bytes: Size = Field(default=1 << 30, ge=0)


def _file_key(st: os.stat_result) -> _FileKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class UnixAttestor:
    name: ClassVar[str] = "unix"

    def __init__(self, config: UnixConfig, *, proc_root: Path = Path("/proc")) -> None:
        self._config = config
        self._proc = proc_root
        # Hashes keyed by device, inode, size, mtime and ctime: a rewritten file changes at
        # least its ctime, so a stale hash is never served.
        self._hashes: OrderedDict[_FileKey, str] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._bound = Bounded("unix-hash", total=2, per_uid=1)

    async def attest(self, caller: Caller) -> Attestation:
        selectors = [value("uid", caller.uid), value("gid", caller.gid)]
        evidence: dict[str, str] = {}
        with contextlib.suppress(KeyError):
            selectors.append(value("user", escape(pwd.getpwuid(caller.uid).pw_name)))
        with contextlib.suppress(KeyError):
            selectors.append(value("group", escape(grp.getgrgid(caller.gid).gr_name)))
        try:
            status = _procfs.read_status(caller.pid, self._proc)
        except (OSError, ValueError, KeyError, IndexError) as e:
            raise AttestorError(f"cannot read /proc/{caller.pid}/status: {e}") from None
        for gid in status.groups:
            selectors.append(value("supplementary_gid", gid))
            with contextlib.suppress(KeyError):
                selectors.append(value("supplementary_group", escape(grp.getgrgid(gid).gr_name)))
        selectors.extend(await self._exe_selectors(caller, evidence))
        return Attestation(selectors=tuple(dict.fromkeys(selectors)), evidence=evidence)

    async def _exe_selectors(self, caller: Caller, evidence: dict[str, str]) -> list[str]:
        exe_link = self._proc / str(caller.pid) / "exe"
        out: list[str] = []
        try:
            # Any bytes but NUL: escaped, so `unix:path:` is text that can be registered and
            # recorded (ensign.daemon.text; `\xff` for a byte that is not UTF-8).
            target = escape(os.readlink(exe_link))
        except OSError as e:
            # Not fatal: a daemon without CAP_SYS_PTRACE cannot see other users' executables.
            evidence["exe_error"] = f"cannot read executable path: {e.strerror}"
            return out
        if target.endswith(DELETED_SUFFIX):
            # The file this process runs was removed or replaced: the path names other code now.
            evidence["exe_deleted"] = "true"
        else:
            out.append(value("path", target))
        evidence["exe_path"] = target
        if not self._config.hash_executables:
            return out
        digest = await self._hash(caller.uid, exe_link, evidence)
        if digest:
            evidence["exe_sha256"] = digest
            out.append(value("sha256", digest))
        return out

    async def _hash(self, uid: int, exe_link: Path, evidence: dict[str, str]) -> str | None:
        try:
            st = os.stat(exe_link)
        except OSError as e:
            evidence["exe_error"] = f"cannot open executable: {e.strerror}"
            return None
        if st.st_size > self._config.max_hash_bytes:
            evidence["exe_error"] = (f"executable is {st.st_size} bytes, over max_hash_bytes "
                                     f"({self._config.max_hash_bytes}); not hashed")
            return None
        cached = self._hashes.get(_file_key(st))
        if cached is not None:
            return cached
        # On this attestor's own threads, a share per uid: one caller's big executables
        # delay its own uid's attestations, not everyone's.
        digest, error = await self._bound.run(uid, self._hash_sync, exe_link)
        if error:
            evidence["exe_error"] = error
        return digest

    def _hash_sync(self, exe_link: Path) -> tuple[str | None, str | None]:
        """(sha256, None) or (None, why). Opens, hashes and closes in this thread, so a
        request that gave up never closes a file under it."""
        cap = self._config.max_hash_bytes
        try:
            fd, st = _files.open_regular(str(exe_link), "executable", cap, follow=True)
        except _files.Refused as e:
            return None, str(e)
        try:
            key = _file_key(st)
            with self._cache_lock:
                cached = self._hashes.get(key)
            if cached is None:
                cached = _files.sha256_capped(fd, "executable", cap)
                with self._cache_lock:
                    self._hashes[key] = cached
                    if len(self._hashes) > HASH_CACHE_SIZE:
                        self._hashes.popitem(last=False)
            return cached, None
        except _files.Refused as e:
            return None, str(e)
        finally:
            os.close(fd)

    def state(self) -> str:
        return f"ready, {len(self._hashes)} executable hashes cached"

    def problem(self) -> str | None:
        return None

    async def aclose(self) -> None:
        self._hashes.clear()
        self._bound.close()
