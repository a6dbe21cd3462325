from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Grant(_message.Message):
    __slots__ = ("id", "subject", "issuer", "agent_id", "scopes", "created_at", "expires_at", "revoked_at", "created_by", "ttl_seconds")
    ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    id: str
    subject: str
    issuer: str
    agent_id: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    created_at: int
    expires_at: int
    revoked_at: int
    created_by: str
    ttl_seconds: int
    def __init__(self, id: _Optional[str] = ..., subject: _Optional[str] = ..., issuer: _Optional[str] = ..., agent_id: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., created_at: _Optional[int] = ..., expires_at: _Optional[int] = ..., revoked_at: _Optional[int] = ..., created_by: _Optional[str] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class RevokeGrantRequest(_message.Message):
    __slots__ = ("id", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    reason: str
    def __init__(self, id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ListGrantsRequest(_message.Message):
    __slots__ = ("agent_id", "subject", "include_revoked")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_REVOKED_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    subject: str
    include_revoked: bool
    def __init__(self, agent_id: _Optional[str] = ..., subject: _Optional[str] = ..., include_revoked: _Optional[bool] = ...) -> None: ...

class ListGrantsResponse(_message.Message):
    __slots__ = ("grants",)
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    grants: _containers.RepeatedCompositeFieldContainer[Grant]
    def __init__(self, grants: _Optional[_Iterable[_Union[Grant, _Mapping]]] = ...) -> None: ...

class AuditQuery(_message.Message):
    __slots__ = ("agent", "subject", "delegator", "type", "result", "since", "until", "limit")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    DELEGATOR_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    agent: str
    subject: str
    delegator: str
    type: str
    result: str
    since: str
    until: str
    limit: int
    def __init__(self, agent: _Optional[str] = ..., subject: _Optional[str] = ..., delegator: _Optional[str] = ..., type: _Optional[str] = ..., result: _Optional[str] = ..., since: _Optional[str] = ..., until: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class AuditRecords(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, records: _Optional[_Iterable[str]] = ...) -> None: ...

class ExportAuditArchiveRequest(_message.Message):
    __slots__ = ("keep",)
    KEEP_FIELD_NUMBER: _ClassVar[int]
    keep: int
    def __init__(self, keep: _Optional[int] = ...) -> None: ...

class ArchiveChunk(_message.Message):
    __slots__ = ("name", "data", "end")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    name: str
    data: bytes
    end: bool
    def __init__(self, name: _Optional[str] = ..., data: _Optional[bytes] = ..., end: _Optional[bool] = ...) -> None: ...

class ArchivedSegment(_message.Message):
    __slots__ = ("name", "sha256")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    name: str
    sha256: str
    def __init__(self, name: _Optional[str] = ..., sha256: _Optional[str] = ...) -> None: ...

class DropArchivedAuditRequest(_message.Message):
    __slots__ = ("segments",)
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    segments: _containers.RepeatedCompositeFieldContainer[ArchivedSegment]
    def __init__(self, segments: _Optional[_Iterable[_Union[ArchivedSegment, _Mapping]]] = ...) -> None: ...

class DropArchivedAuditResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, removed: _Optional[_Iterable[str]] = ...) -> None: ...

class Agent(_message.Message):
    __slots__ = ("id", "name", "kind", "spiffe_id", "selectors", "x509_ttl_seconds", "jwt_ttl_seconds", "dns_names", "hint", "created_at", "updated_at", "revision", "owner", "purpose", "capabilities", "roles", "metadata", "state", "expires_at", "created_by", "history", "federates_with")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    SELECTORS_FIELD_NUMBER: _ClassVar[int]
    X509_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    JWT_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DNS_NAMES_FIELD_NUMBER: _ClassVar[int]
    HINT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    FEDERATES_WITH_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    kind: str
    spiffe_id: str
    selectors: _containers.RepeatedScalarFieldContainer[str]
    x509_ttl_seconds: int
    jwt_ttl_seconds: int
    dns_names: _containers.RepeatedScalarFieldContainer[str]
    hint: str
    created_at: int
    updated_at: int
    revision: int
    owner: str
    purpose: str
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    roles: _containers.RepeatedScalarFieldContainer[str]
    metadata: _containers.ScalarMap[str, str]
    state: str
    expires_at: int
    created_by: int
    history: _containers.RepeatedCompositeFieldContainer[StateChange]
    federates_with: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., kind: _Optional[str] = ..., spiffe_id: _Optional[str] = ..., selectors: _Optional[_Iterable[str]] = ..., x509_ttl_seconds: _Optional[int] = ..., jwt_ttl_seconds: _Optional[int] = ..., dns_names: _Optional[_Iterable[str]] = ..., hint: _Optional[str] = ..., created_at: _Optional[int] = ..., updated_at: _Optional[int] = ..., revision: _Optional[int] = ..., owner: _Optional[str] = ..., purpose: _Optional[str] = ..., capabilities: _Optional[_Iterable[str]] = ..., roles: _Optional[_Iterable[str]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., state: _Optional[str] = ..., expires_at: _Optional[int] = ..., created_by: _Optional[int] = ..., history: _Optional[_Iterable[_Union[StateChange, _Mapping]]] = ..., federates_with: _Optional[_Iterable[str]] = ...) -> None: ...

class StateChange(_message.Message):
    __slots__ = ("at", "from_state", "to_state", "reason", "actor")
    AT_FIELD_NUMBER: _ClassVar[int]
    FROM_STATE_FIELD_NUMBER: _ClassVar[int]
    TO_STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    at: int
    from_state: str
    to_state: str
    reason: str
    actor: str
    def __init__(self, at: _Optional[int] = ..., from_state: _Optional[str] = ..., to_state: _Optional[str] = ..., reason: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class LifecycleRequest(_message.Message):
    __slots__ = ("id", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    reason: str
    def __init__(self, id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class DesiredAgent(_message.Message):
    __slots__ = ("id", "spec", "state")
    ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    id: str
    spec: AgentSpec
    state: str
    def __init__(self, id: _Optional[str] = ..., spec: _Optional[_Union[AgentSpec, _Mapping]] = ..., state: _Optional[str] = ...) -> None: ...

class ApplyRequest(_message.Message):
    __slots__ = ("agents", "roles", "dry_run", "prune")
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    PRUNE_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[DesiredAgent]
    roles: _containers.RepeatedCompositeFieldContainer[Role]
    dry_run: bool
    prune: bool
    def __init__(self, agents: _Optional[_Iterable[_Union[DesiredAgent, _Mapping]]] = ..., roles: _Optional[_Iterable[_Union[Role, _Mapping]]] = ..., dry_run: _Optional[bool] = ..., prune: _Optional[bool] = ...) -> None: ...

class PlanStep(_message.Message):
    __slots__ = ("action", "target", "detail")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    action: str
    target: str
    detail: str
    def __init__(self, action: _Optional[str] = ..., target: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class ApplyResponse(_message.Message):
    __slots__ = ("steps", "applied")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    steps: _containers.RepeatedCompositeFieldContainer[PlanStep]
    applied: bool
    def __init__(self, steps: _Optional[_Iterable[_Union[PlanStep, _Mapping]]] = ..., applied: _Optional[bool] = ...) -> None: ...

class Role(_message.Message):
    __slots__ = ("name", "audiences", "scopes", "max_ttl_seconds", "may_act_for_users", "may_redelegate", "created_at", "updated_at", "revision", "holders", "may_introspect")
    NAME_FIELD_NUMBER: _ClassVar[int]
    AUDIENCES_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    MAX_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAY_ACT_FOR_USERS_FIELD_NUMBER: _ClassVar[int]
    MAY_REDELEGATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    HOLDERS_FIELD_NUMBER: _ClassVar[int]
    MAY_INTROSPECT_FIELD_NUMBER: _ClassVar[int]
    name: str
    audiences: _containers.RepeatedScalarFieldContainer[str]
    scopes: _containers.RepeatedScalarFieldContainer[str]
    max_ttl_seconds: int
    may_act_for_users: bool
    may_redelegate: bool
    created_at: int
    updated_at: int
    revision: int
    holders: _containers.RepeatedScalarFieldContainer[str]
    may_introspect: bool
    def __init__(self, name: _Optional[str] = ..., audiences: _Optional[_Iterable[str]] = ..., scopes: _Optional[_Iterable[str]] = ..., max_ttl_seconds: _Optional[int] = ..., may_act_for_users: _Optional[bool] = ..., may_redelegate: _Optional[bool] = ..., created_at: _Optional[int] = ..., updated_at: _Optional[int] = ..., revision: _Optional[int] = ..., holders: _Optional[_Iterable[str]] = ..., may_introspect: _Optional[bool] = ...) -> None: ...

class ListRolesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRolesResponse(_message.Message):
    __slots__ = ("roles",)
    ROLES_FIELD_NUMBER: _ClassVar[int]
    roles: _containers.RepeatedCompositeFieldContainer[Role]
    def __init__(self, roles: _Optional[_Iterable[_Union[Role, _Mapping]]] = ...) -> None: ...

class GetRoleRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class UpdateRoleRequest(_message.Message):
    __slots__ = ("name", "audiences", "scopes", "max_ttl_seconds", "may_act_for_users", "may_redelegate", "may_introspect")
    NAME_FIELD_NUMBER: _ClassVar[int]
    AUDIENCES_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    MAX_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAY_ACT_FOR_USERS_FIELD_NUMBER: _ClassVar[int]
    MAY_REDELEGATE_FIELD_NUMBER: _ClassVar[int]
    MAY_INTROSPECT_FIELD_NUMBER: _ClassVar[int]
    name: str
    audiences: StringList
    scopes: StringList
    max_ttl_seconds: int
    may_act_for_users: bool
    may_redelegate: bool
    may_introspect: bool
    def __init__(self, name: _Optional[str] = ..., audiences: _Optional[_Union[StringList, _Mapping]] = ..., scopes: _Optional[_Union[StringList, _Mapping]] = ..., max_ttl_seconds: _Optional[int] = ..., may_act_for_users: _Optional[bool] = ..., may_redelegate: _Optional[bool] = ..., may_introspect: _Optional[bool] = ...) -> None: ...

class DeleteRoleRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteRoleResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AgentSpec(_message.Message):
    __slots__ = ("name", "kind", "spiffe_id", "selectors", "x509_ttl_seconds", "jwt_ttl_seconds", "dns_names", "hint", "owner", "purpose", "capabilities", "roles", "metadata", "expires_at", "federates_with", "expires_after_seconds")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    SELECTORS_FIELD_NUMBER: _ClassVar[int]
    X509_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    JWT_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DNS_NAMES_FIELD_NUMBER: _ClassVar[int]
    HINT_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    FEDERATES_WITH_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AFTER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    spiffe_id: str
    selectors: _containers.RepeatedScalarFieldContainer[str]
    x509_ttl_seconds: int
    jwt_ttl_seconds: int
    dns_names: _containers.RepeatedScalarFieldContainer[str]
    hint: str
    owner: str
    purpose: str
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    roles: _containers.RepeatedScalarFieldContainer[str]
    metadata: _containers.ScalarMap[str, str]
    expires_at: int
    federates_with: _containers.RepeatedScalarFieldContainer[str]
    expires_after_seconds: int
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., spiffe_id: _Optional[str] = ..., selectors: _Optional[_Iterable[str]] = ..., x509_ttl_seconds: _Optional[int] = ..., jwt_ttl_seconds: _Optional[int] = ..., dns_names: _Optional[_Iterable[str]] = ..., hint: _Optional[str] = ..., owner: _Optional[str] = ..., purpose: _Optional[str] = ..., capabilities: _Optional[_Iterable[str]] = ..., roles: _Optional[_Iterable[str]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., expires_at: _Optional[int] = ..., federates_with: _Optional[_Iterable[str]] = ..., expires_after_seconds: _Optional[int] = ...) -> None: ...

class RegisterAgentRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: AgentSpec
    def __init__(self, spec: _Optional[_Union[AgentSpec, _Mapping]] = ...) -> None: ...

class ListAgentsRequest(_message.Message):
    __slots__ = ("state", "owner", "capability", "role", "kind", "selector", "name_prefix")
    STATE_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    CAPABILITY_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    NAME_PREFIX_FIELD_NUMBER: _ClassVar[int]
    state: str
    owner: str
    capability: str
    role: str
    kind: str
    selector: str
    name_prefix: str
    def __init__(self, state: _Optional[str] = ..., owner: _Optional[str] = ..., capability: _Optional[str] = ..., role: _Optional[str] = ..., kind: _Optional[str] = ..., selector: _Optional[str] = ..., name_prefix: _Optional[str] = ...) -> None: ...

class ListAgentsResponse(_message.Message):
    __slots__ = ("agents",)
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[Agent]
    def __init__(self, agents: _Optional[_Iterable[_Union[Agent, _Mapping]]] = ...) -> None: ...

class GetAgentRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class StringList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class StringMap(_message.Message):
    __slots__ = ("values",)
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.ScalarMap[str, str]
    def __init__(self, values: _Optional[_Mapping[str, str]] = ...) -> None: ...

class UpdateAgentRequest(_message.Message):
    __slots__ = ("id", "name", "spiffe_id", "selectors", "x509_ttl_seconds", "jwt_ttl_seconds", "dns_names", "hint", "owner", "purpose", "capabilities", "roles", "expires_at", "federates_with", "kind", "metadata")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    SELECTORS_FIELD_NUMBER: _ClassVar[int]
    X509_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    JWT_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DNS_NAMES_FIELD_NUMBER: _ClassVar[int]
    HINT_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    FEDERATES_WITH_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    spiffe_id: str
    selectors: StringList
    x509_ttl_seconds: int
    jwt_ttl_seconds: int
    dns_names: StringList
    hint: str
    owner: str
    purpose: str
    capabilities: StringList
    roles: StringList
    expires_at: int
    federates_with: StringList
    kind: str
    metadata: StringMap
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., spiffe_id: _Optional[str] = ..., selectors: _Optional[_Union[StringList, _Mapping]] = ..., x509_ttl_seconds: _Optional[int] = ..., jwt_ttl_seconds: _Optional[int] = ..., dns_names: _Optional[_Union[StringList, _Mapping]] = ..., hint: _Optional[str] = ..., owner: _Optional[str] = ..., purpose: _Optional[str] = ..., capabilities: _Optional[_Union[StringList, _Mapping]] = ..., roles: _Optional[_Union[StringList, _Mapping]] = ..., expires_at: _Optional[int] = ..., federates_with: _Optional[_Union[StringList, _Mapping]] = ..., kind: _Optional[str] = ..., metadata: _Optional[_Union[StringMap, _Mapping]] = ...) -> None: ...

class DeleteAgentRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DeleteAgentResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("trust_domain", "started_at", "entries", "active_entries", "roles", "grants", "connections", "ca_not_after", "ca_next_event", "attestors", "audit_sequence", "problem", "attestor_state", "log_level", "federation", "notice", "fleet")
    class AttestorStateEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class FederationEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class FleetEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TRUST_DOMAIN_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    CA_NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    CA_NEXT_EVENT_FIELD_NUMBER: _ClassVar[int]
    ATTESTORS_FIELD_NUMBER: _ClassVar[int]
    AUDIT_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    ATTESTOR_STATE_FIELD_NUMBER: _ClassVar[int]
    LOG_LEVEL_FIELD_NUMBER: _ClassVar[int]
    FEDERATION_FIELD_NUMBER: _ClassVar[int]
    NOTICE_FIELD_NUMBER: _ClassVar[int]
    FLEET_FIELD_NUMBER: _ClassVar[int]
    trust_domain: str
    started_at: int
    entries: int
    active_entries: int
    roles: int
    grants: int
    connections: int
    ca_not_after: int
    ca_next_event: int
    attestors: _containers.RepeatedScalarFieldContainer[str]
    audit_sequence: int
    problem: str
    attestor_state: _containers.ScalarMap[str, str]
    log_level: str
    federation: _containers.ScalarMap[str, str]
    notice: str
    fleet: _containers.ScalarMap[str, str]
    def __init__(self, trust_domain: _Optional[str] = ..., started_at: _Optional[int] = ..., entries: _Optional[int] = ..., active_entries: _Optional[int] = ..., roles: _Optional[int] = ..., grants: _Optional[int] = ..., connections: _Optional[int] = ..., ca_not_after: _Optional[int] = ..., ca_next_event: _Optional[int] = ..., attestors: _Optional[_Iterable[str]] = ..., audit_sequence: _Optional[int] = ..., problem: _Optional[str] = ..., attestor_state: _Optional[_Mapping[str, str]] = ..., log_level: _Optional[str] = ..., federation: _Optional[_Mapping[str, str]] = ..., notice: _Optional[str] = ..., fleet: _Optional[_Mapping[str, str]] = ...) -> None: ...

class LogLevel(_message.Message):
    __slots__ = ("level",)
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    level: str
    def __init__(self, level: _Optional[str] = ...) -> None: ...
