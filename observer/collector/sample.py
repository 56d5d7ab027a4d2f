"""Tail sampling: which assembled traces are stored.

Decided on the whole trace, after assembly and reconstruction, by three policies in order:

1. `error` — every trace with a span whose status is error;
2. `latency` — every trace that lasted longer than `latency_threshold` (first span start
   to last span end; None switches the policy off);
3. `probabilistic` — a share of the rest, decided by the trace id alone, so every
   collector replica and every re-emission of a trace decides the same way. The rule is
   OpenTelemetry's consistent probability sampling (the TraceState probability-sampling
   spec): the rightmost 56 bits of the trace id are its randomness R, and the trace is
   kept when R ≥ T, the rejection threshold (1 − share) × 2⁵⁶. A head sampler that kept
   a trace at a lower share would therefore keep it here too.

A trace emitted again with late spans is decided again: adding spans can only add errors
and length, so a trace kept once stays kept. Decisions are counted by outcome and by the
policy that made them (`kept` by `error`, `latency` or `probabilistic`, `dropped` by
`probabilistic`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from observer.collector.model import Trace

ERROR = "error"
LATENCY = "latency"
PROBABILISTIC = "probabilistic"
KEPT = "kept"
DROPPED = "dropped"

_RANDOM_BITS = 56
_RANDOM_HEX = _RANDOM_BITS // 4


class Sampler:
    def __init__(
        self, *, keep_errors: bool, latency_threshold: float | None, probabilistic_share: float
    ) -> None:
        if not 0.0 <= probabilistic_share <= 1.0:
            raise ValueError(f"probabilistic_share must be within [0, 1]: {probabilistic_share}")
        self.keep_errors = keep_errors
        self.latency_threshold_ns = (
            None if latency_threshold is None else int(latency_threshold * 1e9)
        )
        self.rejection_threshold = round((1.0 - probabilistic_share) * (1 << _RANDOM_BITS))
        # (decision, policy) → traces
        self.counts: Counter[tuple[str, str]] = Counter()

    def sample(self, traces: Iterable[Trace]) -> list[Trace]:
        """The traces to keep, in order; every decision is counted."""
        kept: list[Trace] = []
        counts = self.counts
        for trace in traces:
            policy = self.keeping_policy(trace)
            if policy is None:
                counts[(DROPPED, PROBABILISTIC)] += 1
            else:
                counts[(KEPT, policy)] += 1
                kept.append(trace)
        return kept

    def keeping_policy(self, trace: Trace) -> str | None:
        """The first policy that keeps the trace, or None when it is dropped."""
        spans = trace.spans
        if self.keep_errors and any(span.is_error for span in spans):
            return ERROR
        threshold = self.latency_threshold_ns
        if threshold is not None and spans:
            duration = max(span.end_ns for span in spans) - min(span.start_ns for span in spans)
            if duration > threshold:
                return LATENCY
        if int(trace.trace_id[-_RANDOM_HEX:], 16) >= self.rejection_threshold:
            return PROBABILISTIC
        return None
