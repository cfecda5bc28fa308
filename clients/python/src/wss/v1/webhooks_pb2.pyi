import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from wss.v1 import resources_pb2 as _resources_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CircuitState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CIRCUIT_STATE_UNSPECIFIED: _ClassVar[CircuitState]
    CIRCUIT_STATE_CLOSED: _ClassVar[CircuitState]
    CIRCUIT_STATE_OPEN: _ClassVar[CircuitState]
    CIRCUIT_STATE_HALF_OPEN: _ClassVar[CircuitState]
CIRCUIT_STATE_UNSPECIFIED: CircuitState
CIRCUIT_STATE_CLOSED: CircuitState
CIRCUIT_STATE_OPEN: CircuitState
CIRCUIT_STATE_HALF_OPEN: CircuitState

class CreateWebhookRequest(_message.Message):
    __slots__ = ("tenant_id", "url", "event_types", "filter", "transform", "retry_policy_id", "headers", "description", "enabled", "signature_scheme", "secret", "client_certificate", "client_key")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPES_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    TRANSFORM_FIELD_NUMBER: _ClassVar[int]
    RETRY_POLICY_ID_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_SCHEME_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    CLIENT_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_KEY_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    url: str
    event_types: _containers.RepeatedScalarFieldContainer[str]
    filter: str
    transform: str
    retry_policy_id: str
    headers: _containers.ScalarMap[str, str]
    description: str
    enabled: bool
    signature_scheme: _resources_pb2.SignatureScheme
    secret: str
    client_certificate: str
    client_key: str
    def __init__(self, tenant_id: _Optional[str] = ..., url: _Optional[str] = ..., event_types: _Optional[_Iterable[str]] = ..., filter: _Optional[str] = ..., transform: _Optional[str] = ..., retry_policy_id: _Optional[str] = ..., headers: _Optional[_Mapping[str, str]] = ..., description: _Optional[str] = ..., enabled: _Optional[bool] = ..., signature_scheme: _Optional[_Union[_resources_pb2.SignatureScheme, str]] = ..., secret: _Optional[str] = ..., client_certificate: _Optional[str] = ..., client_key: _Optional[str] = ...) -> None: ...

class GetWebhookRequest(_message.Message):
    __slots__ = ("webhook_id",)
    WEBHOOK_ID_FIELD_NUMBER: _ClassVar[int]
    webhook_id: str
    def __init__(self, webhook_id: _Optional[str] = ...) -> None: ...

class ListWebhooksRequest(_message.Message):
    __slots__ = ("tenant_id", "page_size", "page_token")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    page_size: int
    page_token: str
    def __init__(self, tenant_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListWebhooksResponse(_message.Message):
    __slots__ = ("webhooks", "next_page_token")
    WEBHOOKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    webhooks: _containers.RepeatedCompositeFieldContainer[_resources_pb2.Webhook]
    next_page_token: str
    def __init__(self, webhooks: _Optional[_Iterable[_Union[_resources_pb2.Webhook, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class EventTypes(_message.Message):
    __slots__ = ("patterns",)
    PATTERNS_FIELD_NUMBER: _ClassVar[int]
    patterns: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, patterns: _Optional[_Iterable[str]] = ...) -> None: ...

class Headers(_message.Message):
    __slots__ = ("headers",)
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    headers: _containers.ScalarMap[str, str]
    def __init__(self, headers: _Optional[_Mapping[str, str]] = ...) -> None: ...

class UpdateWebhookRequest(_message.Message):
    __slots__ = ("webhook_id", "url", "event_types", "filter", "transform", "retry_policy_id", "headers", "description", "enabled", "client_certificate", "client_key")
    WEBHOOK_ID_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPES_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    TRANSFORM_FIELD_NUMBER: _ClassVar[int]
    RETRY_POLICY_ID_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    CLIENT_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_KEY_FIELD_NUMBER: _ClassVar[int]
    webhook_id: str
    url: str
    event_types: EventTypes
    filter: str
    transform: str
    retry_policy_id: str
    headers: Headers
    description: str
    enabled: bool
    client_certificate: str
    client_key: str
    def __init__(self, webhook_id: _Optional[str] = ..., url: _Optional[str] = ..., event_types: _Optional[_Union[EventTypes, _Mapping]] = ..., filter: _Optional[str] = ..., transform: _Optional[str] = ..., retry_policy_id: _Optional[str] = ..., headers: _Optional[_Union[Headers, _Mapping]] = ..., description: _Optional[str] = ..., enabled: _Optional[bool] = ..., client_certificate: _Optional[str] = ..., client_key: _Optional[str] = ...) -> None: ...

class DeleteWebhookRequest(_message.Message):
    __slots__ = ("webhook_id",)
    WEBHOOK_ID_FIELD_NUMBER: _ClassVar[int]
    webhook_id: str
    def __init__(self, webhook_id: _Optional[str] = ...) -> None: ...

class DeleteWebhookResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RotateWebhookSecretRequest(_message.Message):
    __slots__ = ("webhook_id", "overlap", "secret")
    WEBHOOK_ID_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    webhook_id: str
    overlap: _duration_pb2.Duration
    secret: str
    def __init__(self, webhook_id: _Optional[str] = ..., overlap: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., secret: _Optional[str] = ...) -> None: ...

class GetWebhookStatsRequest(_message.Message):
    __slots__ = ("webhook_id", "window")
    WEBHOOK_ID_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    webhook_id: str
    window: _duration_pb2.Duration
    def __init__(self, webhook_id: _Optional[str] = ..., window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class CircuitChange(_message.Message):
    __slots__ = ("state", "changed_at", "open_until", "instance")
    STATE_FIELD_NUMBER: _ClassVar[int]
    CHANGED_AT_FIELD_NUMBER: _ClassVar[int]
    OPEN_UNTIL_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    state: CircuitState
    changed_at: _timestamp_pb2.Timestamp
    open_until: _timestamp_pb2.Timestamp
    instance: str
    def __init__(self, state: _Optional[_Union[CircuitState, str]] = ..., changed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., open_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., instance: _Optional[str] = ...) -> None: ...

class WebhookStats(_message.Message):
    __slots__ = ("webhook_id", "tenant_id", "window", "attempts_succeeded", "attempts_failed", "success_rate", "last_success_at", "last_failure_at", "last_failure_status_code", "last_failure_error_kind", "last_failure_error", "dead_letters", "circuit_state", "circuit_open_until", "last_circuit_change", "in_flight", "queued", "parked", "retries_waiting", "instance", "backlog_depth", "backlog_oldest_age")
    WEBHOOK_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FAILED_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_RATE_FIELD_NUMBER: _ClassVar[int]
    LAST_SUCCESS_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_FAILURE_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_FAILURE_STATUS_CODE_FIELD_NUMBER: _ClassVar[int]
    LAST_FAILURE_ERROR_KIND_FIELD_NUMBER: _ClassVar[int]
    LAST_FAILURE_ERROR_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERS_FIELD_NUMBER: _ClassVar[int]
    CIRCUIT_STATE_FIELD_NUMBER: _ClassVar[int]
    CIRCUIT_OPEN_UNTIL_FIELD_NUMBER: _ClassVar[int]
    LAST_CIRCUIT_CHANGE_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    PARKED_FIELD_NUMBER: _ClassVar[int]
    RETRIES_WAITING_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    BACKLOG_DEPTH_FIELD_NUMBER: _ClassVar[int]
    BACKLOG_OLDEST_AGE_FIELD_NUMBER: _ClassVar[int]
    webhook_id: str
    tenant_id: str
    window: _duration_pb2.Duration
    attempts_succeeded: int
    attempts_failed: int
    success_rate: float
    last_success_at: _timestamp_pb2.Timestamp
    last_failure_at: _timestamp_pb2.Timestamp
    last_failure_status_code: int
    last_failure_error_kind: str
    last_failure_error: str
    dead_letters: int
    circuit_state: CircuitState
    circuit_open_until: _timestamp_pb2.Timestamp
    last_circuit_change: CircuitChange
    in_flight: int
    queued: int
    parked: int
    retries_waiting: int
    instance: str
    backlog_depth: int
    backlog_oldest_age: _duration_pb2.Duration
    def __init__(self, webhook_id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., attempts_succeeded: _Optional[int] = ..., attempts_failed: _Optional[int] = ..., success_rate: _Optional[float] = ..., last_success_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_failure_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_failure_status_code: _Optional[int] = ..., last_failure_error_kind: _Optional[str] = ..., last_failure_error: _Optional[str] = ..., dead_letters: _Optional[int] = ..., circuit_state: _Optional[_Union[CircuitState, str]] = ..., circuit_open_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_circuit_change: _Optional[_Union[CircuitChange, _Mapping]] = ..., in_flight: _Optional[int] = ..., queued: _Optional[int] = ..., parked: _Optional[int] = ..., retries_waiting: _Optional[int] = ..., instance: _Optional[str] = ..., backlog_depth: _Optional[int] = ..., backlog_oldest_age: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...
