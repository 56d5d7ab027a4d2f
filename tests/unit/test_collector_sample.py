"""Tail sampling: errors and slow traces kept, a deterministic share of the rest, counted."""

from __future__ import annotations

import random

from observer.collector.model import Trace
from observer.collector.sample import DROPPED, ERROR, KEPT, LATENCY, PROBABILISTIC, Sampler
from tests.unit.collector_spans import span


def trace(trace_id: str, *, error: bool = False, duration_ms: float = 10) -> Trace:
    return Trace(
        trace_id,
        [
            span("1", trace_id=trace_id, end_ms=duration_ms),
            span("2", "1", trace_id=trace_id, start_ms=1, end_ms=2, error=error),
        ],
    )


def random_ids(count: int, seed: int = 7) -> list[str]:
    generator = random.Random(seed)
    return [f"{generator.getrandbits(128):032x}" for _ in range(count)]


def test_every_trace_with_an_error_is_kept_whatever_the_share() -> None:
    """With a zero share, traces holding an error span are still all kept, by the error policy."""
    sampler = Sampler(keep_errors=True, latency_threshold=None, probabilistic_share=0.0)
    traces = [trace(trace_id, error=True) for trace_id in random_ids(50)]
    assert sampler.sample(traces) == traces
    assert sampler.counts == {(KEPT, ERROR): 50}


def test_every_trace_slower_than_the_threshold_is_kept() -> None:
    """Traces longer than latency_threshold are kept; shorter ones are left to the share."""
    sampler = Sampler(keep_errors=True, latency_threshold=0.5, probabilistic_share=0.0)
    slow = trace("a" * 32, duration_ms=501)
    fast = trace("b" * 32, duration_ms=499)
    assert sampler.sample([slow, fast]) == [slow]
    assert sampler.counts == {(KEPT, LATENCY): 1, (DROPPED, PROBABILISTIC): 1}


def test_the_share_of_ordinary_traces_kept_is_close_to_the_configured_share() -> None:
    """Over many random trace ids, the share kept is the configured one within 2 points."""
    sampler = Sampler(keep_errors=True, latency_threshold=None, probabilistic_share=0.25)
    kept = sampler.sample(trace(trace_id) for trace_id in random_ids(20_000))
    assert abs(len(kept) / 20_000 - 0.25) < 0.02


def test_the_probabilistic_decision_depends_on_the_trace_id_alone() -> None:
    """Two samplers (two replicas, or a re-emission) decide every trace id the same way."""
    ids = random_ids(500)
    first = Sampler(keep_errors=False, latency_threshold=None, probabilistic_share=0.3)
    second = Sampler(keep_errors=False, latency_threshold=None, probabilistic_share=0.3)
    assert [t.trace_id for t in first.sample(trace(i) for i in ids)] == [
        t.trace_id for t in second.sample(trace(i) for i in reversed(ids))
    ][::-1]


def test_a_trace_kept_at_a_smaller_share_is_kept_at_a_larger_one() -> None:
    """Decisions are consistent across shares: raising the share only adds traces."""
    ids = random_ids(2_000)
    small = Sampler(keep_errors=False, latency_threshold=None, probabilistic_share=0.1)
    large = Sampler(keep_errors=False, latency_threshold=None, probabilistic_share=0.4)
    kept_small = {t.trace_id for t in small.sample(trace(i) for i in ids)}
    kept_large = {t.trace_id for t in large.sample(trace(i) for i in ids)}
    assert kept_small
    assert kept_small < kept_large


def test_a_share_of_one_keeps_everything_and_zero_keeps_only_what_policies_keep() -> None:
    """The share's ends: 1 keeps every trace, 0 drops every ordinary trace."""
    ids = random_ids(200)
    everything = Sampler(keep_errors=False, latency_threshold=None, probabilistic_share=1.0)
    nothing = Sampler(keep_errors=False, latency_threshold=None, probabilistic_share=0.0)
    assert len(everything.sample(trace(i) for i in ids)) == 200
    assert nothing.sample(trace(i) for i in ids) == []
    assert nothing.counts == {(DROPPED, PROBABILISTIC): 200}
