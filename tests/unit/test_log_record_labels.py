"""Label values of the log record metrics: levels folded into a fixed set, and the series of
a workload forgotten a while after its last log file closed."""

from __future__ import annotations

import pytest

from observer.agent.log_metrics import LogRecordCounts, metric_level

KEEP_FOR = 300.0


@pytest.mark.parametrize(
    ("level", "label"),
    [
        ("info", "info"),
        ("warning", "warn"),
        ("err", "error"),
        ("critical", "fatal"),
        ("dpanic", "fatal"),
        ("notice", "info"),
        ("verbose", "other"),
        ("", "unknown"),
        (None, "unknown"),
    ],
)
def test_levels_fold_into_a_fixed_set(level: str | None, label: str) -> None:
    """Every level an application may write maps to one of a few label values."""
    assert metric_level(level) == label


def record(level: str | None = None, stream: str = "stdout") -> dict[str, object]:
    log: dict[str, object] = {} if level is None else {"level": level}
    return {"stream": stream, "log": log}


def test_a_closed_workloads_series_go_after_the_grace_and_open_ones_stay() -> None:
    """Series of a workload with no open file are kept for the grace period, then dropped;
    a workload whose file is still open keeps its series however quiet it is."""
    now = [0.0]
    counts = LogRecordCounts(clock=lambda: now[0])
    counts.count("shop", "deployment/web", [record("info"), record("info")])
    counts.count("shop", "job/backup-28901", [record(), record("error", "stderr")])
    still_open = {("shop", "deployment/web")}

    counts.forget_closed(still_open, KEEP_FOR)
    now[0] += KEEP_FOR - 1
    counts.forget_closed(still_open, KEEP_FOR)
    kept_during_grace = dict(counts.series)
    now[0] += 2
    counts.forget_closed(still_open, KEEP_FOR)

    assert kept_during_grace == {
        ("shop", "deployment/web", "stdout", "info"): 2,
        ("shop", "job/backup-28901", "stdout", "unknown"): 1,
        ("shop", "job/backup-28901", "stderr", "error"): 1,
    }
    assert counts.series == {("shop", "deployment/web", "stdout", "info"): 2}


def test_a_workload_that_logs_again_within_the_grace_keeps_its_series() -> None:
    """A file of the workload opened again before the grace ends (a restarted pod) keeps
    its counter going rather than resetting it."""
    now = [0.0]
    counts = LogRecordCounts(clock=lambda: now[0])
    counts.count("shop", "deployment/web", [record("info")])
    counts.forget_closed(set(), KEEP_FOR)
    now[0] += KEEP_FOR - 1
    counts.forget_closed({("shop", "deployment/web")}, KEEP_FOR)
    now[0] += KEEP_FOR - 1
    counts.forget_closed(set(), KEEP_FOR)

    assert counts.series == {("shop", "deployment/web", "stdout", "info"): 1}
