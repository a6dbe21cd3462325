"""The agent registry: entries (agents and services), roles and grants, their lifecycle and
the events every change emits, kept in memory over a store (SQLite for one node).

Pure records and rules are in `model` (entries, grants) and `policy` (roles); the books
(`Registry`, `RoleBook`, `GrantBook`) apply changes and emit `ChangeEvent`s; `RegistryStore`
is the storage interface, `SqliteStore` its embedded backend and `PgStore` a fleet's shared one.
"""

from typing import TYPE_CHECKING

from ensign.daemon.registry.apply import Desired, Step, apply
from ensign.daemon.registry.events import Action, ChangeEvent, EventHub
from ensign.daemon.registry.grants import GrantBook
from ensign.daemon.registry.model import (
    DAEMON_ACTOR,
    KINDS,
    SELECTOR_TYPES,
    STATES,
    TRANSITIONS,
    Entry,
    Grant,
    ListFilter,
    StateChange,
    validate_entry,
    validate_filter,
    validate_selector,
)
from ensign.daemon.registry.policy import (
    AudienceDenied,
    Role,
    audience_matches,
    jwt_ttl_cap,
    validate_role,
    x509_ttl_cap,
)
from ensign.daemon.registry.registry import Registry
from ensign.daemon.registry.roles import RoleBook
from ensign.daemon.registry.sqlite import SqliteStore
from ensign.daemon.registry.store import RegistryStore, Write

if TYPE_CHECKING:
    from ensign.daemon.registry.postgres import Changes, PgStore
else:  # psycopg is a fleet's alone: imported on first use (ensign.daemon.lazy)
    from ensign.daemon.lazy import lazy

    __getattr__ = lazy(__name__, {".postgres": ("Changes", "PgStore")})

__all__ = [
    "DAEMON_ACTOR", "KINDS", "SELECTOR_TYPES", "STATES", "TRANSITIONS", "Action",
    "AudienceDenied", "ChangeEvent", "Changes", "Desired", "Entry", "EventHub", "Grant",
    "GrantBook", "ListFilter", "PgStore", "Registry", "RegistryStore", "Role", "RoleBook",
    "SqliteStore", "StateChange", "Step", "Write", "apply", "audience_matches", "jwt_ttl_cap",
    "validate_entry", "validate_filter", "validate_role", "validate_selector", "x509_ttl_cap",
]
