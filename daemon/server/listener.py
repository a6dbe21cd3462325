"""Unix-socket gRPC servers: stale-socket handling, file modes, and peer tracking."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections.abc import Collection
from pathlib import Path
from typing import Any

import h2.connection
from grpclib.config import Configuration

from ensign.daemon.errors import ConfigError
from ensign.daemon.server import bounds as message_limit
from ensign.daemon.server.peercred import PeerTracker, TrackingServer

WORKLOAD_SOCKET_MODE = 0o666
ADMIN_SOCKET_MODE = 0o600

# h2 remembers how each closed stream ended, up to 65,536 per connection, to answer late frames
# precisely. A client that keeps one connection and makes many calls (every SPIFFE client does)
# grew the daemon by ~150 bytes per call until that bound, several MiB per connection: a local
# caller could spend the daemon's memory. A late frame on a forgotten stream is answered with a
# stream error instead, which is all a peer needs. grpclib builds its H2Connection itself, so
# the bound is set on the class (this process serves nothing else over HTTP/2).
CLOSED_STREAMS_REMEMBERED = 256
h2.connection.H2Connection.MAX_CLOSED_STREAMS = CLOSED_STREAMS_REMEMBERED


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

    def __init__(self, path: Path, mode: int, handlers: Collection[Any], tracker: PeerTracker,
                 gid: int | None = None):
        self.path = path
        self._mode = mode
        self._gid = gid
        message_limit.install()  # request messages are bounded before they are buffered
        self._server = TrackingServer(handlers, tracker, config=Configuration())

    async def start(self) -> None:
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
