"""The audit trail: typed records, the hash-chained log with group commit and signed checkpoints,
and offline verify, query, export and archive.

`AuditLog` (log.py: group commit; its files: segment.py) is the only writer; `verify` and
`query` read the files and work with the daemon stopped; `to_ocsf` (export.py) maps a record to
an OCSF event. `archive` copies old segments out and removes them (through the AuditLog's
writer thread while the daemon runs). Record builders for registry changes are in records.py.
"""

from typing import TYPE_CHECKING

# archive, query and verify are eager: a lazy name may not be a submodule's (ensign.daemon.lazy)
from ensign.daemon.audit.archive import (
    Archive,
    Plan,
    check_drop,
    drop,
    plan,
    remove,
    sha256_file,
    store_plan,
)
from ensign.daemon.audit.event import GENESIS, AuditEvent, EventType, Process, canonical
from ensign.daemon.audit.log import AuditLog
from ensign.daemon.audit.query import AuditFilter, query, read_records
from ensign.daemon.audit.segment import CHECKPOINTS, PUBLIC_KEY, chain_id, segments
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
    "CHECKPOINTS", "GENESIS", "OCSF_VERSION", "PUBLIC_KEY", "Archive", "AuditEvent",
    "AuditFilter", "AuditLog", "ChainCheck", "EventType", "Plan", "Process", "Report",
    "canonical", "chain_id", "change", "check_drop", "checked_checkpoints", "drop",
    "evidence_digest", "plan", "process_of", "query", "read_records", "remove", "segments",
    "sha256_file", "store_plan", "to_ocsf", "tpm_event", "verify",
]
