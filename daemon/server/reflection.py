"""gRPC server reflection (v1 and v1alpha) for one socket, listing exactly what it serves.

The Workload API endpoint spec (§7) asks for reflection, so that `grpcurl` and grpcio's
reflection client can discover the services. The list is derived from the services the socket
is given, so a service wired later is listed without anyone remembering to add it. Reflection
needs no security header and reveals only the public proto descriptors. Descriptors are looked
up in Ensign's private pool (the package-less Workload API) before protobuf's default pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf import descriptor_pool
from grpclib.reflection._deprecated import ServerReflection as ServerReflectionV1Alpha
from grpclib.reflection.service import ServerReflection

from ensign.daemon.server.translate import Service, translated
from ensign.proto import workload_pb2

REFLECTION_SERVICES = ("grpc.reflection.v1.ServerReflection",
                       "grpc.reflection.v1alpha.ServerReflection")


def service_names(services: Sequence[Service]) -> list[str]:
    """The fully qualified names of the services whose methods these handlers serve."""
    return sorted({path.split("/")[1] for s in services for path in s.__mapping__()})


def with_reflection(services: Sequence[Service]) -> list[Service]:
    """`services` and the reflection services, which list all of them and themselves."""
    names = sorted({*service_names(services), *REFLECTION_SERVICES})
    # the Workload API's descriptors live in a pool of their own (see ensign.proto._pool)
    pools = _Pools(workload_pb2.DESCRIPTOR.pool, descriptor_pool.Default())
    return [*services,
            translated(ServerReflection(_service_names=names, _pool=pools).__mapping__()),
            translated(ServerReflectionV1Alpha(_service_names=names, _pool=pools).__mapping__())]


class _Pools:
    """The lookups reflection makes (protobuf's DescriptorPool names), tried in each pool in
    turn; KeyError when in none."""

    def __init__(self, *pools: Any) -> None:
        self._pools = pools

    def _first(self, method: str, *args: Any) -> Any:
        for pool in self._pools:
            try:
                return getattr(pool, method)(*args)
            except KeyError:
                continue
        raise KeyError(args[0])

    def FindFileByName(self, name: str) -> Any:
        return self._first("FindFileByName", name)

    def FindFileContainingSymbol(self, symbol: str) -> Any:
        return self._first("FindFileContainingSymbol", symbol)

    def FindMessageTypeByName(self, name: str) -> Any:
        return self._first("FindMessageTypeByName", name)

    def FindExtensionByNumber(self, message: Any, number: int) -> Any:
        return message.file.pool.FindExtensionByNumber(message, number)

    def FindAllExtensions(self, message: Any) -> Any:
        return message.file.pool.FindAllExtensions(message)
