from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class PublishEventRequest(_message.Message):
    __slots__ = ("tenant_id", "event_type", "data", "event_id", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    event_type: str
    data: str
    event_id: str
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, tenant_id: _Optional[str] = ..., event_type: _Optional[str] = ..., data: _Optional[str] = ..., event_id: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class PublishEventResponse(_message.Message):
    __slots__ = ("stream_entry_id", "event_id", "duplicate")
    STREAM_ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    stream_entry_id: str
    event_id: str
    duplicate: bool
    def __init__(self, stream_entry_id: _Optional[str] = ..., event_id: _Optional[str] = ..., duplicate: _Optional[bool] = ...) -> None: ...
