"""The systemd attestor: which unit the caller runs in, read from its cgroup (v2).

The kernel places every process of a unit in the unit's cgroup, so /proc/PID/cgroup names the
unit without asking D-Bus. Units under a user manager (`user@UID.service`) live in a subtree the
user may write to, so a user could name a cgroup after any unit: those are reported under a
separate key, `user_id`, and never as `id`, which only system units get.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from ensign.daemon.config_types import StrictModel
from ensign.daemon.models import Attestation, Caller

from .base import AttestorError, value

UNIT_SUFFIXES = (".service", ".scope", ".socket", ".mount", ".swap", ".timer")


class SystemdConfig(StrictModel):
    enabled: bool = True


def parse_cgroup(text: str) -> str | None:
    """The cgroup v2 path of a process (the `0::` line), or None on a v1-only system."""
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None


def unit_selectors(cgroup_path: str) -> list[str]:
    parts = [p for p in cgroup_path.split("/") if p]
    user_manager = next((i for i, p in enumerate(parts)
                         if p.startswith("user@") and p.endswith(".service")), None)
    units = [i for i, p in enumerate(parts) if p.endswith(UNIT_SUFFIXES)]
    if not units:
        return []
    leaf = units[-1]
    if user_manager is not None and leaf > user_manager:
        uid = parts[user_manager][len("user@"):-len(".service")]
        return [value("user_id", parts[leaf]), value("user_manager", uid)]
    selectors = [value("id", parts[leaf])]
    if leaf > 0 and parts[leaf - 1].endswith(".slice"):
        selectors.append(value("slice", parts[leaf - 1]))
    return selectors


class SystemdAttestor:
    name: ClassVar[str] = "systemd"

    def __init__(self, config: SystemdConfig, *, proc_root: Path = Path("/proc")) -> None:
        self._config = config
        self._proc = proc_root

    async def attest(self, caller: Caller) -> Attestation:
        try:
            text = (self._proc / str(caller.pid) / "cgroup").read_text()
        except OSError as e:
            raise AttestorError(f"cannot read /proc/{caller.pid}/cgroup: {e.strerror}") from None
        path = parse_cgroup(text)
        if path is None:
            return Attestation(evidence={"note": "no cgroup v2 hierarchy"})
        return Attestation(selectors=tuple(unit_selectors(path)), evidence={"cgroup": path})

    def state(self) -> str:
        return "ready"

    def problem(self) -> str | None:
        return None

    async def aclose(self) -> None:
        return None
