"""Pure parsers for /proc/PID/stat and /proc/PID/status, plus small readers around them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class ProcStat:
    comm: str
    state: str
    ppid: int
    start_ticks: int


@dataclass(frozen=True, slots=True)
class ProcStatus:
    uids: tuple[int, int, int, int]  # real, effective, saved, filesystem
    gids: tuple[int, int, int, int]
    groups: tuple[int, ...]


def parse_stat(text: str) -> ProcStat:
    """Parse /proc/PID/stat. The comm field may hold spaces and ')', so split on the last ')'."""
    open_paren = text.index("(")
    close_paren = text.rindex(")")
    comm = text[open_paren + 1 : close_paren]
    fields = text[close_paren + 2 :].split()
    # fields[0] is field 3 (state); starttime is field 22, so index 19 here.
    return ProcStat(comm=comm, state=fields[0], ppid=int(fields[1]), start_ticks=int(fields[19]))


def parse_status(text: str) -> ProcStatus:
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        values[key] = rest.strip()
    uids = tuple(int(x) for x in values["Uid"].split())
    gids = tuple(int(x) for x in values["Gid"].split())
    groups = tuple(int(x) for x in values.get("Groups", "").split())
    return ProcStatus(uids=(uids[0], uids[1], uids[2], uids[3]),
                      gids=(gids[0], gids[1], gids[2], gids[3]), groups=groups)


def _read(path: Path) -> str:
    # The process names itself (comm, in both files): any bytes, UTF-8 or not.
    return path.read_bytes().decode("utf-8", "surrogateescape")


def read_stat(pid: int, proc_root: Path = Path("/proc")) -> ProcStat:
    return parse_stat(_read(proc_root / str(pid) / "stat"))


def read_status(pid: int, proc_root: Path = Path("/proc")) -> ProcStatus:
    return parse_status(_read(proc_root / str(pid) / "status"))
