"""The sigstore attestor: is the code this process runs signed, and by whom?

For a compiled agent the artifact is /proc/PID/exe. For an interpreted agent (its executable is
a configured interpreter) it is the script that a trusted launcher started: a host system
service whose root-owned definition runs the interpreter on an absolute script path with only
allowed flags (see _launcher for every rule). The script is opened through /proc/PID/root one
component at a time without following links, and every component must be root's alone. The
command line, environment and working directory of the process are never trusted to name the
script. Otherwise no sigstore selectors are given, and the evidence says which rule failed.

Every file (executable, script, bundle) is opened O_NONBLOCK, must be a regular file and is
read up to a size cap; the work runs on this attestor's own threads, a few per uid at most
(_bounded), so a caller naming slow or huge files delays only itself.

Bundles are found beside the artifact (`<file>.sigstore.json`, `<file>.sigstore`), then as
`<bundle_dir>/<sha256>.sigstore.json`. Verification is offline, against `trusted_root`, and
cached by the artifact's and the bundle's device, inode, size, mtime and ctime.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ensign.daemon.models import Attestation, Caller
from ensign.daemon.text import escape

from . import _files
from ._bounded import Bounded
from ._launcher import ScriptRefused, launched_script
from ._sigstore_verify import (
    MAX_BUNDLE_BYTES,
    CheckFailed,
    Verified,
    load_verifier,
    verify,
)
from .base import value
from .sigstore_config import SigstoreConfig  # its public name here too

CACHE_SIZE = 1024
THREADS, THREADS_PER_UID = 4, 2
RETRY = 30.0  # seconds between attempts to load a trusted root that failed

_Key = tuple[int, int, int, int, int]


def _key(st: os.stat_result) -> _Key:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(slots=True)
class _Artifact:
    kind: str  # "exe" | "script"
    fd: int
    st: os.stat_result
    name: str  # for evidence and messages, escaped
    beside: tuple[int | None, str]  # where bundles beside it are: (dir fd, name) or (None, path)


class SigstoreAttestor:
    name: ClassVar[str] = "sigstore"

    def __init__(self, config: SigstoreConfig, *, proc_root: Path = Path("/proc")) -> None:
        self._cfg = config
        self._proc = proc_root
        self._interpreters = {os.path.realpath(p) for p in config.interpreters}
        self._verifier: Any = None
        self._verifier_error: str | None = None
        self._tried = 0.0
        self._cache: OrderedDict[tuple[_Key, _Key], Verified | CheckFailed] = OrderedDict()
        self._lock = threading.Lock()
        self._bound = Bounded("sigstore", total=THREADS, per_uid=THREADS_PER_UID)
        self._load_root()

    def _load_root(self) -> None:
        """Load the trusted root. A failure is loud (health NOT_SERVING, `config check` fails)
        and retried every RETRY seconds, so fixing the file needs no restart."""
        self._tried = time.monotonic()
        try:
            self._verifier = load_verifier(self._cfg.trusted_root)
            self._verifier_error = None
        except CheckFailed as e:
            self._verifier_error = e.detail

    async def attest(self, caller: Caller) -> Attestation:
        return await self._bound.run(caller.uid, self._attest_sync, caller)

    def _attest_sync(self, caller: Caller) -> Attestation:
        evidence: dict[str, str] = {}
        try:
            artifact = self._artifact(caller, evidence)
        except ScriptRefused as e:
            evidence.update(error=str(e), failed_rule=e.rule)
            return Attestation(evidence=evidence)
        except _files.Refused as e:
            evidence["error"] = str(e)
            return Attestation(evidence=evidence)
        try:
            return self._check(artifact, evidence)
        except _files.Refused as e:
            evidence["error"] = str(e)
            return Attestation(evidence=evidence)
        finally:
            _files.close_all(artifact.fd, artifact.beside[0])

    def _artifact(self, caller: Caller, evidence: dict[str, str]) -> _Artifact:
        pid_dir = f"{self._proc}/{caller.pid}"
        cap = self._cfg.max_hash_bytes
        try:
            exe = os.readlink(f"{pid_dir}/exe")
        except OSError as e:
            raise _files.Refused(f"cannot read the executable: {e.strerror}") from None
        # A replaced interpreter shows as "... (deleted)": still an interpreter running scripts.
        if os.path.realpath(exe.removesuffix(" (deleted)")) not in self._interpreters:
            evidence["artifact"] = "exe"
            # The magic link opens the very image the process runs, wherever it lives.
            fd, st = _files.open_regular(f"{pid_dir}/exe", "the executable", cap, follow=True)
            return _Artifact("exe", fd, st, escape(exe), (None, exe))
        evidence["artifact"] = "script"
        launch = launched_script(caller.pid, exe, self._cfg.unit_dirs, self._interpreters,
                                 self._proc)
        evidence["unit"] = launch.unit
        evidence["script"] = launch.script
        try:
            root = os.open(f"{pid_dir}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise ScriptRefused("script-path", f"cannot open the process's root: "
                                f"{e.strerror}") from None
        try:
            fd, dir_fd, st = _files.open_trusted(root, launch.script, "script", cap)
        except _files.Refused as e:
            raise ScriptRefused("script-path", str(e)) from None
        finally:
            os.close(root)
        return _Artifact("script", fd, st, launch.script, (dir_fd, os.path.basename(launch.script)))

    def _check(self, art: _Artifact, evidence: dict[str, str]) -> Attestation:
        if self._verifier is None and time.monotonic() - self._tried >= RETRY:
            self._load_root()
        if self._verifier is None:
            evidence["error"] = f"trusted-root: {self._verifier_error or 'not loaded'}"
            evidence["failed_check"] = "trusted-root"
            return Attestation(evidence=evidence)
        bundle = self._bundle_beside(art)
        digest = ""
        if bundle is None:
            digest = _files.sha256_capped(art.fd, art.name, self._cfg.max_hash_bytes)
            bundle = self._bundle_in_dirs(digest)
        if bundle is None:
            evidence["error"] = f"no Sigstore bundle for {art.name}"
            return Attestation(evidence=evidence)
        bundle_name, bundle_fd, bundle_st = bundle
        try:
            cache_key = (_key(art.st), _key(bundle_st))
            with self._lock:
                result = self._cache.get(cache_key)
            if result is None:  # read and verify only what was not verified before
                data = _files.read_capped(bundle_fd, f"bundle {bundle_name}", MAX_BUNDLE_BYTES)
                digest = digest or _files.sha256_capped(art.fd, art.name,
                                                        self._cfg.max_hash_bytes)
                try:
                    result = verify(self._verifier, data, digest,
                                    predicate_types=tuple(self._cfg.predicate_types))
                except CheckFailed as e:
                    result = e
                with self._lock:
                    self._cache[cache_key] = result
                    if len(self._cache) > CACHE_SIZE:
                        self._cache.popitem(last=False)
        finally:
            os.close(bundle_fd)
        evidence["bundle"] = bundle_name
        if isinstance(result, CheckFailed):
            evidence["error"] = escape(str(result))
            evidence["failed_check"] = result.check
            return Attestation(evidence=evidence)
        return Attestation(selectors=_selectors(result, art.kind), evidence={
            **evidence, "signer": escape(result.identity), "issuer": escape(result.issuer)})

    def _bundle_beside(self, art: _Artifact) -> tuple[str, int, os.stat_result] | None:
        dir_fd, path = art.beside
        for suffix in (".sigstore.json", ".sigstore"):
            found = self._open_bundle(path + suffix, dir_fd, art.name + suffix)
            if found is not None:
                return found
        return None

    def _bundle_in_dirs(self, digest: str) -> tuple[str, int, os.stat_result] | None:
        for d in self._cfg.bundle_dirs:
            path = str(d / f"{digest}.sigstore.json")
            found = self._open_bundle(path, None, escape(path))
            if found is not None:
                return found
        return None

    @staticmethod
    def _open_bundle(path: str, dir_fd: int | None,
                     name: str) -> tuple[str, int, os.stat_result] | None:
        """A bundle that exists is opened (a regular file, no symlink, capped) or refused; the
        caller closes the fd. Its fstat keys the cache, so what is read is what was keyed."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise _files.Refused(f"cannot open bundle {name}: {e.strerror}") from None
        try:
            return name, fd, _files.regular(fd, f"bundle {name}", MAX_BUNDLE_BYTES)
        except BaseException:
            os.close(fd)
            raise

    def state(self) -> str:
        problem = self.problem()
        if problem is not None:
            return f"failing: {problem}"
        return f"ready, {len(self._cache)} verdicts cached, {self._bound.busy} busy"

    def problem(self) -> str | None:
        if self._verifier is None and time.monotonic() - self._tried >= RETRY:
            self._load_root()
        return None if self._verifier_error is None else f"trusted_root: {self._verifier_error}"

    async def aclose(self) -> None:
        self._cache.clear()
        self._bound.close()


def _selectors(v: Verified, kind: str) -> tuple[str, ...]:
    out = [value("verified", "true"), value("artifact", kind)]
    if v.identity:
        out.append(value("identity", escape(v.identity)))
    if v.issuer:
        out.append(value("issuer", escape(v.issuer)))
    for name in ("repository", "ref", "workflow"):
        if name in v.facts:
            out.append(value(name, escape(v.facts[name])))
    if v.builder_id:
        out.append(value("builder", escape(v.builder_id)))
    return tuple(out)
