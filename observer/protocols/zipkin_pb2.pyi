from collections.abc import Iterable as _Iterable
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper

DESCRIPTOR: _descriptor.FileDescriptor

class Span(_message.Message):
    __slots__ = (
        "annotations",
        "debug",
        "duration",
        "id",
        "kind",
        "local_endpoint",
        "name",
        "parent_id",
        "remote_endpoint",
        "shared",
        "tags",
        "timestamp",
        "trace_id",
    )
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        SPAN_KIND_UNSPECIFIED: _ClassVar[Span.Kind]
        CLIENT: _ClassVar[Span.Kind]
        SERVER: _ClassVar[Span.Kind]
        PRODUCER: _ClassVar[Span.Kind]
        CONSUMER: _ClassVar[Span.Kind]

    SPAN_KIND_UNSPECIFIED: Span.Kind
    CLIENT: Span.Kind
    SERVER: Span.Kind
    PRODUCER: Span.Kind
    CONSUMER: Span.Kind
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: str | None = ..., value: str | None = ...) -> None: ...

    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    LOCAL_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    REMOTE_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    ANNOTATIONS_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    DEBUG_FIELD_NUMBER: _ClassVar[int]
    SHARED_FIELD_NUMBER: _ClassVar[int]
    trace_id: bytes
    parent_id: bytes
    id: bytes
    kind: Span.Kind
    name: str
    timestamp: int
    duration: int
    local_endpoint: Endpoint
    remote_endpoint: Endpoint
    annotations: _containers.RepeatedCompositeFieldContainer[Annotation]
    tags: _containers.ScalarMap[str, str]
    debug: bool
    shared: bool
    def __init__(
        self,
        trace_id: bytes | None = ...,
        parent_id: bytes | None = ...,
        id: bytes | None = ...,
        kind: Span.Kind | str | None = ...,
        name: str | None = ...,
        timestamp: int | None = ...,
        duration: int | None = ...,
        local_endpoint: Endpoint | _Mapping[str, object] | None = ...,
        remote_endpoint: Endpoint | _Mapping[str, object] | None = ...,
        annotations: _Iterable[Annotation | _Mapping[str, object]] | None = ...,
        tags: _Mapping[str, str] | None = ...,
        debug: bool = ...,
        shared: bool = ...,
    ) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("ipv4", "ipv6", "port", "service_name")
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    IPV4_FIELD_NUMBER: _ClassVar[int]
    IPV6_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    service_name: str
    ipv4: bytes
    ipv6: bytes
    port: int
    def __init__(
        self,
        service_name: str | None = ...,
        ipv4: bytes | None = ...,
        ipv6: bytes | None = ...,
        port: int | None = ...,
    ) -> None: ...

class Annotation(_message.Message):
    __slots__ = ("timestamp", "value")
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    timestamp: int
    value: str
    def __init__(self, timestamp: int | None = ..., value: str | None = ...) -> None: ...

class ListOfSpans(_message.Message):
    __slots__ = ("spans",)
    SPANS_FIELD_NUMBER: _ClassVar[int]
    spans: _containers.RepeatedCompositeFieldContainer[Span]
    def __init__(self, spans: _Iterable[Span | _Mapping[str, object]] | None = ...) -> None: ...
