"""The span benchmark's report (bench/spans.py): the runs, medians and ratios, the
overload and slow-replica runs, the targets, and the notes on how CPU was read.

Every figure comes from the rows `spans.run_one` returns (also kept as JSON beside the
report); the sampling settings travel in each row's `sampling`.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
from typing import Any

from span_tools import TOOLS

TARGET_SPANS_PER_CPU_SECOND = 100_000


def _n(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def command_line(args: argparse.Namespace) -> str:
    words = [
        "~/.cache/observer/venv/bin/python bench/spans.py",
        f"--spans {args.spans} --runs {args.runs}",
        f"--compression {args.compression} --load-processes {args.load_processes}",
        f"--load-workers {args.load_workers}",
    ]
    if args.tools != "observer,otelcol":
        words.append(f"--tools {args.tools}")
    if args.skip_throughput:
        words.append("--skip-throughput")
    elif args.skip_overload:
        words.append("--skip-overload")
    if args.slow_replicas:
        words.append(
            f"--slow-replicas {args.slow_replicas:g} --slow-offered {args.slow_offered:g}"
            f" --slow-seconds {args.slow_seconds:g} --slow-queue-mib {args.slow_queue_mib}"
        )
    if args.results_suffix:
        words.append(f"--results-suffix={args.results_suffix}")
    return " ".join(words)


def write_report(
    rows: list[dict[str, Any]], facts: dict[str, str], args: argparse.Namespace
) -> str:
    lines = [
        f"# Span path benchmark, {datetime.date.today().isoformat()}",
        "",
        "Produced by (from the repository root):",
        "",
        "```",
        command_line(args),
        "```",
        "",
        "## Machine",
        "",
        *[f"- {key}: {value}" for key, value in facts.items()],
        "",
        "## Runs (in the order they ran)",
        "",
        "CPU whole life: rusage at exit, start-up included. Start-up: CPU before the load "
        "was started (the tool idle since its warm-up). Steady: CPU from the load's start "
        "to the replicas' last span.",
        "",
        "| # | tool | mode | spans delivered | enriched | traces split | refused (load) | wall s "
        "| spans/s | CPU s whole life | spans / CPU s whole life | CPU s start-up "
        "| CPU s steady | spans / CPU s steady | peak RSS MB | load before |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        sinks = row["sinks"]
        lines.append(
            f"| {row['run']} | {row['tool']} | {row['mode']} | {sinks.get('spans', 0):,} "
            f"| {sinks.get('enriched', 0):,} | {sinks.get('traces_on_two_sinks', '?')} "
            f"| {row['load'].get('refused', 0):,} | {row['wall_s']:.2f} "
            f"| {row['spans_per_wall_s']:,.0f} | {row['user_s'] + row['sys_s']:.2f} "
            f"| {row['spans_per_cpu_s']:,.0f} | {_n(row.get('startup_cpu_s'), 2)} "
            f"| {_n(row.get('steady_cpu_s'), 2)} | {_n(row.get('steady_spans_per_cpu_s'))} "
            f"| {row['max_rss_mb']:.1f} | {row['load_before']} |"
            + (f" invalid: {row['invalid']}" if row.get("invalid") else "")
        )
    lines += ["", "Pod attributes the replicas received, by tool:", ""]
    for tool in TOOLS:
        found = {k for r in rows if r["tool"] == tool for k in r["sinks"].get("resource_keys", [])}
        if found:
            lines.append(f"- {tool}: {', '.join(sorted(k for k in found if k.startswith('k8s.')))}")
    summary = summarise(rows)
    if summary:
        lines += throughput_section(rows, summary)
    lines += overload_section([r for r in rows if r["mode"] == "overload"])
    lines += slow_section([r for r in rows if r["mode"] == "slow-replicas"])
    if "observer" in summary:
        lines += targets_section(summary)
    tick_ms = rows[0]["sampling"]["cpu_tick_s"] * 1000 if rows else 10.0
    lines += ["", "## Notes", ""]
    if summary:
        lines.append(
            "- The targets are judged on the **steady-state** figure: an agent runs as a "
            "DaemonSet for days and pays its start-up once, so spans per CPU-second while spans "
            "flow is what it costs a node. The whole-life figure adds the start-up (observer: "
            "the interpreter, imports and the first pod list; otelcol: a Go binary's start and "
            "its first pod list), which in a run of a million spans is a visible share of "
            "observer's CPU and almost none of otelcol's."
        )
    lines += [
        "- Steady-state CPU is utime + stime from /proc/<pid>/stat (clock ticks of "
        f"{tick_ms:.0f} ms), read when the load process is started (the tool idle since its "
        "warm-up; the load builds its requests before sending, so no span is missed) and "
        "when the run's work is done: throughput, when the replicas' count, polled every "
        "0.1 s, reaches every span (at most about 0.2 s of idle after the last one is "
        "included); overload, 1 s after the load; slow replicas, after the drain.",
        "",
    ]
    return "\n".join(lines)


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Medians of each tool's valid throughput runs."""
    summary: dict[str, dict[str, float]] = {}
    for tool in TOOLS:
        runs = [
            r
            for r in rows
            if r["tool"] == tool and r["mode"] == "throughput" and not r.get("invalid")
        ]
        if not runs:
            continue
        summary[tool] = {
            key: statistics.median(r.get(key) or 0.0 for r in runs)
            for key in (
                "spans_per_cpu_s",
                "steady_spans_per_cpu_s",
                "startup_cpu_s",
                "spans_per_wall_s",
            )
        }
        summary[tool]["max_rss_mb"] = max(r["max_rss_mb"] for r in runs)
    return summary


def throughput_section(
    rows: list[dict[str, Any]], summary: dict[str, dict[str, float]]
) -> list[str]:
    lines = [
        "",
        "## Summary (medians of the throughput runs)",
        "",
        "| tool | spans / CPU s, steady state | spans / CPU s, whole life | CPU s before the "
        "load (start-up) | spans/s | peak RSS MB (worst, throughput) "
        "| peak RSS MB (worst, 2× overload) |",
        "|---|---|---|---|---|---|---|",
    ]
    for tool, figures in summary.items():
        over = [r["max_rss_mb"] for r in rows if r["tool"] == tool and r["mode"] == "overload"]
        lines.append(
            f"| {tool} | {figures['steady_spans_per_cpu_s']:,.0f} "
            f"| {figures['spans_per_cpu_s']:,.0f} | {figures['startup_cpu_s']:.2f} "
            f"| {figures['spans_per_wall_s']:,.0f} | {figures['max_rss_mb']:.1f} "
            f"| {f'{max(over):.1f}' if over else 'not run'} |"
        )
    if "observer" in summary and "otelcol" in summary:
        ours, theirs = summary["observer"], summary["otelcol"]
        lines += ["", "observer / otelcol:", ""]
        for key, label in (
            ("steady_spans_per_cpu_s", "steady state"),
            ("spans_per_cpu_s", "whole life"),
        ):
            pairs = [
                f"{a[key] / b[key]:.2f} ×"
                for a, b in zip(
                    [r for r in rows if r["tool"] == "observer" and r["mode"] == "throughput"],
                    [r for r in rows if r["tool"] == "otelcol" and r["mode"] == "throughput"],
                    strict=False,
                )
                if a.get(key) and b.get(key)
            ]
            lines.append(
                f"- {label}: {ours[key] / theirs[key]:.2f} × by the medians; run by run "
                f"{', '.join(pairs)}"
            )
    return lines


def overload_section(over_rows: list[dict[str, Any]]) -> list[str]:
    if not over_rows:
        return []
    lines = [
        "",
        "## 2× overload (offered twice the tool's best spans/s, refusals not resent)",
        "",
        "The tool alone on CPU 0, the load processes and the replicas on the other CPUs.",
        "",
        "| tool | load processes | offered spans/s | sent | accepted | refused (load's count) "
        "| refused (tool's own counter) | delivered to replicas | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in over_rows:
        load, counts = row["load"], row.get("tool_counts", {})
        own = counts.get("refused")
        lines.append(
            f"| {row['tool']} | {load.get('processes', 1)} | {row['offered_spans_per_s']:,.0f} "
            f"| {load.get('sent', 0):,} | {load.get('accepted', 0):,} | {load.get('refused', 0):,} "
            f"| {'not exported' if own is None else f'{own:,.0f}'} "
            f"| {row['sinks'].get('spans', 0):,} | {row['max_rss_mb']:.1f} |"
        )
    return lines


def slow_section(slow_rows: list[dict[str, Any]]) -> list[str]:
    if not slow_rows:
        return []
    first = slow_rows[0]
    sampling = first["sampling"]
    replicas, offered = first["replica_spans_per_s"], first["offered_spans_per_s"]
    seconds = first["load"].get("seconds", 0)
    lines = [
        "",
        f"## Slow replicas: they take {replicas:,.0f} spans/s, {offered:,.0f} offered "
        "(refusals not resent)",
        "",
        f"Each replica takes a third of {replicas:,.0f} spans/s, one Export at a time; the "
        f"load offers {offered:,.0f} spans/s, paced, for about {seconds:.0f} s, from "
        f"{first['load'].get('processes', 1)} process(es), and never resends a refusal. "
        f"Both tools' export queues are bounded at {first['queue_bytes'] / (1 << 20):.0f} MiB "
        "of encoded spans (observer: `sinks.collector.queue.max_bytes`; otelcol: the "
        "loadbalancing exporter's per-replica `sending_queue`, `sizer: bytes`, a third each, "
        "2 consumers each as observer's `max_in_flight`). Not pinned. After the load, the "
        "replicas get the tool's queue at their pace until nothing arrives for "
        f"{sampling['drain_stall_s']:.0f} s.",
        "",
        "| tool | offered spans/s (achieved) | sent | accepted (load) | refused (load) "
        "| refused spans (tool's counter) | refused requests (tool's counter) "
        "| answers by code (requests) | refusals with RetryInfo | first refusal at s "
        "| delivered | accepted − delivered | dropped (tool's counter) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in slow_rows:
        load, counts = row["load"], row.get("tool_counts", {})
        achieved = load.get("sent", 0) / load["seconds"] if load.get("seconds") else 0
        delivered = row["sinks"].get("spans", 0)
        codes = ", ".join(f"{code} {n:,}" for code, n in sorted(load.get("codes", {}).items()))
        lines.append(
            f"| {row['tool']} | {achieved:,.0f} | {load.get('sent', 0):,} "
            f"| {load.get('accepted', 0):,} | {load.get('refused', 0):,} "
            f"| {_n(counts.get('refused'))} | {_n(counts.get('refused_requests'))} | {codes} "
            f"| {load.get('refusals_with_retry_info', 0):,} | {_n(load.get('first_refusal_s'), 1)} "
            f"| {delivered:,} | {load.get('accepted', 0) - delivered:,} "
            f"| {_n(counts.get('dropped'))} |"
        )
    lines += [
        "",
        "- refused (tool's counter): observer's `observer_spans_refused` and "
        '`observer_span_requests_refused` with `reason="queue_full"`; otelcol\'s '
        "`otelcol_receiver_refused_spans`.",
        "- dropped (tool's counter): observer's `observer_spans_dropped`, every reason; "
        "otelcol's `otelcol_exporter_send_failed_spans` of the loadbalancing exporter, which "
        "counts a whole batch when one replica's queue turned its share away (the other "
        "shares were queued), so it can exceed what was lost. Behind the batch processor "
        "those spans had been answered OK already.",
        "- accepted − delivered: spans the sender was told were taken that never reached a "
        "replica; below zero when the tool delivered spans it had answered as refused (the "
        "shares of a request that other replicas' queues took).",
        "",
        f"Memory (VmRSS every {sampling['every_s']} s):",
        "",
        "| tool | before the load MB | peak during the load MB | mean of the load's last "
        f"{sampling['tail_s']:.0f} s MB | after the drain MB | peak (rusage) MB | most held in the queue "
        "MiB (observer's gauge) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in slow_rows:
        memory = row.get("memory", {})
        queued = memory.get("queue_peak_bytes")
        lines.append(
            f"| {row['tool']} | {_n(memory.get('before_load_mb'), 1)} "
            f"| {_n(memory.get('peak_during_load_mb'), 1)} | {_n(memory.get('tail_mean_mb'), 1)} "
            f"| {_n(memory.get('after_drain_mb'), 1)} | {row['max_rss_mb']:.1f} "
            f"| {_n(None if queued is None else queued / (1 << 20), 1)} |"
        )
    lines += ["", "RSS MB every 5 s from the load's start, then the replicas' state:", ""]
    for row in slow_rows:
        series = rss_every(row.get("samples", []), 5.0)
        sinks = row["sinks"]
        load_s = row.get("memory", {}).get("load_s", 0)
        lines.append(
            f"- {row['tool']} (the load ran {load_s:.0f} s, then the drain): "
            f"{', '.join(series)}. Replicas: {sinks.get('exports_answered', 0):,} "
            f"Exports answered, {sinks.get('exports_cancelled', 0):,} given up by the tool while "
            f"waiting, longest answer {sinks.get('longest_answer_s', 0):.2f} s, traces split "
            f"{sinks.get('traces_on_two_sinks', '?')}."
        )
    return lines


def rss_every(samples: list[dict[str, Any]], seconds: float) -> list[str]:
    """RSS of the first sample at or after each multiple of `seconds` from the load's start."""
    series, mark = [], 0.0
    for sample in samples:
        if sample["t"] >= mark and sample["rss_mb"]:
            series.append(f"{sample['rss_mb']:.0f}")
            while mark <= sample["t"]:
                mark += seconds
    return series


def targets_section(summary: dict[str, dict[str, float]]) -> list[str]:
    ours = summary["observer"]
    lines = [
        "",
        "## Targets (steady state; whole life beside it)",
        "",
        "| target | observer, steady state | met | observer, whole life |",
        "|---|---|---|---|",
    ]
    steady, whole = ours["steady_spans_per_cpu_s"], ours["spans_per_cpu_s"]
    lines.append(
        f"| ≥ {TARGET_SPANS_PER_CPU_SECOND:,} spans per CPU-second | {steady:,.0f} "
        f"| {'yes' if steady >= TARGET_SPANS_PER_CPU_SECOND else 'no'} | {whole:,.0f} |"
    )
    if "otelcol" in summary:
        theirs = summary["otelcol"]
        peer_steady, peer_whole = theirs["steady_spans_per_cpu_s"], theirs["spans_per_cpu_s"]
        lines.append(
            f"| ≥ otelcol beside it ({peer_steady:,.0f} steady, {peer_whole:,.0f} whole life) "
            f"| {steady / peer_steady:.2f} × | {'yes' if steady >= peer_steady else 'no'} "
            f"| {whole / peer_whole:.2f} × |"
        )
    return lines
