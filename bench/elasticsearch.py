"""Into a real Elasticsearch: observer's agent against the OpenTelemetry Collector (issue 4).

    ~/.cache/observer/venv/bin/python bench/elasticsearch.py [--lines 500000] [--runs 2]
        [--rate 5000] [--seconds 30] [--es-url URL]

One Elasticsearch node (tests/services/elasticsearch.py, heap 1 GiB, one shard, no
replicas, the default refresh_interval of 1 s) serves both tools, one after the other.

Throughput, interleaved observer, otelcol, observer, otelcol…, each from a clean node
(its data streams, indices and templates deleted) and a new temporary directory:

- observer: ``observer agent --config <tmp>/agent.yaml --once`` with only the
  Elasticsearch sink (``setup.number_of_replicas: 0``). Its wall time is its whole life
  plus a ``_refresh`` and ``_count`` on ``logs-kubernetes.container-default``, which must
  equal the corpus's records.
- otelcol: ``file_log`` receiver (``start_at: beginning``, the ``container`` operator)
  and the ``elasticsearch`` exporter (``logs_index: otelcol-bench``, its default mapping
  mode, sending queue and batching). It does not exit by itself: its
  ``otelcol_exporter_sent_log_records`` is polled every 0.25 s; once it reaches the
  records, ``_refresh`` and ``_count`` must equal them, and the wall time ends there.

docs/s is records over wall time; CPU-seconds (user + system from the kernel's rusage) per
million documents and peak RSS are the process's own, Elasticsearch's are not included.

Latency, each tool following a tree that a paced writer (a subprocess of this script)
appends to at ``--rate`` lines/s for ``--seconds``: four busy containers carry 90% of the
lines (bodies taken from the corpus, half JSON), a ``probe`` container the other 10%, one
line ``probe <seq> <written_ns>`` each, whose CRI timestamp is also the time of the write.
Every ~100 ms a ``_search`` for probe documents not yet seen (a range on ``@timestamp``
from the newest contiguous one) records searchable − written for each new one, the
searchable time being when that search was sent. The refresh interval (1 s) is the
Elasticsearch default for both and is part of the figure.

Results go to bench/results/elasticsearch-<date>.md (and .json beside it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpus as corpus_module
from harness import (
    BENCH,
    OTELCOL_VERSION,
    REPO,
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

OBSERVER_TARGET = "logs-kubernetes.container-default"
OTELCOL_TARGET = "otelcol-bench"
COLLECTION_CPU_PER_MILLION = 13.65
"""observer's median CPU-s per million lines into the file sink, collection-2026-11-21.md."""
TARGET_P99_S = 2.0
TARGET_RSS_MB = 100.0
PROBE_FIELD = {
    "observer": "kubernetes.container.name",
    "otelcol": "resource.attributes.k8s.container.name",
}


# --- Elasticsearch -----------------------------------------------------------------------


def es(url: str, method: str, path: str, body: Any = None, timeout: float = 60) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{url}{path}", data=data, method=method)  # noqa: S310
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - loopback
        return json.loads(response.read() or b"{}")


def count(url: str, target: str) -> int:
    try:
        es(url, "POST", f"/{target}/_refresh")
        return int(es(url, "GET", f"/{target}/_count")["count"])
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return 0
        raise


def clean(url: str) -> None:
    """Delete every data stream, index and non-managed template (as tests' Node.clean)."""
    es(url, "DELETE", "/_data_stream/*?expand_wildcards=all")
    for index in es(url, "GET", "/_cat/indices?format=json&expand_wildcards=open,closed"):
        if not index["index"].startswith("."):
            es(url, "DELETE", f"/{index['index']}")
    for template in es(url, "GET", "/_index_template").get("index_templates", []):
        if not template["index_template"].get("_meta", {}).get("managed"):
            es(url, "DELETE", f"/_index_template/{template['name']}")


# --- configurations ----------------------------------------------------------------------


def observer_config(root: Path, work: Path, url: str) -> Path:
    config = work / "agent.yaml"
    config.write_text(
        f"""\
node_name: bench
state_dir: {work / "state"}
telemetry:
  listen: 127.0.0.1:{free_port()}
  log_level: info
kubernetes:
  enabled: false
sources:
  pod_logs:
    root: {root}
sinks:
  file: null
  elasticsearch:
    hosts: [{url}]
    setup:
      number_of_replicas: 0
"""
    )
    return config


def otelcol_config(include: str, work: Path, url: str, port: int) -> Path:
    config = work / "otelcol.yaml"
    config.write_text(
        f"""\
receivers:
  file_log:
    include: [{include}]
    start_at: beginning
    include_file_path: true
    operators:
      - type: container
exporters:
  elasticsearch:
    endpoints: [{url}]
    logs_index: {OTELCOL_TARGET}
    sending_queue:
      batch:
        flush_timeout: 200ms   # the default (10 s) holds file_log at ~100 records/s
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
      exporters: [elasticsearch]
"""
    )
    return config


# --- throughput --------------------------------------------------------------------------


def throughput_observer(
    corpus: corpus_module.Corpus, work: Path, url: str, source: Path
) -> Measured:
    config = observer_config(corpus.root, work, url)
    argv = [*observer_command(), "agent", "--config", str(config), "--once"]
    started = time.monotonic()
    measured = run_to_end(argv, work / "observer.log", env=observer_env(source))
    if measured.returncode != 0:
        raise RuntimeError(
            f"observer exited {measured.returncode}: {(work / 'observer.log').read_text()[-2000:]}"
        )
    found = count(url, OBSERVER_TARGET)
    measured.wall_s = time.monotonic() - started
    dead = count(url, "logs-observer.dead_letter-default")
    measured.extra.update(records=found, dead_letters=dead, log=log_summary(work / "observer.log"))
    if found != corpus.lines:
        keep = BENCH / "results" / "elasticsearch-observer-short.log"
        keep.write_bytes((work / "observer.log").read_bytes()[-200_000:])
        print(
            f"observer: {found} documents, expected {corpus.lines}; {dead} dead letters; "
            f"log tail kept in {keep}",
            file=sys.stderr,
            flush=True,
        )
    return measured


def otelcol_template(url: str) -> None:
    """The exporter's default mapping mode (otel) writes with require_data_stream=true, so
    its target must be a data stream: an index template makes it one (dynamic mappings)."""
    es(
        url,
        "PUT",
        f"/_index_template/{OTELCOL_TARGET}",
        {
            "index_patterns": [f"{OTELCOL_TARGET}*"],
            "data_stream": {},
            "priority": 500,
            "template": {"settings": {"number_of_shards": 1, "number_of_replicas": 0}},
        },
    )


def throughput_otelcol(
    corpus: corpus_module.Corpus, work: Path, url: str, binary: Path
) -> Measured:
    otelcol_template(url)
    port = free_port()
    config = otelcol_config(corpus.include_glob, work, url, port)
    metrics = f"http://127.0.0.1:{port}/metrics"
    seen = {"count": 0}

    def indexed() -> bool:
        sent = prometheus_value(metrics, "otelcol_exporter_sent_log_records")
        if sent is None or sent < corpus.lines:
            return False
        seen["count"] = count(url, OTELCOL_TARGET)
        return seen["count"] >= corpus.lines

    measured = run_until(
        [str(binary), "--config", str(config)], work / "otelcol.log", indexed, timeout_s=900
    )
    found = count(url, OTELCOL_TARGET)
    measured.extra.update(records=found, log=log_summary(work / "otelcol.log"))
    if found != corpus.lines:
        raise RuntimeError(f"otelcol: {found} documents, expected {corpus.lines}")
    return measured


def log_summary(path: Path) -> dict[str, int]:
    """Lines per level in a tool's log (JSON lines for observer, zap console for otelcol)."""
    levels: dict[str, int] = {}
    for line in path.read_text(errors="replace").splitlines():
        match = re.search(r'"level":\s*"(\w+)"|\t(debug|info|warn|error|fatal)\t', line, re.I)
        level = (match[1] or match[2]).lower() if match else "other"
        levels[level] = levels.get(level, 0) + 1
    return levels


# --- latency -----------------------------------------------------------------------------


def cri_time(ns: int) -> str:
    seconds, fraction = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z"


def paced_writer(root: Path, rate: int, seconds: float, bodies_from: Path) -> None:
    """Append `rate` lines/s for `seconds` to 4 busy containers and a probe container."""
    bodies = []
    for path in sorted(bodies_from.glob("*/*/*.log")):
        with path.open("rb") as f:
            for raw in f:
                parts = raw.rstrip(b"\n").split(b" ", 3)
                if len(parts) == 4 and parts[2] == b"F" and len(raw) < 4096:
                    bodies.append(parts[1] + b" F " + parts[3] + b"\n")
                if len(bodies) >= 20_000:
                    break
        if len(bodies) >= 20_000:
            break
    files = []
    for i in range(4):
        directory = root / f"bench_busy-{i}_{i:08d}-0000-0000-0000-000000000000" / "app"
        directory.mkdir(parents=True, exist_ok=True)
        files.append(os.open(directory / "0.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644))
    probe_dir = root / "bench_probe_99999999-0000-0000-0000-000000000000" / "probe"
    probe = os.open(probe_dir / "0.log", os.O_WRONLY | os.O_APPEND)
    tick = 0.01
    started = time.monotonic()
    written = 0.0
    seq = 0
    b = 0
    while (now := time.monotonic()) - started < seconds:
        due = int((now - started) * rate) - int(written)
        chunks: list[list[bytes]] = [[] for _ in files]
        probes = []
        for n in range(due):
            ns = time.time_ns()
            stamp = cri_time(ns).encode()
            if (int(written) + n) % 10 == 0:
                seq += 1
                probes.append(stamp + f" stdout F probe {seq} {ns}\n".encode())
            else:
                chunks[b % 4].append(stamp + b" " + bodies[b % len(bodies)])
                b += 1
        for fd, lines in zip(files, chunks, strict=True):
            if lines:
                os.write(fd, b"".join(lines))
        if probes:
            os.write(probe, b"".join(probes))
        written += due
        time.sleep(max(0.0, tick - (time.monotonic() - now)))
    print(json.dumps({"lines": int(written), "probes": seq, "seconds": time.monotonic() - started}))


class Poller:
    """Searches for probe documents not seen yet; records searchable − written per probe."""

    def __init__(self, url: str, target: str, field: str) -> None:
        self.url, self.target, self.field = url, target, field
        self.latencies_s: dict[int, float] = {}
        self.written_ns: dict[int, int] = {}
        self.contiguous = 0
        self.contiguous_ns = 0
        self.searches = 0

    def poll(self) -> None:
        sent_ns = time.time_ns()
        query: dict[str, Any] = {"bool": {"filter": [{"match": {self.field: "probe"}}]}}
        if self.contiguous_ns:
            query["bool"]["filter"].append(
                {"range": {"@timestamp": {"gte": cri_time(self.contiguous_ns - 2_000_000)}}}
            )
        try:
            response = es(
                self.url,
                "POST",
                f"/{self.target}/_search?filter_path=hits.hits._source",
                {"query": query, "size": 10_000, "sort": [{"@timestamp": "asc"}]},
                timeout=10,
            )
        except urllib.error.HTTPError as error:
            if error.code in (400, 404):  # no index yet, or no mapping of the field yet
                return
            raise
        self.searches += 1
        for hit in response.get("hits", {}).get("hits", []):
            match = re.search(r"probe (\d+) (\d+)", json.dumps(hit["_source"]))
            if match:
                seq, written = int(match[1]), int(match[2])
                if seq not in self.latencies_s:
                    self.latencies_s[seq] = (sent_ns - written) / 1e9
                    self.written_ns[seq] = written
        while self.contiguous + 1 in self.latencies_s:
            self.contiguous += 1
        if self.contiguous:
            self.contiguous_ns = self.written_ns[self.contiguous]


def latency_run(
    tool: str,
    work: Path,
    url: str,
    rate: int,
    seconds: float,
    bodies_from: Path,
    source: Path,
    binary: Path | None,
) -> dict[str, object]:
    root = work / "pods"
    probe_dir = root / "bench_probe_99999999-0000-0000-0000-000000000000" / "probe"
    probe_dir.mkdir(parents=True)
    probe_log = probe_dir / "0.log"
    probe_log.write_bytes(cri_time(time.time_ns()).encode() + b" stdout F warm-up\n")
    port = free_port()
    if tool == "observer":
        config = observer_config(root, work, url)
        argv = [*observer_command(), "agent", "--config", str(config)]
        env = observer_env(source)
        target = OBSERVER_TARGET
    else:
        assert binary is not None
        otelcol_template(url)
        config = otelcol_config(f"{root}/*/*/*.log", work, url, port)
        argv = [str(binary), "--config", str(config)]
        env = dict(os.environ)
        target = OTELCOL_TARGET
    poller = Poller(url, target, PROBE_FIELD[tool])
    state: dict[str, Any] = {"writer": None, "deadline": None, "warm": False}

    def done() -> bool:
        if not state["warm"]:
            if count(url, target) >= 1:  # the warm-up line is searchable: the tool is set up
                state["warm"] = True
                state["writer"] = subprocess.Popen(
                    [
                        sys.executable,
                        __file__,
                        "--write-paced",
                        str(root),
                        "--rate",
                        str(rate),
                        "--seconds",
                        str(seconds),
                        "--bodies-from",
                        str(bodies_from),
                    ],
                    stdout=subprocess.PIPE,
                )
            return False
        poller.poll()
        writer = state["writer"]
        if writer.poll() is None:
            return False
        if state["deadline"] is None:
            state["writer_out"] = json.loads(writer.stdout.read() or b"{}")
            state["deadline"] = time.monotonic() + 20
        expected = state["writer_out"].get("probes", 0)
        return len(poller.latencies_s) >= expected or time.monotonic() > state["deadline"]

    measured = run_until(
        argv, work / f"{tool}.log", done, poll_s=0.1, timeout_s=seconds + 180, env=env
    )
    latencies = sorted(poller.latencies_s.values())
    written = state.get("writer_out", {})
    by_second: dict[int, float] = {}
    if poller.written_ns:
        first_ns = min(poller.written_ns.values())
        for seq, latency in poller.latencies_s.items():
            second = (poller.written_ns[seq] - first_ns) // 1_000_000_000
            by_second[second] = max(by_second.get(second, 0.0), latency)
    return {
        "tool": tool,
        "lines_written": written.get("lines"),
        "writer_s": round(written.get("seconds", 0), 1),
        "probes_written": written.get("probes"),
        "probes_seen": len(latencies),
        "searches": poller.searches,
        "p50_s": round(percentile(latencies, 50), 3) if latencies else None,
        "p99_s": round(percentile(latencies, 99), 3) if latencies else None,
        "max_s": round(latencies[-1], 3) if latencies else None,
        "max_s_by_second_written": [round(by_second[s], 2) for s in sorted(by_second)],
        "cpu_s": round(measured.cpu_s, 2),
        "max_rss_mb": round(measured.max_rss_mb, 1),
        "documents": count(url, target),
        "log": log_summary(work / f"{tool}.log"),
        "load_before": None,
    }


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile of sorted values."""
    rank = max(1, -(-len(values) * p // 100))
    return values[int(rank) - 1]


# --- report ------------------------------------------------------------------------------


def row(tool: str, run: int, m: Measured, lines: int, load: str) -> dict[str, object]:
    return {
        "tool": tool,
        "run": run,
        "records": m.extra.get("records"),
        "wall_s": round(m.wall_s, 2),
        "docs_per_s": round(lines / m.wall_s),
        "user_s": round(m.user_s, 2),
        "sys_s": round(m.sys_s, 2),
        "cpu_s": round(m.cpu_s, 2),
        "cpu_s_per_million": round(m.cpu_s / (lines / 1e6), 2),
        "max_rss_mb": round(m.max_rss_mb, 1),
        "idle_s": round(m.idle_s, 2),
        "load_before": load,
        "log_levels": m.extra.get("log"),
    }


def median(rows: list[dict[str, Any]], tool: str, key: str) -> float | None:
    values = [float(r[key]) for r in rows if r["tool"] == tool and r.get(key) is not None]
    return statistics.median(values) if values else None


def report(
    rows: list[dict[str, Any]],
    latency: list[dict[str, Any]],
    corpus: corpus_module.Corpus,
    facts: dict[str, str],
    command: str,
    date: str,
    rate: int,
    seconds: float,
) -> str:
    out = [
        f"# Elasticsearch benchmark, {date}",
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
        "- Elasticsearch: one node from tests/services/elasticsearch.py (heap 1 GiB, serial GC), "
        "on the same machine; one shard, no replicas, default refresh_interval (1 s)",
        "",
        "## Throughput",
        "",
        f"Corpus: {corpus.lines:,} records ({corpus.long_lines} of 40,000 bytes split P/P/F), "
        f"{corpus.bytes / 1e6:.1f} MB in {corpus.files} files, seed {corpus.seed}, page cache warm.",
        "",
        "| # | tool | docs | wall s | docs/s | user s | sys s | CPU s | CPU s / M docs | peak RSS MB | idle s | load before | log lines by level |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        levels = ", ".join(f"{k} {v}" for k, v in sorted((r.get("log_levels") or {}).items()))
        out.append(
            f"| {r['run']} | {r['tool']} | {r['records']:,} | {r['wall_s']} | {r['docs_per_s']:,} | "
            f"{r['user_s']} | {r['sys_s']} | {r['cpu_s']} | {r['cpu_s_per_million']} | "
            f"{r['max_rss_mb']} | {r['idle_s']} | {r['load_before']} | {levels} |"
        )
    out += [
        "",
        "| tool (median) | docs/s | CPU s / M docs | peak RSS MB (worst) |",
        "|---|---|---|---|",
    ]
    for tool in ("observer", "otelcol"):
        if median(rows, tool, "docs_per_s") is not None:
            worst = max(float(r["max_rss_mb"]) for r in rows if r["tool"] == tool)
            out.append(
                f"| {tool} | {median(rows, tool, 'docs_per_s'):,.0f} | "
                f"{median(rows, tool, 'cpu_s_per_million'):.2f} | "
                f"{median(rows, tool, 'max_rss_mb'):.1f} ({worst:.1f}) |"
            )
    out += [
        "",
        f"observer's CPU per document into the file sink (collection-2026-11-21.md, median): "
        f"{COLLECTION_CPU_PER_MILLION} CPU s / M lines.",
        "",
        "## Write-to-searchable latency",
        "",
        f"{rate:,} lines/s for {seconds:.0f} s, one in ten a probe; searchable − written per probe.",
        "",
        "| tool | lines written | probes written / seen | searches | p50 s | p99 s | max s | CPU s | peak RSS MB | load before | log lines by level |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in latency:
        levels = ", ".join(f"{k} {v}" for k, v in sorted((r.get("log") or {}).items()))
        out.append(
            f"| {r['tool']} | {r['lines_written']} | {r['probes_written']} / {r['probes_seen']} | "
            f"{r['searches']} | {r['p50_s']} | {r['p99_s']} | {r['max_s']} | {r['cpu_s']} | "
            f"{r['max_rss_mb']} | {r['load_before']} | {levels} |"
        )
    ob_rate, ot_rate = median(rows, "observer", "docs_per_s"), median(rows, "otelcol", "docs_per_s")
    ob_lat = next((r for r in latency if r["tool"] == "observer"), None)
    ob_rss = max(
        [float(r["max_rss_mb"]) for r in rows if r["tool"] == "observer"]
        + ([float(ob_lat["max_rss_mb"])] if ob_lat else []),
        default=None,
    )
    out += ["", "## Targets", "", "| target | observer | met |", "|---|---|---|"]
    if ob_rate and ot_rate:
        out.append(
            f"| docs/s ≥ otelcol's ({ot_rate:,.0f}) | {ob_rate:,.0f} | {_yes(ob_rate >= ot_rate)} |"
        )
    if ob_lat and ob_lat["p99_s"] is not None:
        out.append(
            f"| p99 write-to-searchable < {TARGET_P99_S} s at {rate:,} lines/s | "
            f"{ob_lat['p99_s']} s | {_yes(ob_lat['p99_s'] < TARGET_P99_S)} |"
        )
    if ob_rss is not None:
        out.append(
            f"| peak RSS < {TARGET_RSS_MB:.0f} MB (all runs) | {ob_rss:.1f} | {_yes(ob_rss < TARGET_RSS_MB)} |"
        )
    ob_cpu = median(rows, "observer", "cpu_s_per_million")
    if ob_cpu is not None:
        out.append(
            f"| CPU per document reported (gzip included) | {ob_cpu:.2f} CPU s / M docs "
            f"(file sink: {COLLECTION_CPU_PER_MILLION}) | reported |"
        )
    return "\n".join(out) + "\n"


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def warm_page_cache(corpus: corpus_module.Corpus) -> None:
    for path in sorted(corpus.root.glob("*/*/*.log")):
        with path.open("rb") as f:
            while f.read(1 << 20):
                pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=500_000)
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", type=int, default=2, help="throughput runs of each tool")
    parser.add_argument("--rate", type=int, default=5000, help="latency: lines/s written")
    parser.add_argument("--seconds", type=float, default=30.0, help="latency: seconds written")
    parser.add_argument("--skip", choices=("throughput", "latency"), action="append", default=[])
    parser.add_argument("--tools", default="observer,otelcol", help="comma-separated")
    parser.add_argument("--es-url", help="use this node (it is cleaned) instead of starting one")
    parser.add_argument("--results", type=Path, default=BENCH / "results")
    parser.add_argument("--date", default=datetime.date.today().isoformat())
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--write-paced", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--bodies-from", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.write_paced:
        paced_writer(args.write_paced, args.rate, args.seconds, args.bodies_from)
        return 0

    corpus = corpus_module.ensure(args.lines, args.files, args.seed)
    binary = otelcol_binary()
    snapshot = tempfile.TemporaryDirectory(prefix="bench-observer-src-")
    source = snapshot_observer(Path(snapshot.name))
    facts = machine_facts(binary, source)
    warm_page_cache(corpus)

    node = None
    es_home = tempfile.TemporaryDirectory(prefix="bench-es-")
    if args.es_url:
        url = args.es_url
    else:
        sys.path.insert(0, str(REPO))
        from tests.services import elasticsearch as es_service

        node = es_service.start(Path(es_home.name), heap="1g")
        url = node.url
    rows: list[dict[str, Any]] = []
    latency: list[dict[str, Any]] = []
    try:
        if "throughput" not in args.skip:
            for run in range(1, args.runs + 1):
                for tool in args.tools.split(","):
                    clean(url)
                    load = load_average()
                    with tempfile.TemporaryDirectory(prefix=f"bench-es-{tool}-") as tmp:
                        if tool == "observer":
                            measured = throughput_observer(corpus, Path(tmp), url, source)
                        else:
                            measured = throughput_otelcol(corpus, Path(tmp), url, binary)
                    rows.append(row(tool, run, measured, corpus.lines, load))
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        if "latency" not in args.skip:
            for tool in args.tools.split(","):
                clean(url)
                load = load_average()
                with tempfile.TemporaryDirectory(prefix=f"bench-es-lat-{tool}-") as tmp:
                    result = latency_run(
                        tool, Path(tmp), url, args.rate, args.seconds, corpus.root, source, binary
                    )
                result["load_before"] = load
                latency.append(result)
                print(json.dumps(result), file=sys.stderr, flush=True)
        clean(url)
    finally:
        if node is not None:
            node.stop()
        es_home.cleanup()
        snapshot.cleanup()

    facts["load (1, 5, 15 min) at the end"] = " ".join(
        Path("/proc/loadavg").read_text().split()[:3]
    )
    command = "~/.cache/observer/venv/bin/python bench/elasticsearch.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    text = report(rows, latency, corpus, facts, command.strip(), args.date, args.rate, args.seconds)
    print(text)
    if not args.no_write:
        args.results.mkdir(parents=True, exist_ok=True)
        stem = args.results / f"elasticsearch-{args.date}"
        stem.with_suffix(".md").write_text(text)
        stem.with_suffix(".json").write_text(
            json.dumps(
                {
                    "command": command,
                    "machine": facts,
                    "otelcol_version": OTELCOL_VERSION,
                    "corpus": {**asdict(corpus), "root": str(corpus.root)},
                    "throughput": rows,
                    "latency": latency,
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
