"""The generated and installed protobuf modules load side by side in one process."""

from __future__ import annotations

import subprocess
import sys

IMPORTS = """
import spiffe._proto.workload_pb2 as theirs            # py-spiffe's vendored copy
import ensign.proto.workload_pb2 as ours               # ours, in a private pool
from grpclib.health.v1 import health_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_spiffe_validator_config_pb2
from google.rpc import status_pb2
from ensign.proto.sds_grpc import SecretDiscoveryServiceBase
from ensign.daemon.wiring import build
assert theirs.X509SVIDRequest.DESCRIPTOR is not ours.X509SVIDRequest.DESCRIPTOR
print(sorted(SecretDiscoveryServiceBase.__abstractmethods__))
"""


def test_spiffe_envoy_and_ensign_messages_load_in_one_process_in_any_order() -> None:
    lines = [line for line in IMPORTS.strip().splitlines() if line.startswith(("import", "from"))]
    for order in (lines, list(reversed(lines))):
        code = "\n".join(order) + "\n" + IMPORTS.strip().splitlines()[-2] + "\n" + \
            IMPORTS.strip().splitlines()[-1]
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout == "['DeltaSecrets', 'FetchSecrets', 'StreamSecrets']\n"
