"""Which script an interpreter runs, known from a trusted launcher rather than from the process.

A process's command line, environment and working directory are its own memory: it can
rewrite them, so they cannot say which script runs. What a system unit's definition says can
be trusted, if only root could have written it and the process is that unit's: then systemd
started the interpreter with the definition's ExecStart. `launched_script()` returns the script
only when every rule holds, else raises ScriptRefused naming the rule:

- `system-unit`: the caller's cgroup is a host system service (systemd attestor's rule);
- `unit-file`: its definition is a regular file, no symlink, in one of `unit_dirs`, with every
  directory and the file root's alone; no drop-in (`<unit>.d/*.conf`, `service.d`, ...) applies;
- `exec-start`: exactly one ExecStart, a plain command (no quotes, `%` specifiers, `$`
  variables, `\\` escapes or prefixes): an absolute interpreter among `interpreters`, only
  allowed flags (python: `-I` required, `-s -E -B -P -u -O` allowed, each its own word; node:
  none), then an absolute script path;
- `environment`: no Environment=, EnvironmentFile= or PassEnvironment= of the unit, and not the
  process's own environment, sets a variable that makes the interpreter load other code;
- `interpreter`: the process's executable is ExecStart's interpreter;
- `cmdline`: the process's command line is ExecStart's, word for word.

The script itself is then opened by the attestor through /proc/PID/root (sigstore.py).
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ensign.daemon.text import escape

from . import _files
from .systemd import parse_cgroup, system_unit

#: systemd's unit search path, highest precedence first (systemd.unit(5)).
UNIT_DIRS = (
    "/etc/systemd/system.control", "/run/systemd/system.control", "/run/systemd/transient",
    "/run/systemd/generator.early", "/etc/systemd/system", "/run/systemd/system",
    "/run/systemd/generator", "/usr/local/lib/systemd/system", "/usr/lib/systemd/system",
    "/run/systemd/generator.late", "/lib/systemd/system",
)
#: Variables that make an interpreter (or the dynamic loader) run code other than the script.
INJECTION_VARS = frozenset({
    "LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME",
    "PYTHONUSERBASE", "PYTHONINSPECT", "PYTHONEXECUTABLE", "PYTHONPLATLIBDIR", "NODE_OPTIONS",
    "NODE_PATH", "PERL5LIB", "PERL5OPT", "PERLLIB", "RUBYOPT", "RUBYLIB", "BASH_ENV", "ENV",
})
PYTHON_FLAGS = frozenset({"-I", "-s", "-E", "-B", "-P", "-u", "-O"})
MAX_UNIT_BYTES = 1 << 20
_WORD = re.compile(r"[A-Za-z0-9_./@:+,=-]+")
_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ScriptRefused(Exception):
    def __init__(self, rule: str, why: str) -> None:
        super().__init__(f"script not attested ({rule}): {why}")
        self.rule = rule


@dataclass(frozen=True, slots=True)
class Launch:
    unit: str
    unit_file: str
    interpreter: str  # ExecStart's argv[0]
    script: str       # absolute, in the process's root


def interpreter_kind(path: str) -> str | None:
    name = os.path.basename(path)
    if re.fullmatch(r"python[0-9.]*", name):
        return "python"
    if name in ("node", "nodejs"):
        return "node"
    return None


def script_of(argv: Sequence[str], kind: str) -> str:
    """The script of an ExecStart argv whose flags are all allowed (see the module's doc)."""
    i = 1
    if kind == "python":
        while i < len(argv) and argv[i].startswith("-"):
            if argv[i] not in PYTHON_FLAGS:
                raise ScriptRefused("exec-start", f"interpreter flag {argv[i]} is not allowed "
                                    f"(allowed: {' '.join(sorted(PYTHON_FLAGS))})")
            i += 1
        if "-I" not in argv[1:i]:
            raise ScriptRefused("exec-start", "python must run with -I (isolated mode)")
    if i >= len(argv):
        raise ScriptRefused("exec-start", "ExecStart names no script")
    script = argv[i]
    if script.startswith("-"):
        raise ScriptRefused("exec-start", f"{kind} flags are not allowed ({script})")
    if not _files.clean_absolute(script):
        raise ScriptRefused("exec-start", f"script {script} is not a plain absolute path")
    return script


def parse_service(text: str) -> dict[str, list[str]]:
    """The [Service] section's assignments in order (an empty one resets the list)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            raise ScriptRefused("unit-file", "line continuations are not supported")
        if line.startswith("["):
            section = line
            continue
        key, sep, val = line.partition("=")
        if not sep:
            raise ScriptRefused("unit-file", f"cannot parse line {escape(line[:60])!r}")
        if section == "[Service]":
            key, val = key.strip(), val.strip()
            if val:
                out.setdefault(key, []).append(val)
            else:
                out[key] = []
    return out


def exec_start(service: dict[str, list[str]]) -> list[str]:
    lines = service.get("ExecStart", [])
    if len(lines) != 1:
        raise ScriptRefused("exec-start", f"the unit has {len(lines)} ExecStart lines, not one")
    argv = lines[0].split()
    if not argv[0].startswith("/"):
        raise ScriptRefused("exec-start", "ExecStart has a prefix or a relative command")
    for word in argv:
        if not _WORD.fullmatch(word):
            raise ScriptRefused("exec-start", f"ExecStart word {escape(word)!r} has quotes, "
                                "specifiers, variables or escapes")
    return argv


def assigned_names(assignments: str) -> list[str]:
    """Variable names an Environment= value assigns."""
    try:
        words = shlex.split(assignments)
    except ValueError:
        raise ScriptRefused("environment", "cannot parse Environment=") from None
    names = [w.partition("=")[0] for w in words]
    if any(not _VAR.fullmatch(n) for n in names):
        raise ScriptRefused("environment", "Environment= assigns a name that is not plain")
    return names


def env_file_names(text: str) -> list[str]:
    names = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        name = line.partition("=")[0].strip()
        if "=" not in line or not _VAR.fullmatch(name) or line.endswith("\\"):
            raise ScriptRefused("environment", "an EnvironmentFile line is not NAME=value")
        names.append(name)
    return names


def _injected(names: Sequence[str], where: str) -> None:
    bad = sorted(set(names) & INJECTION_VARS)
    if bad:
        raise ScriptRefused("environment", f"{where} sets {', '.join(bad)}: code may be injected")


def _read_trusted(path: str, what: str) -> bytes:
    """A file of the host's, read only if root alone could have written it."""
    root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd, dir_fd, _ = _files.open_trusted(root, path, what, MAX_UNIT_BYTES)
    except _files.Refused as e:
        raise ScriptRefused("unit-file" if what == "unit file" else "environment",
                            str(e)) from None
    finally:
        os.close(root)
    try:
        return _files.read_capped(fd, what, MAX_UNIT_BYTES)
    finally:
        _files.close_all(fd, dir_fd)


def _drop_in_dirs(unit: str) -> list[str]:
    stem, _, kind = unit.rpartition(".")
    names = [f"{unit}.d", f"{kind}.d"]
    if "@" in stem:
        names.append(f"{stem.partition('@')[0]}@.{kind}.d")
    dashes = [i for i, c in enumerate(stem) if c == "-"]
    names += [f"{stem[:i]}-.{kind}.d" for i in dashes]
    return names


def find_unit_file(unit: str, unit_dirs: Sequence[Path]) -> str:
    """The definition systemd would load for `unit` (an instance before its template)."""
    for d in unit_dirs:
        for name in _drop_in_dirs(unit):
            conf = Path(os.path.realpath(d)) / name
            if conf.is_dir() and any(p.name.endswith(".conf") for p in conf.iterdir()):
                raise ScriptRefused("unit-file", f"drop-ins in {escape(str(conf))} apply to "
                                    f"{unit}: not attested (write the settings in the unit)")
    names = [unit]
    stem, _, kind = unit.rpartition(".")
    if "@" in stem:
        names.append(f"{stem.partition('@')[0]}@.{kind}")
    for name in names:
        for d in unit_dirs:
            candidate = os.path.join(os.path.realpath(d), name)
            if os.path.lexists(candidate):
                return candidate
    raise ScriptRefused("unit-file", f"no definition of {unit} in unit_dirs")


def launched_script(pid: int, exe: str, unit_dirs: Sequence[Path], interpreters: set[str],
                    proc_root: Path = Path("/proc")) -> Launch:
    """The script systemd launched as this process, or ScriptRefused (see the module's doc)."""
    try:
        raw = (proc_root / str(pid) / "cgroup").read_bytes()
        cmdline = (proc_root / str(pid) / "cmdline").read_bytes()
        environ = (proc_root / str(pid) / "environ").read_bytes()
    except OSError as e:
        raise ScriptRefused("system-unit", f"cannot read the process: {e.strerror}") from None
    cgroup = parse_cgroup(raw.decode("utf-8", "surrogateescape")) or ""
    found = system_unit(cgroup)
    if found is None or not found[0].endswith(".service"):
        raise ScriptRefused("system-unit", f"caller is not in a system service "
                            f"(cgroup {escape(cgroup)})")
    unit = found[0]
    unit_file = find_unit_file(unit, unit_dirs)
    try:
        text = _read_trusted(unit_file, "unit file").decode()
    except UnicodeDecodeError:
        raise ScriptRefused("unit-file", f"{escape(unit_file)} is not UTF-8") from None
    service = parse_service(text)
    argv = exec_start(service)
    interpreter = os.path.realpath(argv[0])
    kind = interpreter_kind(interpreter)
    if interpreter not in interpreters or kind is None:
        raise ScriptRefused("exec-start", f"ExecStart runs {argv[0]}, not one of interpreters")
    script = script_of(argv, kind)
    for value in service.get("Environment", []):
        _injected(assigned_names(value), "Environment=")
    for value in service.get("PassEnvironment", []):
        _injected(value.split(), "PassEnvironment=")
    for value in service.get("EnvironmentFile", []):
        path = value[1:] if value.startswith("-") else value
        if value.startswith("-") and not os.path.lexists(path):
            continue
        try:
            names = env_file_names(_read_trusted(path, "EnvironmentFile").decode())
        except UnicodeDecodeError:
            raise ScriptRefused("environment", "EnvironmentFile is not UTF-8") from None
        _injected(names, f"EnvironmentFile {escape(path)}")
    names = [e.split(b"=", 1)[0].decode("utf-8", "replace") for e in environ.split(b"\0")
             if b"=" in e]
    _injected(names, "the process's environment")
    if os.path.realpath(exe.removesuffix(" (deleted)")) != interpreter:
        raise ScriptRefused("interpreter", f"the process runs {escape(exe)}, not {argv[0]}")
    if cmdline.split(b"\0")[:-1] != [w.encode() for w in argv]:
        raise ScriptRefused("cmdline", f"the process's command line is not {unit}'s ExecStart")
    return Launch(unit=unit, unit_file=unit_file, interpreter=argv[0], script=script)
