"""The one module that reaches into the transport: who is on the other end of a connection.

grpclib does not expose the socket of a connection, so the server's protocol factory is wrapped
to read SO_PEERCRED and open a pidfd the moment a connection is accepted. Handlers then look
the caller up by their stream's transport. The kernel fixes SO_PEERCRED at connect(); the pidfd
and the process start time pin that process, so a later process reusing the pid is caught.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import select
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grpclib.protocol import H2Protocol
from grpclib.server import Server, Stream

from ensign.daemon import procfs as _procfs
from ensign.daemon.models import Caller
from ensign.daemon.server.cork import CorkedTransport
from ensign.daemon.server.limits import UidLimits

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_UCRED = struct.Struct("3i")
SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)  # asm-generic value; Python 3.11 lacks it


@dataclass(slots=True)
class Connection:
    """What we learned about one accepted connection."""

    caller: Caller | None
    problem: str | None  # why no caller could be pinned (the process was already gone, ...)
    over_limit: bool = False  # this uid already had max_connections_per_uid open


def _boot_seconds() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def _peer_pidfd(sock: socket.socket) -> int | None:
    """SO_PEERPIDFD (Linux 6.5+): a pidfd for the very process that called connect(), taken by
    the kernel, so no pid race at all. None where the kernel does not have it; -1 when the
    peer has already been reaped (6.5-6.8 refuse the option then; later kernels hand out a
    pidfd whose fdinfo says Pid: -1, which the caller checks)."""
    try:
        return int(sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD))
    except OSError as e:
        if e.errno in (errno.ENOPROTOOPT, errno.EOPNOTSUPP):
            return None
        return -1


def _pidfd_pid(pidfd: int) -> int:
    """The pid a pidfd names now (-1 once the process has exited), from its fdinfo."""
    with open(f"/proc/self/fdinfo/{pidfd}", "rb") as f:
        for line in f:
            if line.startswith(b"Pid:"):
                return int(line.split()[1])
    raise ValueError("pidfd fdinfo has no Pid line")


def _exe_image(pid: int, proc_root: Path) -> tuple[int, int] | None:
    """(device, inode) of the executable the process runs, if the daemon may look."""
    try:
        st = os.stat(f"{proc_root}/{pid}/exe")
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _alive(pidfd: int) -> bool:
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return not poller.poll(0)


def identify(sock: socket.socket, proc_root: Path = Path("/proc")) -> Connection:
    """Read the peer's credentials and pin its process. Never raises: problems are recorded.

    Everything read from /proc here is confirmed to describe the process that connected: the
    pidfd (from the kernel itself where SO_PEERPIDFD exists) must still be alive after the
    reads, its uid must be the one SO_PEERCRED reported, and it must have started before the
    connection was accepted.
    """
    accepted_at = _boot_seconds()
    try:
        pid, uid, gid = _UCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        )
    except OSError as e:
        return Connection(None, f"cannot read peer credentials: {e.strerror}")
    if pid <= 0:
        return Connection(None, "peer has no pid (another pid namespace?)")
    pidfd = _peer_pidfd(sock)
    if pidfd == -1:
        return Connection(None, f"caller pid {pid} exited before it was pinned")
    if pidfd is not None:
        try:
            named = _pidfd_pid(pidfd)
        except (OSError, ValueError):
            named = pid  # fdinfo unreadable: the pidfd still pins the process
        if named != pid:
            _close(pidfd)
            return Connection(None, f"caller pid {pid} exited before it was pinned")
    else:
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return Connection(None, f"caller pid {pid} exited before it was pinned")
        except OSError:
            pidfd = None  # kernels before 5.3: the start-time check still guards reuse
    try:
        start = _procfs.read_stat(pid, proc_root).start_ticks
        euid = _procfs.read_status(pid, proc_root).uids[1]
    except (OSError, ValueError, IndexError, KeyError):
        _close(pidfd)
        return Connection(None, f"caller pid {pid} exited before it was pinned")
    exe = _exe_image(pid, proc_root)
    # A process that started after we accepted the connection cannot be the one that connected:
    # the caller exited and its pid was reused already.
    if pidfd is not None and not _alive(pidfd):  # what we read may be another process's
        _close(pidfd)
        return Connection(None, f"caller pid {pid} exited before it was pinned")
    if start / _CLK_TCK > accepted_at + 2 / _CLK_TCK:
        _close(pidfd)
        return Connection(None, f"pid {pid} was reused before the connection was pinned")
    if euid != uid:
        _close(pidfd)
        return Connection(None, f"pid {pid} runs as uid {euid}, not the uid {uid} that "
                                "connected")
    return Connection(Caller(pid=pid, uid=uid, gid=gid, start_ticks=start, pidfd=pidfd,
                             exe=exe), None)


def _close(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


class PeerTracker:
    """Maps live transports to the connection facts captured at accept time."""

    def __init__(self, proc_root: Path = Path("/proc"), limits: UidLimits | None = None) -> None:
        self._proc = proc_root
        self._connections: dict[int, Connection] = {}
        self.limits = limits

    def __len__(self) -> int:
        return len(self._connections)

    def connected(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        conn = (
            identify(sock, self._proc)
            if sock is not None
            else Connection(None, "connection has no socket")
        )
        if conn.caller is not None and self.limits is not None:
            conn.over_limit = not self.limits.connect(conn.caller.uid)
        self._connections[id(transport)] = conn

    def disconnected(self, transport: asyncio.BaseTransport) -> None:
        conn = self._connections.pop(id(transport), None)
        if conn is not None and conn.caller is not None:
            _close(conn.caller.pidfd)
            if self.limits is not None:
                self.limits.disconnect(conn.caller.uid)

    def connection_of(self, stream: Stream[Any, Any]) -> Connection:
        # NOTE: grpclib's Peer keeps the transport private; this is the only place we read it.
        transport = stream.peer._transport
        return self._connections.get(
            id(transport), Connection(None, "connection was not tracked")
        )

    def close_all(self) -> None:
        for conn in self._connections.values():
            if conn.caller is not None:
                _close(conn.caller.pidfd)
        self._connections.clear()


class TrackingServer(Server):
    """A grpclib Server whose connections are registered with a PeerTracker when accepted."""

    def __init__(self, handlers: Any, tracker: PeerTracker, **kwargs: Any) -> None:
        super().__init__(handlers, **kwargs)
        self.tracker = tracker

    def _protocol_factory(self) -> H2Protocol:
        protocol = super()._protocol_factory()
        made: Callable[[asyncio.BaseTransport], None] = protocol.connection_made
        lost: Callable[[BaseException | None], None] = protocol.connection_lost
        tracker = self.tracker
        seen: list[asyncio.BaseTransport] = []

        def connection_made(transport: asyncio.BaseTransport) -> None:
            if isinstance(transport, asyncio.Transport):  # one send per reply (cork.py)
                transport = CorkedTransport(transport, asyncio.get_running_loop())
            seen.append(transport)
            tracker.connected(transport)
            made(transport)

        def connection_lost(exc: BaseException | None) -> None:
            try:
                lost(exc)
            finally:
                for transport in seen:
                    tracker.disconnected(transport)

        # NOTE: grpclib offers no connection hook; wrapping the protocol's callbacks is the
        # narrowest reach-in that sees every connection before its first request.
        protocol.connection_made = connection_made  # type: ignore[method-assign]
        protocol.connection_lost = connection_lost  # type: ignore[method-assign]
        return protocol
