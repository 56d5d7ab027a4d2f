"""Traces as the query side sees them: spans, verdicts, edges, whole traces.

The trace path itself runs in the trace core (native/, `observer.collector._core`), which
hands stores encoded traces, not these objects. Stores decode what they kept into a
`Trace` for the query API (`observer.collector.jaeger`). Ids are lowercase hex strings
(32 characters for trace ids, 16 for span ids), the form that logs carry in `trace.id`
and that Jaeger's API speaks, so the three join without conversion.

Ownership: a `Trace` a store returned is the caller's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeAlias

AttributeValue: TypeAlias = "str | bool | int | float | list[str | bool | int | float]"
Attributes: TypeAlias = dict[str, AttributeValue]


class SpanKind(StrEnum):
    """OTLP's span kinds, by the names Jaeger and Tempo show."""

    UNSPECIFIED = "unspecified"
    INTERNAL = "internal"
    SERVER = "server"
    CLIENT = "client"
    PRODUCER = "producer"
    CONSUMER = "consumer"


class StatusCode(StrEnum):
    UNSET = "unset"
    OK = "ok"
    ERROR = "error"


@dataclass(slots=True)
class SpanEvent:
    time_ns: int
    name: str
    attributes: Attributes = field(default_factory=dict)


@dataclass(slots=True)
class SpanLink:
    trace_id: str
    span_id: str
    attributes: Attributes = field(default_factory=dict)


@dataclass(slots=True)
class Span:
    """One span, its resource's attributes flattened beside its own."""

    trace_id: str
    span_id: str
    # "" for a root span.
    parent_span_id: str
    name: str
    kind: SpanKind
    start_ns: int
    end_ns: int
    # The resource's `service.name`; "unknown_service" when the sender gave none, as the
    # OpenTelemetry SDKs default it.
    service: str
    status: StatusCode = StatusCode.UNSET
    status_message: str = ""
    attributes: Attributes = field(default_factory=dict)
    resource: Attributes = field(default_factory=dict)
    events: list[SpanEvent] = field(default_factory=list)
    links: list[SpanLink] = field(default_factory=list)
    # Set by reconstruction: how far this span was moved to fit inside its parent
    # (clock skew between hosts), 0 when it was not moved.
    skew_adjustment_ns: int = 0

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns

    @property
    def is_error(self) -> bool:
        return self.status is StatusCode.ERROR


class Completeness(StrEnum):
    COMPLETE = "complete"
    PARTIAL = "partial"


@dataclass(slots=True)
class Verdict:
    """Whether a trace is whole, and if not, every reason why (e.g. `missing_parent`,
    `client_without_server`, `orphan`), with the span ids each reason concerns."""

    completeness: Completeness = Completeness.COMPLETE
    reasons: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, span_id: str) -> None:
        self.completeness = Completeness.PARTIAL
        self.reasons.setdefault(reason, []).append(span_id)


@dataclass(slots=True)
class Edge:
    """Calls from one service to another seen in one trace: a client/server (or
    producer/consumer) pair, or a client span to a peer that sends no spans of its own
    (a database, an external host), whose callee is then `virtual`."""

    caller: str
    callee: str
    calls: int = 0
    errors: int = 0
    virtual: bool = False


@dataclass(slots=True)
class Trace:
    trace_id: str
    spans: list[Span]
    verdict: Verdict = field(default_factory=Verdict)
    # Filled by the service-graph stage, stored with the trace for `/api/dependencies`.
    edges: list[Edge] = field(default_factory=list)
    # True when spans arrived after the trace was first emitted and were merged into it.
    late: bool = False
    # On a late re-emission, how many of `spans` (a prefix) were in an earlier emission:
    # a store may rewrite them all (ids are idempotent), counters count only the rest.
    already_emitted: int = 0
