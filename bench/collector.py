"""Spans through the collector's trace path, intake to stored, against the OpenTelemetry Collector.

    ~/.cache/observer/venv/bin/python bench/collector.py                   # 10,000 traces of 20 spans, 2 runs each
    ~/.cache/observer/venv/bin/python bench/collector.py --traces 2000 --runs 1 --no-write   # a smoke run

Measured, side by side and interleaved (observer, otelcol, observer, otelcol…), on the
same load:

- observer: the collector's trace path, stood up by this script's `serve` command as
  `observer/collector/app.py` wires it, without the query API: the native OTLP/gRPC receiver →
  `TracePipeline` (intake, assembly, reconstruction, service graph and RED, sampling) →
  the embedded SQLite store, /metrics served, the garbage collector tuned as `observer`
  tunes it. Sampling keeps every trace, so every span is stored.
- otelcol: otlp receiver → batch → servicegraph connector (graph metrics written by a
  file exporter) and a file exporter for the spans (OTLP JSON).

The load (this script's `load` command, not measured): `--traces` traces of 20 spans
each across five services (server → client → server hops, internal spans, three database
calls), sent as one ExportTraceServiceRequest per service per 50 traces (about 200 spans),
so the spans of a trace arrive in five requests as they would from five processes; four
requests in flight; a refused request (retryable code) is sent again after 50 ms.

Throughput: spans per CPU-second of the measured process from the first request to the
last span stored (observer: every trace in the store; otelcol: every span written by its
file exporter, `otelcol_exporter_sent_spans`), two ways: the path's CPU (read from /proc
when the load starts and when the last span is stored: what intake to stored costs, the
issue's measure) and the process's whole life (rusage user+system, start-up and shutdown
included: Python's imports cost about half a CPU-second, Go's start-up a few hundredths). Memory: peak RSS of the same run. observer's assembly
`idle_timeout` (`--idle-timeout`, default 20 s) is longer than the load takes to send,
so every trace is live at once: the peak is the peak at `--traces` live traces (the
highest `observer_traces_live` seen is reported beside it). The time observer then
waits for traces to go quiet is idle and costs no CPU worth counting; it is in the total.
Each tool's /metrics is read once a second while the load runs (otelcol's until it is
done, which is soon after), observer's once more when the load has ended, not through
its idle wait: both are scraped about as often.

Correctness before speed: after each observer run the store must hold every trace,
complete, and its dependencies must count every call on every edge; otelcol's graph
metrics must count every call on every edge too.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (
    BENCH,
    free_port,
    load_average,
    machine_facts,
    observer_env,
    process_cpu_s,
    prometheus_value,
    run_until,
    snapshot_observer,
)

OTELCOL_VERSION = "0.157.0"
METRICS_POLL_S = 1.0
SPANS_PER_TRACE = 20
TRACES_PER_WINDOW = 50
SERVICES = ("frontend", "checkout", "payments", "catalog", "shipping")
# Calls per trace on each edge of the load: one per hop, three to the database.
EDGES = {
    ("frontend", "checkout"): 1,
    ("checkout", "payments"): 1,
    ("payments", "catalog"): 1,
    ("catalog", "shipping"): 1,
}
DATABASE_CALLS = 3
RSS_TARGET_MB = 500.0
EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


# --- the load ----------------------------------------------------------------------------


class _TraceWriter:
    """Appends the spans of one trace to the per-service requests of its window."""

    def __init__(self, scopes: dict[str, Any], generator: random.Random, t0: int) -> None:
        self.scopes = scopes
        self.generator = generator
        self.trace_id = generator.randbytes(16)
        self.t0 = t0
        self.made = 0

    def span(
        self,
        service: str,
        parent: bytes,
        name: str,
        kind: int,
        duration_ms: float,
        attributes: tuple[tuple[str, str | int], ...],
        error: bool = False,
    ) -> bytes:
        from opentelemetry.proto.trace.v1.trace_pb2 import Status

        self.made += 1
        span_id = self.generator.randbytes(8)
        item = self.scopes[service].spans.add(
            trace_id=self.trace_id, span_id=span_id, parent_span_id=parent, name=name
        )
        item.kind = kind
        item.start_time_unix_nano = self.t0 + self.made * 10_000
        item.end_time_unix_nano = item.start_time_unix_nano + int(duration_ms * 1e6)
        item.attributes.extend(_attribute(key, value) for key, value in attributes)
        if error:
            item.status.code = Status.STATUS_CODE_ERROR
        return span_id


def _attribute(key: str, value: str | int) -> Any:
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def _one_trace(writer: _TraceWriter) -> None:
    """20 spans: a server span per service, chained by client spans, two internal spans per
    hop, three database calls at the end; one server span in fifty fails."""
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    current = writer.span(
        SERVICES[0],
        b"",
        "GET /",
        Span.SPAN_KIND_SERVER,
        40,
        (("http.request.method", "GET"), ("http.route", "/"), ("http.response.status_code", 200)),
    )
    for hop in range(len(SERVICES) - 1):
        here, there = SERVICES[hop], SERVICES[hop + 1]
        for name in ("authorize", "render"):
            writer.span(here, current, name, Span.SPAN_KIND_INTERNAL, 1, (("code.function", name),))
        client = writer.span(
            here,
            current,
            "GET",
            Span.SPAN_KIND_CLIENT,
            30 - hop * 5,
            (
                ("http.request.method", "GET"),
                ("server.address", there),
                ("server.port", 8080),
                ("url.full", f"http://{there}:8080/api"),
                ("http.response.status_code", 200),
            ),
        )
        current = writer.span(
            there,
            client,
            "GET /api",
            Span.SPAN_KIND_SERVER,
            28 - hop * 5,
            (
                ("http.request.method", "GET"),
                ("http.route", "/api"),
                ("http.response.status_code", 200),
            ),
            error=writer.generator.random() < 0.02,
        )
    for _ in range(DATABASE_CALLS):
        writer.span(
            SERVICES[-1],
            current,
            "SELECT orders",
            Span.SPAN_KIND_CLIENT,
            0.5,
            (
                ("db.system", "postgresql"),
                ("db.statement", "SELECT * FROM orders WHERE id = $1"),
                ("server.address", "pg"),
            ),
        )
    assert writer.made == SPANS_PER_TRACE


def build_requests(traces: int, seed: int) -> list[bytes]:
    """Serialized ExportTraceServiceRequests: per window of traces, one per service."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    generator = random.Random(seed)
    start = 1_763_700_000_000_000_000
    bodies: list[bytes] = []
    for window in range(0, traces, TRACES_PER_WINDOW):
        requests = {service: ExportTraceServiceRequest() for service in SERVICES}
        scopes = {}
        for service, request in requests.items():
            resource = request.resource_spans.add()
            for key, value in (
                ("service.name", service),
                ("k8s.namespace.name", "shop"),
                ("k8s.pod.name", f"{service}-7d9-abcde"),
                ("telemetry.sdk.language", "python"),
            ):
                resource.resource.attributes.append(_attribute(key, value))
            scope = resource.scope_spans.add()
            scope.scope.name = "opentelemetry.instrumentation.aiohttp_server"
            scopes[service] = scope
        for number in range(window, min(window + TRACES_PER_WINDOW, traces)):
            _one_trace(_TraceWriter(scopes, generator, start + number * 1_000_000))
        bodies.extend(request.SerializeToString() for request in requests.values())
    return bodies


async def send_load(target: str, traces: int, seed: int) -> dict[str, float]:
    import grpc

    bodies = build_requests(traces, seed)
    retryable = {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE}
    refused = 0
    started = time.monotonic()
    pending = iter(bodies)
    async with grpc.aio.insecure_channel(
        target, options=[("grpc.max_send_message_length", 64 << 20)]
    ) as channel:
        export = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)

        async def worker() -> None:
            nonlocal refused
            for body in pending:
                while True:
                    try:
                        await export(body, timeout=60)
                        break
                    except grpc.aio.AioRpcError as error:
                        if error.code() not in retryable:
                            raise
                        refused += 1
                        await asyncio.sleep(0.05)

        await asyncio.gather(*(worker() for _ in range(4)))
    return {"requests": len(bodies), "refused": refused, "seconds": time.monotonic() - started}


# --- observer's side: the trace path, wired as the collector will wire it ------------------


async def serve_observer(config_path: Path, otlp_listen: str) -> None:
    import gc

    from prometheus_client import CollectorRegistry

    from observer.collector.otlp_grpc import NativeOtlpGrpcReceiver
    from observer.collector.pipeline import TracePipeline
    from observer.collector.store import open_store
    from observer.config import load_collector
    from observer.receivers import IntakeCounts
    from observer.telemetry import TelemetryServer, configure_logging

    config = load_collector(config_path)
    configure_logging(config.telemetry.log_level)
    # As `observer` tunes its deployables (cli._tune_garbage_collection): spans are
    # acyclic objects freed by reference counting.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    registry = CollectorRegistry()
    store = await open_store(config.storage, registry)
    pipeline = TracePipeline(config, store.write, registry=registry)

    receiver = NativeOtlpGrpcReceiver(otlp_listen, pipeline, IntakeCounts())
    telemetry = TelemetryServer(registry, config.telemetry.listen)
    await telemetry.start()
    await pipeline.start()
    await receiver.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await receiver.stop()
    await pipeline.stop()
    await store.close()
    await telemetry.stop()


def observer_config(work: Path, metrics_port: int, idle_timeout: float, traces: int) -> Path:
    config = work / "collector.yaml"
    config.write_text(
        f"""\
telemetry:
  listen: 127.0.0.1:{metrics_port}
  log_level: warning
storage:
  embedded:
    path: {work / "traces.sqlite"}
assembly:
  idle_timeout: {idle_timeout}s
  max_age: {idle_timeout * 4}s
  max_live_traces: {max(traces * 2, 20_000)}
  max_live_spans: {max(traces * SPANS_PER_TRACE * 2, 300_000)}
sampling:
  probabilistic_share: 1.0
"""
    )
    return config


def otelcol_config(work: Path, port: int, metrics_port: int, idle_timeout: float) -> Path:
    config = work / "otelcol.yaml"
    config.write_text(
        f"""\
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{port}
        max_recv_msg_size_mib: 64
processors:
  batch: {{}}
connectors:
  servicegraph:
    # Tempo's service-graph buckets, as observer's graph.request_buckets.
    latency_histogram_buckets: [100ms, 200ms, 400ms, 800ms, 1600ms, 3200ms, 6400ms, 12800ms]
    store:
      # Unpaired halves wait as long as observer's assembly waits for a trace to go quiet.
      ttl: {idle_timeout}s
      max_items: 1000000
    metrics_flush_interval: 1s
exporters:
  file/spans:
    path: {work / "spans.jsonl"}
  file/graph:
    path: {work / "graph.jsonl"}
service:
  telemetry:
    logs: {{level: warn}}
    metrics:
      level: basic
      readers:
        - pull:
            exporter:
              prometheus: {{host: 127.0.0.1, port: {metrics_port}}}
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [servicegraph, file/spans]
    metrics:
      receivers: [servicegraph]
      exporters: [file/graph]
"""
    )
    return config


def otelcol_binary() -> Path:
    env = {
        **os.environ,
        "OTELCOL_VERSION": OTELCOL_VERSION,
        "OTELCOL_MANIFEST": str(BENCH / "otelcol" / "servicegraph.yaml"),
    }
    out = subprocess.run(
        [str(BENCH / "otelcol" / "build.sh")], env=env, check=True, capture_output=True, text=True
    )
    return Path(out.stdout.strip().splitlines()[-1])


# --- checks ------------------------------------------------------------------------------


def observer_stored(work: Path) -> int:
    """Traces in observer's embedded store so far (0 before it is created)."""
    try:
        with sqlite3.connect(f"file:{work / 'traces.sqlite'}?mode=ro", uri=True) as connection:
            return int(connection.execute("SELECT count(*) FROM traces").fetchone()[0])
    except sqlite3.Error:
        return 0


def expected_calls(traces: int) -> dict[tuple[str, str], int]:
    return {edge: calls * traces for edge, calls in EDGES.items()}


async def observer_check(work: Path, traces: int) -> dict[str, Any]:
    from observer.collector.model import Completeness
    from observer.collector.store import TraceQuery
    from observer.collector.store.sqlite import SqliteTraceStore

    store = await SqliteTraceStore.open(work / "traces.sqlite")
    try:
        dependencies = await store.dependencies(time.time_ns() + 10**18, 2 * 10**18)
        sample = await store.find_traces(TraceQuery(service=SERVICES[0], limit=traces + 1))
    finally:
        await store.close()
    calls = {(d.parent, d.child): d.calls for d in dependencies}
    complete = sum(
        1
        for trace in sample
        if trace.verdict.completeness is Completeness.COMPLETE
        and len(trace.spans) == SPANS_PER_TRACE
    )
    problems = []
    if len(sample) != traces:
        problems.append(f"{len(sample)} traces stored, {traces} sent")
    if complete != traces:
        problems.append(f"{complete} whole and complete traces of {traces}")
    for edge, count in expected_calls(traces).items():
        if calls.get(edge) != count:
            problems.append(f"{edge[0]}→{edge[1]}: {calls.get(edge)} calls, {count} made")
    database = calls.get((SERVICES[-1], "pg"))
    if database != DATABASE_CALLS * traces:
        problems.append(f"{SERVICES[-1]}→pg: {database} calls, {DATABASE_CALLS * traces} made")
    return {
        "traces": len(sample),
        "edges": {f"{a}→{b}": n for (a, b), n in calls.items()},
        "problems": problems,
    }


def otelcol_check(work: Path, traces: int) -> dict[str, Any]:
    """Request counts per edge in the servicegraph connector's output: each flush holds
    cumulative sums, one series per edge and `failed` value; the latest flush counts."""
    calls: dict[tuple[str, str], float] = {}
    try:
        lines = (work / "graph.jsonl").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        flushed: dict[tuple[str, str], float] = {}
        for resource in json.loads(line).get("resourceMetrics", []):
            for scope in resource.get("scopeMetrics", []):
                for metric in scope.get("metrics", []):
                    if metric.get("name") != "traces_service_graph_request_total":
                        continue
                    for point in metric.get("sum", {}).get("dataPoints", []):
                        labels = {
                            a["key"]: a["value"].get("stringValue", "")
                            for a in point.get("attributes", [])
                        }
                        value = float(point.get("asInt", point.get("asDouble", 0)))
                        edge = (labels.get("client", ""), labels.get("server", ""))
                        flushed[edge] = flushed.get(edge, 0.0) + value
        for edge, value in flushed.items():
            calls[edge] = max(calls.get(edge, 0.0), value)
    problems = [
        f"{a}→{b}: {calls.get((a, b))} calls, {count} made"
        for (a, b), count in expected_calls(traces).items()
        if calls.get((a, b)) != count
    ]
    return {"edges": {f"{a}→{b}": n for (a, b), n in calls.items()}, "problems": problems}


# --- runs --------------------------------------------------------------------------------


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def read_json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def run_one(tool: str, args: argparse.Namespace, source: Path, otelcol: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"collector-{tool}-") as tmp:
        work = Path(tmp)
        port = free_port()
        metrics_port = free_port()
        me = [sys.executable, str(Path(__file__).resolve())]
        spans = args.traces * SPANS_PER_TRACE
        metrics = f"http://127.0.0.1:{metrics_port}/metrics"
        if tool == "observer":
            config = observer_config(work, metrics_port, args.idle_timeout, args.traces)
            argv = [*me, "serve", "--config", str(config), "--otlp", f"127.0.0.1:{port}"]
            env = observer_env(source)
        else:
            argv = [
                str(otelcol),
                "--config",
                str(otelcol_config(work, port, metrics_port, args.idle_timeout)),
            ]
            env = dict(os.environ)
        load_result = work / "load.json"
        load: list[subprocess.Popen[bytes]] = []
        server_pid = 0
        cpu_at_load = 0.0
        live_peak = 0.0
        last_scrape = 0.0
        load_ended = False

        def scrape_due() -> bool:
            # A tool's /metrics is read at most once a second, as a scraper would: at ten
            # a second, rendering the exposition was most of what observer did while idle.
            nonlocal last_scrape
            if time.monotonic() - last_scrape < METRICS_POLL_S:
                return False
            last_scrape = time.monotonic()
            return True

        def started(pid: int) -> None:
            nonlocal server_pid
            server_pid = pid

        def done() -> bool:
            nonlocal live_peak, cpu_at_load, load_ended
            if not load:
                if not (port_open(port) and port_open(metrics_port)):
                    return False
                cpu_at_load = process_cpu_s(server_pid)
                command = [
                    *me,
                    "load",
                    "--target",
                    f"127.0.0.1:{port}",
                    "--traces",
                    str(args.traces),
                    "--result",
                    str(load_result),
                ]
                load.append(subprocess.Popen(command, env=observer_env(source)))
                return False
            if tool == "observer":
                # The live traces are read while the load runs and once after it: then every
                # trace is live. Scraping on through the idle wait would bill observer for
                # four times as many scrapes as otelcol, which is done when the load is.
                if not load_ended and (load[0].poll() is not None or scrape_due()):
                    load_ended = load[0].poll() is not None
                    live = prometheus_value(metrics, "observer_traces_live")
                    live_peak = max(live_peak, live or 0.0)
                # Stored traces are counted in the store's file, by this process.
                return observer_stored(work) >= args.traces
            if not scrape_due():
                return False
            sent = prometheus_value(
                metrics, "otelcol_exporter_sent_spans", {"exporter": "file/spans"}
            )
            # Done when every span is written and the graph has counted every call (the
            # connector flushes its metrics every second).
            return (
                (sent or 0) >= spans
                and load[0].poll() is not None
                and not otelcol_check(work, args.traces)["problems"]
            )

        try:
            measured = run_until(
                argv,
                work / f"{tool}.log",
                done,
                timeout_s=args.timeout,
                poll_s=0.1,
                started=started,
                env=env,
            )
        finally:
            for process in load:
                if process.poll() is None:
                    process.kill()
                process.wait()
        if tool == "otelcol":
            time.sleep(0.1)
        check = (
            asyncio.run(observer_check(work, args.traces))
            if tool == "observer"
            else otelcol_check(work, args.traces)
        )
        row: dict[str, Any] = {"tool": tool, **asdict(measured), "check": check}
        row["load"] = read_json(load_result)
        row["spans"] = spans
        row["spans_per_cpu_s"] = spans / measured.cpu_s if measured.cpu_s else 0.0
        row["path_cpu_s"] = (measured.cpu_at_done_s or 0.0) - cpu_at_load
        row["spans_per_path_cpu_s"] = spans / row["path_cpu_s"] if row["path_cpu_s"] else 0.0
        row["live_traces_peak"] = live_peak if tool == "observer" else None
        if check["problems"]:
            row["invalid"] = "; ".join(check["problems"])
        return row


def write_report(
    rows: list[dict[str, Any]], facts: dict[str, str], args: argparse.Namespace
) -> str:
    lines = [
        f"# Collector trace path benchmark, {datetime.date.today().isoformat()}",
        "",
        "Produced by (from the repository root):",
        "",
        "```",
        f"~/.cache/observer/venv/bin/python bench/collector.py --traces {args.traces} --runs {args.runs} --idle-timeout {args.idle_timeout}",
        "```",
        "",
        "## Machine",
        "",
        *[f"- {key}: {value}" for key, value in facts.items()],
        "",
        "## Runs (in the order they ran)",
        "",
        "| # | tool | spans | wall s (to stored) | idle s | path CPU s | spans / path CPU s | CPU s (whole life) | spans / CPU s (whole life) | peak RSS MB | live traces (peak) | retried requests | load before | check |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['run']} | {row['tool']} | {row['spans']:,} | {row['wall_s']:.2f} | {row['idle_s']:.2f} "
            f"| {row['path_cpu_s']:.2f} | {row['spans_per_path_cpu_s']:,.0f} "
            f"| {row['user_s'] + row['sys_s']:.2f} | {row['spans_per_cpu_s']:,.0f} | {row['max_rss_mb']:.1f} "
            f"| {row['live_traces_peak'] if row['live_traces_peak'] is not None else '—'} "
            f"| {row['load'].get('refused', '?')} | {row['load_before']} "
            f"| {'invalid: ' + row['invalid'] if row.get('invalid') else 'ok'} |"
        )
    lines += [
        "",
        "## Summary (medians of valid runs)",
        "",
        "| tool | spans / path CPU s | spans / CPU s (whole life) | peak RSS MB (worst) |",
        "|---|---|---|---|",
    ]
    summary: dict[str, float] = {}
    path: dict[str, float] = {}
    rss: dict[str, float] = {}
    for tool in ("observer", "otelcol"):
        valid = [r for r in rows if r["tool"] == tool and not r.get("invalid")]
        if not valid:
            continue
        summary[tool] = statistics.median(r["spans_per_cpu_s"] for r in valid)
        path[tool] = statistics.median(r["spans_per_path_cpu_s"] for r in valid)
        rss[tool] = max(r["max_rss_mb"] for r in valid)
        lines.append(f"| {tool} | {path[tool]:,.0f} | {summary[tool]:,.0f} | {rss[tool]:.1f} |")
    lines += ["", "## Targets", "", "| target | observer | met |", "|---|---|---|"]
    if "observer" in summary:
        if "otelcol" in summary:
            for name, figures in (("intake to stored", path), ("whole life", summary)):
                ratio = figures["observer"] / figures["otelcol"]
                lines.append(
                    f"| ≥ otelcol's spans per CPU-second, {name} ({figures['otelcol']:,.0f}) | {figures['observer']:,.0f} ({ratio:.2f} ×) | {'yes' if ratio >= 1 else 'no'} |"
                )
        lines.append(
            f"| peak RSS < {RSS_TARGET_MB:.0f} MB at {args.traces:,} live traces of {SPANS_PER_TRACE} spans | {rss['observer']:.1f} MB | {'yes' if rss['observer'] < RSS_TARGET_MB else 'no'} |"
        )
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve")
    serve.add_argument("--config", type=Path, required=True)
    serve.add_argument("--otlp", required=True)
    load = sub.add_parser("load")
    load.add_argument("--target", required=True)
    load.add_argument("--traces", type=int, required=True)
    load.add_argument("--result", type=Path, required=True)
    load.add_argument("--seed", type=int, default=1)
    parser.add_argument("--traces", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--tools", default="observer,otelcol")
    parser.add_argument("--idle-timeout", type=float, default=20.0)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "serve":
        asyncio.run(serve_observer(args.config, args.otlp))
        return 0
    if args.command == "load":
        outcome = asyncio.run(send_load(args.target, args.traces, args.seed))
        args.result.write_text(json.dumps(outcome))
        return 0

    tools = args.tools.split(",")
    otelcol = otelcol_binary() if "otelcol" in tools else Path("otelcol-not-used")
    snapshot = Path(tempfile.mkdtemp(prefix="collector-observer-src-"))
    source = snapshot_observer(snapshot)
    rows: list[dict[str, Any]] = []
    try:
        run_all(args, tools, source, otelcol, rows)
        facts = machine_facts(otelcol if "otelcol" in tools else None, source)
    finally:
        shutil.rmtree(snapshot, ignore_errors=True)
    report = write_report(rows, facts, args)
    print(report)
    if not args.no_write:
        stem = BENCH / "results" / f"collector-{datetime.date.today().isoformat()}"
        stem.with_suffix(".md").write_text(report)
        stem.with_suffix(".json").write_text(json.dumps(rows, indent=1, default=str))
    return 0


def run_all(
    args: argparse.Namespace,
    tools: list[str],
    source: Path,
    otelcol: Path,
    rows: list[dict[str, Any]],
) -> None:
    for run in range(1, args.runs + 1):
        for tool in tools:
            before = load_average()
            row = run_one(tool, args, source, otelcol)
            row.update(run=run, load_before=before)
            rows.append(row)
            print(
                json.dumps(
                    {
                        k: row.get(k)
                        for k in (
                            "tool",
                            "run",
                            "spans_per_path_cpu_s",
                            "spans_per_cpu_s",
                            "max_rss_mb",
                            "live_traces_peak",
                            "invalid",
                        )
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    raise SystemExit(main())
