"""The sigstore attestor: is the code this process runs signed, and by whom?

For a compiled agent the artifact is /proc/PID/exe. For an interpreted agent (its executable is
a configured interpreter) it is the script named on the command line, but only when nothing
else can change what runs: the caller's environment carries no code-injection variables and
the script (and its directory) is not writable by the caller. Otherwise no sigstore selectors
are given, and the evidence says why.

Bundles are found beside the artifact (`<file>.sigstore.json`, `<file>.sigstore`), then as
`<bundle_dir>/<sha256>.sigstore.json`. Verification is offline, against `trusted_root`, off the
event loop, and cached by the artifact's and the bundle's device, inode, size, mtime and ctime.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from ensign.daemon import procfs as _procfs
from ensign.daemon.config_types import StrictModel
from ensign.daemon.models import Attestation, Caller

from ._sigstore_verify import DEFAULT_PREDICATE_TYPES, CheckFailed, Verified, load_verifier, verify
from .base import value

CACHE_SIZE = 1024
CHUNK = 1 << 20
RETRY = 30.0  # seconds between attempts to load a trusted root that failed
#: Variables that make an interpreter (or the dynamic loader) run code other than the script.
INJECTION_VARS = frozenset({
    "LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME",
    "PYTHONUSERBASE", "PYTHONINSPECT", "PYTHONEXECUTABLE", "PYTHONPLATLIBDIR", "NODE_OPTIONS",
    "NODE_PATH", "PERL5LIB", "PERL5OPT", "PERLLIB", "RUBYOPT", "RUBYLIB", "BASH_ENV", "ENV",
})
#: Interpreter options that take a value (the script is the first argument after them).
_PY_OPTS_WITH_VALUE = frozenset({"-W", "-X", "--check-hash-based-pycs"})

_Key = tuple[int, int, int, int, int]


class SigstoreConfig(StrictModel):
    enabled: bool = False
    trusted_root: Path = Path("/etc/ensign/sigstore/trusted_root.json")
    bundle_dirs: list[Path] = Field(default_factory=lambda: [Path("/etc/ensign/sigstore/bundles")])
    interpreters: list[Path] = Field(default_factory=lambda: [
        Path("/usr/bin/python3"), Path("/usr/bin/node"), Path("/usr/bin/nodejs")])
    predicate_types: list[str] = Field(default_factory=lambda: list(DEFAULT_PREDICATE_TYPES))


def _key(st: os.stat_result) -> _Key:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _writable_by(st: os.stat_result, uid: int, gids: set[int]) -> bool:
    if uid == 0 or st.st_uid == uid:
        return True
    if st.st_mode & stat.S_IWOTH:
        return True
    return bool(st.st_mode & stat.S_IWGRP and st.st_gid in gids)


def script_argument(argv: list[str]) -> str | None:
    """The script a python/node command line runs, or None (`-c`, `-m`, stdin, REPL)."""
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg in ("-c", "-m", "-e", "--eval", "-p", "--print", "-"):
            return None
        if arg in _PY_OPTS_WITH_VALUE:
            i += 2
            continue
        if arg.startswith("-"):
            i += 1
            continue
        return arg
    return None


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
        found = await asyncio.to_thread(self._attest_sync, caller)
        return found

    def _attest_sync(self, caller: Caller) -> Attestation:
        evidence: dict[str, str] = {}
        artifact = self._artifact(caller, evidence)
        if artifact is None:
            return Attestation(evidence=evidence)
        path, kind = artifact
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            evidence["error"] = f"cannot open {kind} {path}: {e.strerror}"
            return Attestation(evidence=evidence)
        try:
            return self._check(fd, path, kind, evidence)
        finally:
            os.close(fd)

    def _artifact(self, caller: Caller, evidence: dict[str, str]) -> tuple[str, str] | None:
        pid_dir = f"{self._proc}/{caller.pid}"
        try:
            exe = os.readlink(f"{pid_dir}/exe")
        except OSError as e:
            evidence["error"] = f"cannot read the executable: {e.strerror}"
            return None
        if os.path.realpath(exe) not in self._interpreters:
            return f"{pid_dir}/exe", "exe"
        # An interpreter: the artifact is the script, under conditions.
        try:
            environ = (self._proc / str(caller.pid) / "environ").read_bytes().split(b"\0")
            argv = [a.decode(errors="replace") for a in
                    (self._proc / str(caller.pid) / "cmdline").read_bytes().split(b"\0") if a]
        except OSError as e:
            evidence["error"] = f"cannot read the command line or environment: {e.strerror}"
            return None
        names = {e.split(b"=", 1)[0].decode(errors="replace") for e in environ if b"=" in e}
        injected = sorted(names & INJECTION_VARS)
        if injected:
            evidence["error"] = (f"interpreter run with {', '.join(injected)} set: "
                                 "code may be injected")
            return None
        script = script_argument(argv)
        if script is None:
            evidence["error"] = "interpreter runs no script file (-c, -m, stdin or REPL)"
            return None
        if not script.startswith("/"):
            try:
                script = os.path.join(os.readlink(f"{pid_dir}/cwd"), script)
            except OSError as e:
                evidence["error"] = f"cannot resolve the script's directory: {e.strerror}"
                return None
        try:
            status = _procfs.read_status(caller.pid, self._proc)
            st, dst = os.stat(script), os.stat(os.path.dirname(script))
        except (OSError, ValueError, KeyError) as e:
            evidence["error"] = f"cannot examine the script: {e}"
            return None
        gids = {caller.gid, *status.groups}
        if _writable_by(st, caller.uid, gids) or _writable_by(dst, caller.uid, gids):
            evidence["error"] = f"script {script} (or its directory) is writable by the caller"
            return None
        return script, "script"

    def _check(self, fd: int, path: str, kind: str, evidence: dict[str, str]) -> Attestation:
        evidence["artifact"] = kind
        if self._verifier is None and time.monotonic() - self._tried >= RETRY:
            self._load_root()
        if self._verifier is None:
            evidence["error"] = f"trusted-root: {self._verifier_error or 'not loaded'}"
            evidence["failed_check"] = "trusted-root"
            return Attestation(evidence=evidence)
        st = os.fstat(fd)
        real = os.path.realpath(path)
        bundle = self._find_bundle(real, None)
        digest = ""
        if bundle is None:
            digest = _hash(fd)
            bundle = self._find_bundle(real, digest)
        if bundle is None:
            evidence["error"] = f"no Sigstore bundle for {real}"
            return Attestation(evidence=evidence)
        bundle_path, bundle_st = bundle
        cache_key = (_key(st), _key(bundle_st))
        result = self._cache.get(cache_key)
        if result is None:
            digest = digest or _hash(fd)
            try:
                result = verify(self._verifier, Path(bundle_path).read_bytes(), digest,
                                predicate_types=tuple(self._cfg.predicate_types))
            except CheckFailed as e:
                result = e
            except OSError as e:
                result = CheckFailed("bundle", f"cannot read {bundle_path}: {e.strerror}")
            self._cache[cache_key] = result
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        evidence["bundle"] = bundle_path
        if isinstance(result, CheckFailed):
            evidence["error"] = str(result)
            evidence["failed_check"] = result.check
            return Attestation(evidence=evidence)
        return Attestation(selectors=_selectors(result, kind), evidence={
            **evidence, "signer": result.identity, "issuer": result.issuer})

    def _find_bundle(self, real: str, digest: str | None) -> tuple[str, os.stat_result] | None:
        candidates = ([f"{real}.sigstore.json", f"{real}.sigstore"] if digest is None
                      else [str(d / f"{digest}.sigstore.json") for d in self._cfg.bundle_dirs])
        for c in candidates:
            try:
                return c, os.stat(c)
            except OSError:
                continue
        return None

    def state(self) -> str:
        problem = self.problem()
        if problem is not None:
            return f"failing: {problem}"
        return f"ready, {len(self._cache)} verdicts cached"

    def problem(self) -> str | None:
        if self._verifier is None and time.monotonic() - self._tried >= RETRY:
            self._load_root()
        return None if self._verifier_error is None else f"trusted_root: {self._verifier_error}"

    async def aclose(self) -> None:
        self._cache.clear()


def _hash(fd: int) -> str:
    h = hashlib.sha256()
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, CHUNK):
        h.update(chunk)
    return h.hexdigest()


def _selectors(v: Verified, kind: str) -> tuple[str, ...]:
    out = [value("verified", "true"), value("artifact", kind)]
    if v.identity:
        out.append(value("identity", v.identity))
    if v.issuer:
        out.append(value("issuer", v.issuer))
    for name in ("repository", "ref", "workflow"):
        if name in v.facts:
            out.append(value(name, v.facts[name]))
    if v.builder_id:
        out.append(value("builder", v.builder_id))
    return tuple(out)
