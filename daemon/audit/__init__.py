"""The audit trail: typed records, the hash-chained log with group commit and signed checkpoints,
and offline verify, query, export and archive.

`AuditLog` (log.py) is the only writer; `verify`, `query` and `archive` read the files and work
with the daemon stopped; `to_ocsf` (export.py) maps a record to an OCSF event. Record builders
for registry changes are in records.py.
"""

from typing import TYPE_CHECKING

# archive, query and verify are eager: a lazy name may not be a submodule's (ensign.daemon.lazy)
from ensign.daemon.audit.archive import archive
from ensign.daemon.audit.event import GENESIS, AuditEvent, EventType, Process, canonical
from ensign.daemon.audit.log import CHECKPOINTS, PUBLIC_KEY, AuditLog, chain_id, segments
from ensign.daemon.audit.query import AuditFilter, query, read_records
from ensign.daemon.audit.verify import ChainCheck, Report, checked_checkpoints, verify

if TYPE_CHECKING:
    from ensign.daemon.audit.export import OCSF_VERSION, to_ocsf
    from ensign.daemon.audit.records import change, evidence_digest, process_of, tpm_event
else:  # OCSF export and the registry's record builders on first use (ensign.daemon.lazy)
    from ensign.daemon.lazy import lazy

    __getattr__ = lazy(__name__, {
        ".export": ("OCSF_VERSION", "to_ocsf"),
        ".records": ("change", "evidence_digest", "process_of", "tpm_event"),
    })

__all__ = [
    "CHECKPOINTS", "GENESIS", "OCSF_VERSION", "PUBLIC_KEY", "AuditEvent", "AuditFilter",
    "AuditLog", "ChainCheck", "EventType", "Process", "Report", "archive", "canonical",
    "chain_id", "change", "checked_checkpoints", "evidence_digest", "process_of", "query",
    "read_records", "segments", "to_ocsf", "tpm_event", "verify",
]
