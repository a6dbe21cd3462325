"""The gRPC services, thin, behind one front (front.py): header → caller → attestation →
identities → audit of every refusal. Servicer methods take `(stream, call)`; `Front.serve`
binds them to the generated service definitions with errors translated once per service.

Services: the SPIFFE Workload API, Envoy's SDS, delegation (token exchange), TPM evidence and
health on the Workload API socket; the admin API on the admin socket.
"""

from ensign.daemon.api.admin import AdminApi
from ensign.daemon.api.attestation import AttestationApi, evidence_from_pb, evidence_to_pb
from ensign.daemon.api.delegation import DelegationApi
from ensign.daemon.api.front import Call, Front, Policy, check_security_header, recv
from ensign.daemon.api.health import REASON_KEY, HealthService
from ensign.daemon.api.sds import SecretDiscoveryApi
from ensign.daemon.api.workload import WorkloadApi

__all__ = [
    "REASON_KEY", "AdminApi", "AttestationApi", "Call", "DelegationApi", "Front",
    "HealthService", "Policy", "SecretDiscoveryApi", "WorkloadApi", "check_security_header",
    "evidence_from_pb", "evidence_to_pb", "recv",
]
