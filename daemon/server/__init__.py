"""The Unix-socket gRPC servers: listeners, peer credentials, limits, bounds, error translation.

The only package that reaches into grpclib's and h2's internals (the connection's socket, the
message reader, h2's closed-stream memory, the log text h2 and hpack build). Services on a
socket are `Service`s made by `translated()` (or by the api front, which uses it): errors become
statuses in one place.
"""

from ensign.daemon.server import bounds
from ensign.daemon.server.bounds import ADMIN_MAX_REQUEST_BYTES
from ensign.daemon.server.limits import RateLimited, UidLimits
from ensign.daemon.server.listener import (
    ADMIN_SOCKET_MODE,
    WORKLOAD_SOCKET_MODE,
    UnixServer,
    bind_unix,
)
from ensign.daemon.server.peercred import Connection, PeerTracker, TrackingServer, identify
from ensign.daemon.server.reflection import service_names, with_reflection
from ensign.daemon.server.translate import Service, public_message, translated

__all__ = [
    "ADMIN_MAX_REQUEST_BYTES", "ADMIN_SOCKET_MODE", "WORKLOAD_SOCKET_MODE", "Connection",
    "PeerTracker", "RateLimited", "Service", "TrackingServer", "UidLimits", "UnixServer",
    "bind_unix", "bounds", "identify", "public_message", "service_names", "translated",
    "with_reflection",
]
