import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BackendSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BACKEND_SOURCE_UNSPECIFIED: _ClassVar[BackendSource]
    BACKEND_SOURCE_STATIC: _ClassVar[BackendSource]
    BACKEND_SOURCE_REGISTERED: _ClassVar[BackendSource]

class BackendState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BACKEND_STATE_UNSPECIFIED: _ClassVar[BackendState]
    BACKEND_STATE_SERVING: _ClassVar[BackendState]
    BACKEND_STATE_NOT_SERVING: _ClassVar[BackendState]
    BACKEND_STATE_EJECTED: _ClassVar[BackendState]

class QuotaKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    QUOTA_KIND_UNSPECIFIED: _ClassVar[QuotaKind]
    QUOTA_KIND_RATE: _ClassVar[QuotaKind]
    QUOTA_KIND_CONCURRENCY: _ClassVar[QuotaKind]
    QUOTA_KIND_CALLS: _ClassVar[QuotaKind]
    QUOTA_KIND_TOKENS: _ClassVar[QuotaKind]
BACKEND_SOURCE_UNSPECIFIED: BackendSource
BACKEND_SOURCE_STATIC: BackendSource
BACKEND_SOURCE_REGISTERED: BackendSource
BACKEND_STATE_UNSPECIFIED: BackendState
BACKEND_STATE_SERVING: BackendState
BACKEND_STATE_NOT_SERVING: BackendState
BACKEND_STATE_EJECTED: BackendState
QUOTA_KIND_UNSPECIFIED: QuotaKind
QUOTA_KIND_RATE: QuotaKind
QUOTA_KIND_CONCURRENCY: QuotaKind
QUOTA_KIND_CALLS: QuotaKind
QUOTA_KIND_TOKENS: QuotaKind

class RegisterRequest(_message.Message):
    __slots__ = ("address", "lease_ttl")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_FIELD_NUMBER: _ClassVar[int]
    address: str
    lease_ttl: _duration_pb2.Duration
    def __init__(self, address: _Optional[str] = ..., lease_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("lease_id", "lease_ttl", "hands")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_FIELD_NUMBER: _ClassVar[int]
    HANDS_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    lease_ttl: _duration_pb2.Duration
    hands: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, lease_id: _Optional[str] = ..., lease_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., hands: _Optional[_Iterable[str]] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("lease_id",)
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    def __init__(self, lease_id: _Optional[str] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("lease_ttl",)
    LEASE_TTL_FIELD_NUMBER: _ClassVar[int]
    lease_ttl: _duration_pb2.Duration
    def __init__(self, lease_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class DeregisterRequest(_message.Message):
    __slots__ = ("lease_id",)
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    def __init__(self, lease_id: _Optional[str] = ...) -> None: ...

class DeregisterResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListBackendsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListBackendsResponse(_message.Message):
    __slots__ = ("backends",)
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    backends: _containers.RepeatedCompositeFieldContainer[Backend]
    def __init__(self, backends: _Optional[_Iterable[_Union[Backend, _Mapping]]] = ...) -> None: ...

class Backend(_message.Message):
    __slots__ = ("address", "source", "state", "hands", "in_flight", "consecutive_failures", "ejected_until", "lease_id", "lease_expires_at")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    HANDS_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_FAILURES_FIELD_NUMBER: _ClassVar[int]
    EJECTED_UNTIL_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    address: str
    source: BackendSource
    state: BackendState
    hands: _containers.RepeatedScalarFieldContainer[str]
    in_flight: int
    consecutive_failures: int
    ejected_until: _timestamp_pb2.Timestamp
    lease_id: str
    lease_expires_at: _timestamp_pb2.Timestamp
    def __init__(self, address: _Optional[str] = ..., source: _Optional[_Union[BackendSource, str]] = ..., state: _Optional[_Union[BackendState, str]] = ..., hands: _Optional[_Iterable[str]] = ..., in_flight: _Optional[int] = ..., consecutive_failures: _Optional[int] = ..., ejected_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., lease_id: _Optional[str] = ..., lease_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetUsageRequest(_message.Message):
    __slots__ = ("tenant",)
    TENANT_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    def __init__(self, tenant: _Optional[str] = ...) -> None: ...

class GetUsageResponse(_message.Message):
    __slots__ = ("tenant", "quotas")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    QUOTAS_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    quotas: _containers.RepeatedCompositeFieldContainer[QuotaUsage]
    def __init__(self, tenant: _Optional[str] = ..., quotas: _Optional[_Iterable[_Union[QuotaUsage, _Mapping]]] = ...) -> None: ...

class QuotaUsage(_message.Message):
    __slots__ = ("rule", "hands", "kind", "limit", "used", "window", "resets_in", "rate")
    RULE_FIELD_NUMBER: _ClassVar[int]
    HANDS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    RESETS_IN_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    rule: str
    hands: str
    kind: QuotaKind
    limit: int
    used: float
    window: _duration_pb2.Duration
    resets_in: _duration_pb2.Duration
    rate: int
    def __init__(self, rule: _Optional[str] = ..., hands: _Optional[str] = ..., kind: _Optional[_Union[QuotaKind, str]] = ..., limit: _Optional[int] = ..., used: _Optional[float] = ..., window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., resets_in: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., rate: _Optional[int] = ...) -> None: ...
