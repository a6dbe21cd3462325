from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ActionRecord(_message.Message):
    __slots__ = ("token", "action", "resource", "outcome", "detail")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    token: str
    action: str
    resource: str
    outcome: str
    detail: str
    def __init__(self, token: _Optional[str] = ..., action: _Optional[str] = ..., resource: _Optional[str] = ..., outcome: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class RecordResult(_message.Message):
    __slots__ = ("seq", "attribution", "reason", "agent_id", "spiffe_id", "delegator", "error")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    DELEGATOR_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    seq: int
    attribution: str
    reason: str
    agent_id: str
    spiffe_id: str
    delegator: str
    error: str
    def __init__(self, seq: _Optional[int] = ..., attribution: _Optional[str] = ..., reason: _Optional[str] = ..., agent_id: _Optional[str] = ..., spiffe_id: _Optional[str] = ..., delegator: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class ActionBatch(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[ActionRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[ActionRecord, _Mapping]]] = ...) -> None: ...

class BatchResult(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[RecordResult]
    def __init__(self, results: _Optional[_Iterable[_Union[RecordResult, _Mapping]]] = ...) -> None: ...
