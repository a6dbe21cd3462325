"""Unix-socket gRPC servers: stale-socket handling, file modes, bounds, and peer tracking."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections.abc import Collection
from pathlib import Path
from typing import Any

from google.protobuf.empty_pb2 import Empty
from grpclib.config import Configuration
from grpclib.const import Cardinality, Handler

from ensign.daemon.errors import ConfigError, WrongSocket
from ensign.daemon.server import bounds, quiet
from ensign.daemon.server.peercred import PeerTracker, TrackingServer
from ensign.daemon.server.translate import Service, translated

WORKLOAD_SOCKET_MODE = 0o666
ADMIN_SOCKET_MODE = 0o600

PROBE_TIMEOUT = 1.0


def bind_unix(path: Path, mode: int, gid: int | None = None) -> socket.socket:
    """Bind a listening socket at `path` with `mode`, replacing a stale socket file.

    The socket is created under a umask that already yields `mode`, so there is no window in
    which the admin socket is reachable by others. A socket file is replaced only when a
    connection to it is refused (nobody listens) and it is still the same file: a live daemon's
    socket, or one we cannot probe, is never unlinked.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    if path.exists() or path.is_symlink():
        st = path.lstat()
        if not stat.S_ISSOCK(st.st_mode):
            raise ConfigError(f"{path} exists and is not a socket; refusing to replace it")
        if not _refused(path):
            raise ConfigError(f"{path} is in use by another running daemon")
        _unlink_if_same(path, st)  # a leftover from a previous run
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


def _refused(path: Path) -> bool:
    """Does a connection to `path` get ECONNREFUSED (no listener)? Any other outcome (accepted,
    a full backlog, no permission) means the socket may be live."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(PROBE_TIMEOUT)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    finally:
        probe.close()
    return False


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _unlink_if_same(path: Path, st: os.stat_result) -> None:
    """Unlink `path` only if it is still the file `st` describes."""
    try:
        if _same_file(path.lstat(), st):
            path.unlink()
    except FileNotFoundError:
        pass


class _Served(dict[str, Handler]):
    """A server's method table that answers a method it does not serve with WrongSocket, as a
    proper gRPC response. grpclib's own answer has no content-type, which its clients report
    as "UNKNOWN: Missing content-type header": useless to someone who used the wrong socket."""

    def __init__(self, mapping: dict[str, Handler], fallback: Handler) -> None:
        super().__init__(mapping)
        self._fallback = fallback

    def get(self, key: str, default: Any = None) -> Handler:
        return super().get(key) or self._fallback


def _unserved(label: str, mapping: dict[str, Handler]) -> Handler:
    services = sorted({path.split("/")[1] for path in mapping})
    message = f"not served on {label}, which serves {', '.join(services)}"

    async def unserved(stream: Any) -> None:
        raise WrongSocket(message)

    path = "/ensign.Unserved/Unserved"  # one metric label, whatever the caller asked for
    service = translated({path: Handler(unserved, Cardinality.UNARY_UNARY, Empty, Empty)})
    return service.__mapping__()[path]


class UnixServer:
    """One grpclib server on one Unix socket, with connections tracked by kernel credentials."""

    def __init__(self, path: Path, mode: int, services: Collection[Service], tracker: PeerTracker,
                 gid: int | None = None, label: str = "this socket"):
        self.path = path
        self._mode = mode
        self._gid = gid
        self.services = list(services)
        self._server = TrackingServer(self.services, tracker, config=Configuration())
        table = self._server._mapping  # grpclib keeps it private; read once, here
        self._server._mapping = _Served(table, _unserved(label, table))
        self._bound: os.stat_result | None = None  # the socket file this server created

    async def start(self) -> None:
        bounds.install()  # before the first connection: request messages, h2 memory
        quiet.install()  # and the log text h2 and hpack would build for nobody
        sock = bind_unix(self.path, self._mode, self._gid)
        self._bound = self.path.lstat()
        await self._server.start(sock=sock)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._server.close()

    async def wait_closed(self) -> None:
        with contextlib.suppress(RuntimeError):
            await self._server.wait_closed()
        # Only the socket file this server bound: never one another daemon put there since,
        # nor one a server that failed to start found in place.
        bound, self._bound = self._bound, None
        if bound is not None:
            _unlink_if_same(self.path, bound)
