"""Span receivers, shared by both deployables: OTLP/gRPC, OTLP/HTTP and Zipkin v2.

A receiver decodes a request into a batch with its `Decoders`, drops the spans with
invalid ids, and hands the rest to a `SpanConsumer` with the sender's address. The
consumer takes ownership of the batch when it answers ACCEPTED; FULL or UNAVAILABLE become
the protocol's retryable answer.

The default decoders (`MESSAGES`) make OTLP `ResourceSpans` messages, which the agent
enriches and routes (see `observer.protocols`). The collector decodes OTLP protobuf into
its trace core's own spans instead (`observer.collector.pipeline.DECODERS`): a receiver
only passes batches on, so it is generic in their type. (The collector serves OTLP/gRPC
without TLS natively, `observer.collector.otlp_grpc`, answering as this table says.)

Answers, per the OTLP specification (opentelemetry-proto `docs/specification.md`) and
Zipkin's API:

| case                       | OTLP/HTTP                  | OTLP/gRPC                    | Zipkin   |
| -------------------------- | -------------------------- | ---------------------------- | -------- |
| accepted                   | 200                        | OK                           | 202      |
| some spans with bad ids    | 200 + partial_success      | OK + partial_success         | 202      |
| undecodable payload        | 400 + Status               | INVALID_ARGUMENT             | 400      |
| unsupported content type   | 415                        | —                            | 415      |
| body over the limit (also after decompression) | 413    | RESOURCE_EXHAUSTED (gRPC's own limit) | 413 |
| consumer full              | 429 + Retry-After          | RESOURCE_EXHAUSTED + RetryInfo | 429 + Retry-After |
| unavailable, too many requests at once | 503 + Retry-After | UNAVAILABLE + RetryInfo      | 503 + Retry-After |

Every refusal is counted by receiver and reason, and logged at most once per
`PROBLEM_LOG_INTERVAL` per reason with the number seen since (never once per request).
"""

from __future__ import annotations

import enum
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from observer.protocols import otlp, zipkin
from observer.protocols.otlp import Decode
from observer.telemetry import metric_name

log = logging.getLogger(__name__)

PROBLEM_LOG_INTERVAL = 10.0
RETRY_AFTER_SECONDS = 1
"""What a refusal for overload suggests to wait: the queue drains in about a batch
interval, and OTLP clients back off exponentially from there."""


class Admission(enum.Enum):
    ACCEPTED = "accepted"
    FULL = "queue_full"
    """The consumer's bounded queue has no room: retry later (HTTP 429, RESOURCE_EXHAUSTED)."""
    UNAVAILABLE = "unavailable"
    """Nowhere to send them now (shutting down, no collector known): retry later (HTTP 503,
    UNAVAILABLE)."""


Batch = TypeVar("Batch")

SpanConsumer = Callable[[Batch, int, str | None], Awaitable[Admission]]
"""`consume(batch, span_count, peer_ip)`: the receivers' one hand-off. With the default
decoders, OTLP protobuf requests arrive as an `otlp.EncodedBatch`, which also holds the
request's bytes, so spans can be passed on without being encoded again."""


@dataclass(frozen=True, slots=True)
class Decoders(Generic[Batch]):
    """How request bodies become batches, by protocol and encoding (each raises
    `PayloadError` for a body that does not decode)."""

    otlp_protobuf: Decode[Batch]
    otlp_json: Decode[Batch]
    zipkin_json: Decode[Batch]
    zipkin_protobuf: Decode[Batch]


MESSAGES: Decoders[list[ResourceSpans]] = Decoders(
    otlp.decode_checked_protobuf,
    otlp.decode_checked_json,
    zipkin.decode_json,
    zipkin.decode_protobuf,
)
"""Decoding into OTLP `ResourceSpans` messages."""


class Refusal(enum.StrEnum):
    """Why a request or spans were not accepted: the `reason` label of the counters."""

    INVALID_ID = "invalid_id"
    BAD_PAYLOAD = "bad_payload"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    TOO_LARGE = "too_large"
    QUEUE_FULL = "queue_full"
    UNAVAILABLE = "unavailable"
    TOO_MANY_REQUESTS = "too_many_requests"


class IntakeCounts:
    """What the receivers of one process took in and refused, read at scrape time."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.spans_accepted: Counter[str] = Counter()
        self.spans_refused: Counter[tuple[str, str]] = Counter()
        self.requests_refused: Counter[tuple[str, str]] = Counter()
        self.clock = clock
        self._unlogged: Counter[tuple[str, str]] = Counter()
        self._logged_at: dict[tuple[str, str], float] = {}

    def accepted(self, receiver: str, spans: int) -> None:
        self.spans_accepted[receiver] += spans

    def refused(
        self, receiver: str, reason: Refusal, spans: int | None, detail: str, peer: str | None
    ) -> None:
        """Count a refusal (of a whole request, and of its spans when their number is
        known) and log it, at most once per interval per reason with the count since."""
        key = (receiver, reason.value)
        if spans is not None:
            self.spans_refused[key] += spans
        if reason is not Refusal.INVALID_ID:
            self.requests_refused[key] += 1
        self._unlogged[key] += 1
        now = self.clock()
        last = self._logged_at.get(key)
        if last is not None and now - last < PROBLEM_LOG_INTERVAL:
            return
        self._logged_at[key] = now
        log.log(
            logging.INFO if reason is Refusal.UNAVAILABLE else logging.WARNING,
            "Spans were refused; the sender was told why.",
            extra={
                "receiver": receiver,
                "reason": reason.value,
                "detail": detail,
                "peer": peer,
                "occurrences_since_last_log": self._unlogged.pop(key),
            },
        )


class IntakeMetrics(Collector):
    def __init__(self, counts: IntakeCounts) -> None:
        self.counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        accepted = CounterMetricFamily(
            metric_name("spans_received"),
            "Spans accepted by a receiver and handed on.",
            labels=["receiver"],
        )
        for receiver, value in sorted(self.counts.spans_accepted.items()):
            accepted.add_metric([receiver], value)
        yield accepted
        spans = CounterMetricFamily(
            metric_name("spans_refused"),
            "Spans a receiver did not accept, by reason (their number known: invalid ids, "
            "a full queue, nowhere to send them).",
            labels=["receiver", "reason"],
        )
        for (receiver, reason), value in sorted(self.counts.spans_refused.items()):
            spans.add_metric([receiver, reason], value)
        yield spans
        requests = CounterMetricFamily(
            metric_name("span_requests_refused"),
            "Requests a receiver answered with an error, by reason.",
            labels=["receiver", "reason"],
        )
        for (receiver, reason), value in sorted(self.counts.requests_refused.items()):
            requests.add_metric([receiver, reason], value)
        yield requests
