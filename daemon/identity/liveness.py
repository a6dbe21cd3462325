"""Is the process a connection pinned still the one there, running the same program?"""

from __future__ import annotations

import os
import select
from pathlib import Path

from ensign.daemon import procfs
from ensign.daemon.errors import CallerGone
from ensign.daemon.models import Caller


def check_alive(caller: Caller, proc_root: Path = Path("/proc")) -> None:
    """Raise CallerGone unless the pinned process still runs under the same pid.

    A pidfd names one process, not a pid: while it does not report an exit, the process we
    pinned at connect time is alive, so its pid cannot have been reused and no /proc read is
    needed. Without a pidfd (old kernels), the start time is compared instead.
    """
    if caller.pidfd is not None:
        poller = select.poll()
        poller.register(caller.pidfd, select.POLLIN)
        if poller.poll(0):
            raise CallerGone(f"caller pid {caller.pid} exited")
        return
    try:
        start = procfs.read_stat(caller.pid, proc_root).start_ticks
    except (OSError, ValueError, IndexError):
        raise CallerGone(f"caller pid {caller.pid} exited") from None
    if start != caller.start_ticks:
        raise CallerGone(f"pid {caller.pid} now belongs to another process")


def same_image(caller: Caller, st: os.stat_result) -> None:
    """Raise CallerGone if the process runs another executable than when it connected: the
    connection was made by a program that is gone (exec after connect)."""
    if caller.exe is not None and caller.exe != (st.st_dev, st.st_ino):
        raise CallerGone(f"pid {caller.pid} runs another program than the one that connected")
