"""Types of the trace core, the native module built from native/ (see native/src/python.rs)."""

from collections.abc import Sequence
from typing import TypedDict

class CoreCounts(TypedDict):
    spans_in: int
    duplicate_spans: int
    late_spans: int
    emitted: list[tuple[str, int]]
    reemitted: int
    forgotten_early: int
    complete: int
    partial: int
    partial_reasons: list[tuple[str, int]]
    sampled: list[tuple[tuple[str, str], int]]

class EncodedTrace:
    trace_id: str
    start_ns: int
    end_ns: int
    late: bool
    already_emitted: int
    span_count: int
    verdict: bytes
    edges: list[tuple[str, str, int, int, bool]]
    record: bytes
    """The embedded store's record of the trace, packed (empty when span_documents)."""
    span_documents: list[tuple[str, bytes, bytes, int, int]]
    services: list[tuple[str, int, int, int]]
    operations: list[tuple[str, str, str]]

class DecodedSpans:
    """An OTLP request's valid spans, held by the core until `IntakeQueue.push`."""

    span_count: int
    rejected: int
    """Spans refused for invalid ids."""
    reason: str
    """Why the first refused span was ('' when none was)."""

class IntakeQueue:
    """The bounded queue of decoded requests between the receivers and the core."""

    def __init__(self, max_spans: int, wake_fd: int) -> None: ...
    def push(self, decoded: DecodedSpans) -> str:
        """'accepted', 'full' or 'closed'."""
    def close(self) -> None: ...
    @property
    def queued_spans(self) -> int: ...
    @property
    def refused_spans(self) -> int: ...

class OtlpGrpcServer:
    """The native OTLP/gRPC server; OSError when `listen` cannot be bound."""

    def __init__(
        self,
        listen: str,
        max_request_bytes: int,
        max_concurrent_requests: int,
        queue: IntakeQueue,
    ) -> None: ...
    @property
    def port(self) -> int: ...
    def take_accepted(self) -> int: ...
    def take_refusals(self) -> list[tuple[str, int | None, str, str | None]]: ...
    def stop(self, grace: float) -> None: ...

def decode_spans(request: bytes) -> DecodedSpans:
    """ValueError when `request` is not an ExportTraceServiceRequest."""

_Histogram = tuple[list[float], list[tuple[list[str], list[int], float]]]

class TraceCore:
    def __init__(
        self,
        *,
        idle_timeout: float,
        max_age: float,
        late_window: float,
        max_live_traces: int,
        max_live_spans: int,
        max_skew_ns: int,
        keep_errors: bool,
        latency_threshold_ns: int | None,
        probabilistic_share: float,
        request_buckets: list[float],
        latency_buckets: list[float],
        max_series: int,
        span_documents: bool,
    ) -> None: ...
    def add(
        self, request: bytes, now: float
    ) -> tuple[list[tuple[str, int]], list[EncodedTrace]]: ...
    def add_queued(
        self, queue: IntakeQueue, now: float, limit: int
    ) -> tuple[int, list[EncodedTrace]]: ...
    def expire(self, now: float, limit: int) -> tuple[int, list[EncodedTrace]]: ...
    def drain(self, now: float) -> list[EncodedTrace]: ...
    @property
    def live_traces(self) -> int: ...
    @property
    def live_spans(self) -> int: ...
    @property
    def retained_traces(self) -> int: ...
    @property
    def retained_spans(self) -> int: ...
    def take_bounds_report(self) -> dict[str, int] | None: ...
    def take_overflow_warnings(self) -> list[str]: ...
    def counts(self) -> CoreCounts: ...
    def graph_snapshot(
        self,
    ) -> tuple[
        list[tuple[tuple[str, str, str], int, int]],
        _Histogram,
        _Histogram,
        list[tuple[tuple[str, str, str], int]],
        list[tuple[tuple[str, str, str, str], int]],
        _Histogram,
        list[tuple[str, int]],
    ]: ...

def pack_record(record: bytes) -> bytes: ...
def unpack_record(packed: bytes) -> bytes: ...
def operations_of(traces: Sequence[EncodedTrace]) -> list[tuple[str, str, str, int]]: ...
