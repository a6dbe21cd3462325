"""The gRPC services, thin, behind one front (front.py): header → caller → attestation →
identities → audit of every refusal. Servicer methods take `(stream, call)`; `Front.serve`
binds them to the generated service definitions with errors translated once per service.

Services: the SPIFFE Workload API, Envoy's SDS, delegation (token exchange), TPM evidence,
agent actions and health on the Workload API socket; the admin API on the admin socket.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ensign.daemon.api.actions import ActionsApi
    from ensign.daemon.api.admin import AdminApi
    from ensign.daemon.api.attestation import AttestationApi, evidence_from_pb, evidence_to_pb
    from ensign.daemon.api.delegation import DelegationApi
    from ensign.daemon.api.front import Call, Front, Policy, check_security_header, recv
    from ensign.daemon.api.health import REASON_KEY, HealthService
    from ensign.daemon.api.sds import SecretDiscoveryApi
    from ensign.daemon.api.workload import WorkloadApi
else:  # each service on first use (ensign.daemon.lazy): the CLI needs one constant, not them all
    from ensign.daemon.lazy import lazy

    __getattr__ = lazy(__name__, {
        ".actions": ("ActionsApi",),
        ".admin": ("AdminApi",),
        ".attestation": ("AttestationApi", "evidence_from_pb", "evidence_to_pb"),
        ".delegation": ("DelegationApi",),
        ".front": ("Call", "Front", "Policy", "check_security_header", "recv"),
        ".health": ("REASON_KEY", "HealthService"),
        ".sds": ("SecretDiscoveryApi",),
        ".workload": ("WorkloadApi",),
    })

__all__ = [
    "REASON_KEY", "ActionsApi", "AdminApi", "AttestationApi", "Call", "DelegationApi", "Front",
    "HealthService", "Policy", "SecretDiscoveryApi", "WorkloadApi", "check_security_header",
    "evidence_from_pb", "evidence_to_pb", "recv",
]
