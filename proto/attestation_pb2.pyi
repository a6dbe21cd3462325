from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CredentialChallenge(_message.Message):
    __slots__ = ("credential_blob", "encrypted_secret")
    CREDENTIAL_BLOB_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTED_SECRET_FIELD_NUMBER: _ClassVar[int]
    credential_blob: bytes
    encrypted_secret: bytes
    def __init__(self, credential_blob: _Optional[bytes] = ..., encrypted_secret: _Optional[bytes] = ...) -> None: ...

class GetEvidenceRequest(_message.Message):
    __slots__ = ("nonce", "challenge")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    challenge: CredentialChallenge
    def __init__(self, nonce: _Optional[bytes] = ..., challenge: _Optional[_Union[CredentialChallenge, _Mapping]] = ...) -> None: ...

class Measurement(_message.Message):
    __slots__ = ("sha256", "path", "at")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    path: str
    at: str
    def __init__(self, sha256: _Optional[str] = ..., path: _Optional[str] = ..., at: _Optional[str] = ...) -> None: ...

class MeasurementLog(_message.Message):
    __slots__ = ("pcr", "base", "reset_count", "restart_count", "reason", "at", "entries")
    PCR_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    RESET_COUNT_FIELD_NUMBER: _ClassVar[int]
    RESTART_COUNT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    pcr: int
    base: bytes
    reset_count: int
    restart_count: int
    reason: str
    at: str
    entries: _containers.RepeatedCompositeFieldContainer[Measurement]
    def __init__(self, pcr: _Optional[int] = ..., base: _Optional[bytes] = ..., reset_count: _Optional[int] = ..., restart_count: _Optional[int] = ..., reason: _Optional[str] = ..., at: _Optional[str] = ..., entries: _Optional[_Iterable[_Union[Measurement, _Mapping]]] = ...) -> None: ...

class Evidence(_message.Message):
    __slots__ = ("nonce", "quote", "signature", "ak_public", "ek_public", "ek_certificates", "pcr_bank", "pcrs", "measure_pcr", "measurement_log", "activation_proof", "produced_at")
    class PcrsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: bytes
        def __init__(self, key: _Optional[int] = ..., value: _Optional[bytes] = ...) -> None: ...
    NONCE_FIELD_NUMBER: _ClassVar[int]
    QUOTE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    AK_PUBLIC_FIELD_NUMBER: _ClassVar[int]
    EK_PUBLIC_FIELD_NUMBER: _ClassVar[int]
    EK_CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    PCR_BANK_FIELD_NUMBER: _ClassVar[int]
    PCRS_FIELD_NUMBER: _ClassVar[int]
    MEASURE_PCR_FIELD_NUMBER: _ClassVar[int]
    MEASUREMENT_LOG_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_PROOF_FIELD_NUMBER: _ClassVar[int]
    PRODUCED_AT_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    quote: bytes
    signature: bytes
    ak_public: bytes
    ek_public: bytes
    ek_certificates: _containers.RepeatedScalarFieldContainer[bytes]
    pcr_bank: str
    pcrs: _containers.ScalarMap[int, bytes]
    measure_pcr: int
    measurement_log: MeasurementLog
    activation_proof: bytes
    produced_at: str
    def __init__(self, nonce: _Optional[bytes] = ..., quote: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., ak_public: _Optional[bytes] = ..., ek_public: _Optional[bytes] = ..., ek_certificates: _Optional[_Iterable[bytes]] = ..., pcr_bank: _Optional[str] = ..., pcrs: _Optional[_Mapping[int, bytes]] = ..., measure_pcr: _Optional[int] = ..., measurement_log: _Optional[_Union[MeasurementLog, _Mapping]] = ..., activation_proof: _Optional[bytes] = ..., produced_at: _Optional[str] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TpmStatus(_message.Message):
    __slots__ = ("available", "problem", "tcti", "emulator_pid", "ek_kind", "ek_sha256", "ek_check", "ak_name", "flushed_at_connect", "transient_handles", "persistent_handles", "session_handles", "pcrs", "last_quote_at", "last_quote_nonce", "reset_count", "restart_count", "clock_ms", "policy", "policy_mismatches", "measure_pcr", "measurements", "epoch_reason", "selectors")
    class PcrsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: str
        def __init__(self, key: _Optional[int] = ..., value: _Optional[str] = ...) -> None: ...
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    TCTI_FIELD_NUMBER: _ClassVar[int]
    EMULATOR_PID_FIELD_NUMBER: _ClassVar[int]
    EK_KIND_FIELD_NUMBER: _ClassVar[int]
    EK_SHA256_FIELD_NUMBER: _ClassVar[int]
    EK_CHECK_FIELD_NUMBER: _ClassVar[int]
    AK_NAME_FIELD_NUMBER: _ClassVar[int]
    FLUSHED_AT_CONNECT_FIELD_NUMBER: _ClassVar[int]
    TRANSIENT_HANDLES_FIELD_NUMBER: _ClassVar[int]
    PERSISTENT_HANDLES_FIELD_NUMBER: _ClassVar[int]
    SESSION_HANDLES_FIELD_NUMBER: _ClassVar[int]
    PCRS_FIELD_NUMBER: _ClassVar[int]
    LAST_QUOTE_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_QUOTE_NONCE_FIELD_NUMBER: _ClassVar[int]
    RESET_COUNT_FIELD_NUMBER: _ClassVar[int]
    RESTART_COUNT_FIELD_NUMBER: _ClassVar[int]
    CLOCK_MS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    POLICY_MISMATCHES_FIELD_NUMBER: _ClassVar[int]
    MEASURE_PCR_FIELD_NUMBER: _ClassVar[int]
    MEASUREMENTS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_REASON_FIELD_NUMBER: _ClassVar[int]
    SELECTORS_FIELD_NUMBER: _ClassVar[int]
    available: bool
    problem: str
    tcti: str
    emulator_pid: int
    ek_kind: str
    ek_sha256: str
    ek_check: str
    ak_name: str
    flushed_at_connect: _containers.RepeatedScalarFieldContainer[str]
    transient_handles: _containers.RepeatedScalarFieldContainer[str]
    persistent_handles: _containers.RepeatedScalarFieldContainer[str]
    session_handles: _containers.RepeatedScalarFieldContainer[str]
    pcrs: _containers.ScalarMap[int, str]
    last_quote_at: str
    last_quote_nonce: str
    reset_count: int
    restart_count: int
    clock_ms: int
    policy: str
    policy_mismatches: _containers.RepeatedScalarFieldContainer[str]
    measure_pcr: int
    measurements: int
    epoch_reason: str
    selectors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, available: _Optional[bool] = ..., problem: _Optional[str] = ..., tcti: _Optional[str] = ..., emulator_pid: _Optional[int] = ..., ek_kind: _Optional[str] = ..., ek_sha256: _Optional[str] = ..., ek_check: _Optional[str] = ..., ak_name: _Optional[str] = ..., flushed_at_connect: _Optional[_Iterable[str]] = ..., transient_handles: _Optional[_Iterable[str]] = ..., persistent_handles: _Optional[_Iterable[str]] = ..., session_handles: _Optional[_Iterable[str]] = ..., pcrs: _Optional[_Mapping[int, str]] = ..., last_quote_at: _Optional[str] = ..., last_quote_nonce: _Optional[str] = ..., reset_count: _Optional[int] = ..., restart_count: _Optional[int] = ..., clock_ms: _Optional[int] = ..., policy: _Optional[str] = ..., policy_mismatches: _Optional[_Iterable[str]] = ..., measure_pcr: _Optional[int] = ..., measurements: _Optional[int] = ..., epoch_reason: _Optional[str] = ..., selectors: _Optional[_Iterable[str]] = ...) -> None: ...
