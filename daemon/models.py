"""Plain data shared across modules: the verified caller and what attestation found."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Caller:
    """A process on the other end of a Unix socket, as the kernel reported it at connect time.

    `start_ticks` (field 22 of /proc/PID/stat) and `pidfd` pin the process: a later process
    that reuses the pid has another start time, and the pidfd turns readable when ours exits.
    """

    pid: int
    uid: int
    gid: int
    start_ticks: int
    pidfd: int | None = field(default=None, compare=False)
    #: (device, inode) of its executable when it connected: an exec since then is refused.
    #: Not ctime: a chmod or a new hard link of a running binary is not another program.
    exe: tuple[int, int] | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Attestation:
    """One attestor's findings: selector values without the attestor prefix ("uid:1000")."""

    selectors: tuple[str, ...] = ()
    evidence: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AttestedCaller:
    caller: Caller
    selectors: frozenset[str]  # prefixed: "unix:uid:1000"
    evidence: dict[str, str]
    fresh: bool = True  # False when served from the attestation cache
