"""The systemd attestor: which unit the caller runs in, read from its cgroup (v2).

The kernel places every process of a unit in the unit's cgroup, so /proc/PID/cgroup names the
unit without asking D-Bus. But a cgroup's name only means "this unit of the host's systemd"
where nobody else can name cgroups: only root creates cgroups under the host's system slices.
A container, a delegated unit or a user's manager may create any name below its own subtree
(`/machine.slice/machine-web.scope/payload/system.slice/nginx.service`), so:

- `id` and `slice` are given only when the whole path is system slices (each named after its
  parent, never `user.slice`) ending in exactly one unit, with systemd's unit-name characters;
- a process in a sub-cgroup of a unit (which only a unit with `Delegate=` can make) is given
  nothing: its name below the unit is the unit's own choice;
- units under a user's manager (`/user.slice/user-UID.slice/user@UID.service/...`) are
  reported as `user_id` and `user_manager`, never as `id`: the user names those cgroups.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar

from ensign.daemon.config_types import StrictModel
from ensign.daemon.models import Attestation, Caller
from ensign.daemon.text import escape

from .base import AttestorError, value

UNIT_SUFFIXES = (".service", ".scope", ".socket", ".mount", ".swap", ".timer")
# systemd's unit name characters (unit_name_is_valid): ASCII letters, digits and ":-_.\@".
_UNIT = re.compile(r"[A-Za-z0-9:_.\\@-]{1,250}\.(service|scope|socket|mount|swap|timer)")
_SLICE = re.compile(r"[A-Za-z0-9:_.\\-]{1,250}\.slice")
_USER_MANAGER = re.compile(r"user@(\d{1,10})\.service")


class SystemdConfig(StrictModel):
    enabled: bool = True


def parse_cgroup(text: str) -> str | None:
    """The cgroup v2 path of a process (the `0::` line), or None on a v1-only system."""
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None


def system_unit(cgroup_path: str) -> tuple[str, str | None] | None:
    """(unit, its slice) when the path is system slices down to one unit, else None.

    Slices nest by name (`/a.slice/a-b.slice/x.service`), so each slice must be named after
    the one above it; the top one is anything but `user.slice`. `/init.scope` has no slice.
    """
    parts = cgroup_path.split("/")
    if len(parts) < 2 or parts[0] != "" or not _UNIT.fullmatch(parts[-1]):
        return None
    slices = parts[1:-1]
    parent = ""
    for s in slices:
        if not _SLICE.fullmatch(s) or s == "-.slice":
            return None
        stem = s[: -len(".slice")]
        if parent and not stem.startswith(parent + "-"):
            return None
        if not parent and (s == "user.slice" or "-" in stem):
            return None  # a top-level slice has no dash (a dash names a parent)
        parent = stem
    return parts[-1], (slices[-1] if slices else None)


def user_unit(cgroup_path: str) -> tuple[str, str] | None:
    """(unit, uid) for a unit under the user manager of `/user.slice/user-UID.slice`."""
    parts = cgroup_path.split("/")
    if len(parts) < 5 or parts[:2] != ["", "user.slice"]:
        return None
    m = _USER_MANAGER.fullmatch(parts[3])
    if m is None or parts[2] != f"user-{m.group(1)}.slice":
        return None
    units = [p for p in parts[4:] if p.endswith(UNIT_SUFFIXES)]
    return (units[-1], m.group(1)) if units else None


def unit_selectors(cgroup_path: str) -> list[str]:
    """Selector values for a cgroup path. System unit names are systemd's ASCII as they are;
    a user's unit name is escaped (users may name their cgroups with any bytes)."""
    system = system_unit(cgroup_path)
    if system is not None:
        unit, slice_ = system
        return [value("id", unit), *([value("slice", slice_)] if slice_ else [])]
    user = user_unit(cgroup_path)
    if user is not None:
        return [value("user_id", escape(user[0])), value("user_manager", user[1])]
    return []


def read_cgroup(pid: int, proc_root: Path = Path("/proc")) -> str | None:
    """The caller's cgroup v2 path as the kernel wrote it (bytes that are not UTF-8 become
    surrogates: escape() it before recording); None without cgroup v2."""
    try:
        raw = (proc_root / str(pid) / "cgroup").read_bytes()
    except OSError as e:
        raise AttestorError(f"cannot read /proc/{pid}/cgroup: {e.strerror}") from None
    return parse_cgroup(raw.decode("utf-8", "surrogateescape"))


class SystemdAttestor:
    name: ClassVar[str] = "systemd"

    def __init__(self, config: SystemdConfig, *, proc_root: Path = Path("/proc")) -> None:
        self._config = config
        self._proc = proc_root

    async def attest(self, caller: Caller) -> Attestation:
        path = read_cgroup(caller.pid, self._proc)
        if path is None:
            return Attestation(evidence={"note": "no cgroup v2 hierarchy"})
        return Attestation(selectors=tuple(unit_selectors(path)),
                           evidence={"cgroup": escape(path)})

    def state(self) -> str:
        return "ready"

    def problem(self) -> str | None:
        return None

    async def aclose(self) -> None:
        return None
