"""Unix-socket gRPC servers: stale-socket handling, file modes, bounds, and peer tracking."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections.abc import Collection
from pathlib import Path

from grpclib.config import Configuration

from ensign.daemon.errors import ConfigError
from ensign.daemon.server import bounds
from ensign.daemon.server.peercred import PeerTracker, TrackingServer
from ensign.daemon.server.translate import Service

WORKLOAD_SOCKET_MODE = 0o666
ADMIN_SOCKET_MODE = 0o600

def bind_unix(path: Path, mode: int, gid: int | None = None) -> socket.socket:
    """Bind a listening socket at `path` with `mode`, replacing a stale socket file.

    The socket is created under a umask that already yields `mode`, so there is no window in
    which the admin socket is reachable by others.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    if path.exists() or path.is_symlink():
        st = path.lstat()
        if not stat.S_ISSOCK(st.st_mode):
            raise ConfigError(f"{path} exists and is not a socket; refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # nobody listens: a leftover from a previous run
        else:
            raise ConfigError(f"{path} is in use by another running daemon")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o777 & ~mode)
    try:
        sock.bind(str(path))
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot bind {path}: {e.strerror}") from None
    finally:
        os.umask(old)
    if gid is not None:
        os.chown(path, -1, gid)
    os.chmod(path, mode)
    sock.listen(512)
    sock.setblocking(False)
    return sock


class UnixServer:
    """One grpclib server on one Unix socket, with connections tracked by kernel credentials."""

    def __init__(self, path: Path, mode: int, services: Collection[Service], tracker: PeerTracker,
                 gid: int | None = None):
        self.path = path
        self._mode = mode
        self._gid = gid
        self.services = list(services)
        self._server = TrackingServer(self.services, tracker, config=Configuration())

    async def start(self) -> None:
        bounds.install()  # before the first connection: request messages, h2 memory
        sock = bind_unix(self.path, self._mode, self._gid)
        await self._server.start(sock=sock)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._server.close()

    async def wait_closed(self) -> None:
        with contextlib.suppress(RuntimeError):
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
