"""Log collection: observer's agent against the OpenTelemetry Collector's filelog receiver.

    ~/.cache/observer/venv/bin/python bench/collection.py [--lines 2000000] [--runs 2]

Both read the same generated pod-log tree (bench/corpus.py) from its start and write every
record to a local file, one after the other, each from a clean state (a new temporary
directory: no checkpoints, no output), interleaved observer, otelcol, observer, otelcol…:

- observer: ``observer agent --config <tmp>/agent.yaml --once`` with
  ``sinks: {elasticsearch: null, file: {path: ...}}``. The whole path: read, merge
  partial lines, parse JSON bodies, build the ECS documents, serialise them as JSON lines.
  It exits when every file is read and delivered.
- otelcol: filelog receiver (``start_at: beginning``, the ``container`` operator with its
  default ``add_metadata_from_filepath``, which needs ``include_file_path``), batch
  processor, file exporter (OTLP JSON). It does not exit by itself: its own
  ``otelcol_exporter_sent_log_records`` metric is polled until every record is exported,
  then it gets SIGTERM. Its wall time ends at that moment; the shutdown after it is
  reported as idle time, and its CPU stays in the total.

For each run: lines/s (records over wall time), CPU-seconds (user + system, from the
kernel's rusage of the process) per million lines, and peak RSS. Both outputs are checked
to hold exactly the expected records (16 KiB-split lines counted once) before a run counts.
Results go to bench/results/collection-<date>.md (and .json beside it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpus as corpus_module
from harness import (
    BENCH,
    OTELCOL_VERSION,
    Measured,
    free_port,
    load_average,
    machine_facts,
    observer_command,
    observer_env,
    otelcol_binary,
    prometheus_value,
    run_to_end,
    run_until,
    snapshot_observer,
)

TARGET_CPU_PER_MILLION = 9.0
TARGET_CPU_RATIO = 0.5
TARGET_RSS_MB = 100.0


def observer_config(root: Path, work: Path) -> Path:
    config = work / "agent.yaml"
    config.write_text(
        f"""\
node_name: bench
state_dir: {work / "state"}
telemetry:
  listen: 127.0.0.1:{free_port()}
  log_level: info
sources:
  pod_logs:
    root: {root}
sinks:
  elasticsearch: null
  file:
    path: {work / "out.jsonl"}
"""
    )
    return config


def otelcol_config(corpus: corpus_module.Corpus, work: Path, port: int) -> Path:
    config = work / "otelcol.yaml"
    config.write_text(
        f"""\
receivers:
  file_log:
    include: [{corpus.include_glob}]
    start_at: beginning
    include_file_path: true   # the container operator reads pod metadata from it
    operators:
      - type: container       # CRI/docker formats, P/F recombination, path metadata
processors:
  batch: {{}}
exporters:
  file:
    path: {work / "out.json"}
service:
  telemetry:
    logs: {{level: warn}}
    metrics:
      level: basic
      readers:
        - pull:
            exporter:
              prometheus: {{host: 127.0.0.1, port: {port}}}
  pipelines:
    logs:
      receivers: [file_log]
      processors: [batch]
      exporters: [file]
"""
    )
    return config


def run_observer(corpus: corpus_module.Corpus, work: Path, source: Path) -> Measured:
    config = observer_config(corpus.root, work)
    argv = [*observer_command(), "agent", "--config", str(config), "--once"]
    measured = run_to_end(argv, work / "observer.log", env=observer_env(source))
    if measured.returncode != 0:
        raise RuntimeError(
            f"observer exited {measured.returncode}: {(work / 'observer.log').read_text()[-2000:]}"
        )
    measured.extra.update(verify_observer(work / "out.jsonl", corpus))
    return measured


def verify_observer(path: Path, corpus: corpus_module.Corpus) -> dict[str, object]:
    records = parsed = long = 0
    with path.open("rb") as lines:
        for line in lines:
            document = orjson.loads(line)
            records += 1
            parsed += "trace" in document
            long += len(line) > 30_000
    _check("observer", records, corpus.lines)
    _check("observer: JSON bodies parsed", parsed, corpus.json_bodies)
    _check("observer: merged 16 KiB-split lines", long, corpus.long_lines)
    return {"records": records}


def run_otelcol(corpus: corpus_module.Corpus, work: Path, binary: Path) -> Measured:
    port = free_port()
    config = otelcol_config(corpus, work, port)
    url = f"http://127.0.0.1:{port}/metrics"

    def exported() -> bool:
        sent = prometheus_value(url, "otelcol_exporter_sent_log_records", {"exporter": "file"})
        return sent is not None and sent >= corpus.lines

    measured = run_until([str(binary), "--config", str(config)], work / "otelcol.log", exported)
    measured.extra.update(verify_otelcol(work / "out.json", corpus))
    return measured


def verify_otelcol(path: Path, corpus: corpus_module.Corpus) -> dict[str, object]:
    records = long = with_pod = 0
    with path.open("rb") as requests:
        for line in requests:
            for resource_logs in orjson.loads(line)["resourceLogs"]:
                keys = {a["key"] for a in resource_logs.get("resource", {}).get("attributes", [])}
                for scope_logs in resource_logs["scopeLogs"]:
                    for record in scope_logs["logRecords"]:
                        records += 1
                        with_pod += "k8s.pod.uid" in keys
                        long += len(record["body"].get("stringValue", "")) > 30_000
    _check("otelcol", records, corpus.lines)
    _check("otelcol: records with pod metadata", with_pod, corpus.lines)
    _check("otelcol: merged 16 KiB-split lines", long, corpus.long_lines)
    return {"records": records}


def _check(what: str, got: int, expected: int) -> None:
    if got != expected:
        raise RuntimeError(f"{what}: {got} records, expected {expected}")


def warm_page_cache(corpus: corpus_module.Corpus) -> None:
    """Read the corpus once so that every run, the first included, reads from memory."""
    for path in sorted(corpus.root.glob("*/*/*.log")):
        with path.open("rb") as f:
            while f.read(1 << 20):
                pass


def row(tool: str, run: int, m: Measured, lines: int, load: str) -> dict[str, object]:
    return {
        "tool": tool,
        "run": run,
        "records": m.extra.get("records"),
        "wall_s": round(m.wall_s, 2),
        "lines_per_s": round(lines / m.wall_s),
        "user_s": round(m.user_s, 2),
        "sys_s": round(m.sys_s, 2),
        "cpu_s": round(m.cpu_s, 2),
        "cpu_s_per_million": round(m.cpu_s / (lines / 1e6), 2),
        "max_rss_mb": round(m.max_rss_mb, 1),
        "idle_s": round(m.idle_s, 2),
        "load_before": load,
    }


def summarise(rows: list[dict[str, object]]) -> dict[str, dict[str, float]]:
    summary = {}
    for tool in ("observer", "otelcol"):
        mine = [r for r in rows if r["tool"] == tool]
        if mine:
            summary[tool] = {
                key: statistics.median(float(r[key]) for r in mine)  # type: ignore[arg-type]
                for key in ("lines_per_s", "cpu_s_per_million", "max_rss_mb", "wall_s")
            }
            summary[tool]["max_rss_mb_worst"] = max(float(r["max_rss_mb"]) for r in mine)  # type: ignore[arg-type]
    return summary


def report(
    rows: list[dict[str, object]],
    corpus: corpus_module.Corpus,
    facts: dict[str, str],
    command: str,
    date: str,
) -> str:
    summary = summarise(rows)
    out = [
        f"# Log collection benchmark, {date}",
        "",
        "Produced by (from the repository root):",
        "",
        "```",
        command,
        "```",
        "",
        "## Machine",
        "",
        *(f"- {key}: {value}" for key, value in facts.items()),
        "",
        "## Corpus",
        "",
        f"- {corpus.lines:,} records ({corpus.physical_lines:,} CRI lines, {corpus.long_lines} "
        f"lines of 40,000 bytes split at 16 KiB into P/P/F), {corpus.bytes / 1e6:.1f} MB in "
        f"{corpus.files} files, seed {corpus.seed}",
        f"- {corpus.json_bodies:,} JSON bodies, {corpus.stderr_lines:,} stderr lines",
        f"- `{corpus.root}`; the page cache was warmed before the first run",
        "",
        "## Runs (in the order they ran)",
        "",
        "| # | tool | records | wall s | lines/s | user s | sys s | CPU s | CPU s / M lines | peak RSS MB | idle s | load before |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['run']} | {r['tool']} | {r['records']:,} | {r['wall_s']} | {r['lines_per_s']:,} | "
            f"{r['user_s']} | {r['sys_s']} | {r['cpu_s']} | {r['cpu_s_per_million']} | "
            f"{r['max_rss_mb']} | {r['idle_s']} | {r['load_before']} |"
        )
    out += [
        "",
        "Wall time for otelcol ends when its `otelcol_exporter_sent_log_records` reached the "
        "record count (polled every 0.25 s); `idle s` is the time from then to its exit after "
        "SIGTERM, whose CPU is included in its total (nothing is subtracted). observer's wall "
        "time is the process's whole life, interpreter start-up included. `load before` is the "
        "1-minute load average when the run started: this machine is shared with other work "
        "(test suites), which lengthens wall times and, less, CPU times.",
        "",
        "## Summary (medians)",
        "",
        "| tool | lines/s | CPU s / M lines | peak RSS MB (worst) |",
        "|---|---|---|---|",
    ]
    for tool, s in summary.items():
        out.append(
            f"| {tool} | {s['lines_per_s']:,.0f} | {s['cpu_s_per_million']:.2f} | "
            f"{s['max_rss_mb']:.1f} ({s['max_rss_mb_worst']:.1f}) |"
        )
    if "observer" in summary and "otelcol" in summary:
        ob, ot = summary["observer"], summary["otelcol"]
        ratio = ob["cpu_s_per_million"] / ot["cpu_s_per_million"]
        out += [
            "",
            f"observer CPU / otelcol CPU per line: **{ratio:.2f}**",
            "",
            "## Targets",
            "",
            "| target | observer | met |",
            "|---|---|---|",
            f"| CPU per line ≤ {TARGET_CPU_RATIO} × otelcol | {ratio:.2f} × | {_yes(ratio <= TARGET_CPU_RATIO)} |",
            f"| ≤ {TARGET_CPU_PER_MILLION} CPU s per million lines | {ob['cpu_s_per_million']:.2f} | "
            f"{_yes(ob['cpu_s_per_million'] <= TARGET_CPU_PER_MILLION)} |",
            f"| peak RSS < {TARGET_RSS_MB:.0f} MB | {ob['max_rss_mb_worst']:.1f} | "
            f"{_yes(ob['max_rss_mb_worst'] < TARGET_RSS_MB)} |",
        ]
    return "\n".join(out) + "\n"


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=2_000_000)
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", type=int, default=2, help="runs of each tool, interleaved")
    parser.add_argument("--only", choices=("observer", "otelcol"), help="run one tool only")
    parser.add_argument(
        "--results", type=Path, default=BENCH / "results", help="where to write the report"
    )
    parser.add_argument("--date", default=datetime.date.today().isoformat())
    parser.add_argument("--no-write", action="store_true", help="print the report, write nothing")
    args = parser.parse_args(argv)

    corpus = corpus_module.ensure(args.lines, args.files, args.seed)
    binary = otelcol_binary() if args.only != "observer" else None
    snapshot = tempfile.TemporaryDirectory(prefix="bench-observer-src-")
    source = snapshot_observer(Path(snapshot.name))
    facts = machine_facts(binary, source)
    warm_page_cache(corpus)
    tools = [args.only] if args.only else ["observer", "otelcol"]
    rows = []
    for run in range(1, args.runs + 1):
        for tool in tools:
            load = load_average()
            with tempfile.TemporaryDirectory(prefix=f"bench-{tool}-") as tmp:
                work = Path(tmp)
                if tool == "observer":
                    measured = run_observer(corpus, work, source)
                else:
                    assert binary is not None
                    measured = run_otelcol(corpus, work, binary)
            rows.append(row(tool, run, measured, corpus.lines, load))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    snapshot.cleanup()
    command = "~/.cache/observer/venv/bin/python bench/collection.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    text = report(rows, corpus, facts, command.strip(), args.date)
    print(text)
    if not args.no_write:
        args.results.mkdir(parents=True, exist_ok=True)
        stem = args.results / f"collection-{args.date}"
        stem.with_suffix(".md").write_text(text)
        stem.with_suffix(".json").write_text(
            json.dumps(
                {
                    "command": command,
                    "machine": facts,
                    "otelcol_version": OTELCOL_VERSION,
                    "corpus": {**asdict(corpus), "root": str(corpus.root)},
                    "runs": rows,
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
