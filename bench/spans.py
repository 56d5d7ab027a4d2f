"""Spans through the agent: receive (OTLP/gRPC) → enrich (pod by peer IP) → export by trace id.

    ~/.cache/observer/venv/bin/python bench/spans.py [--spans 1000000] [--runs 2]
    ~/.cache/observer/venv/bin/python bench/spans.py --spans 100000 --runs 1 --no-write   # smoke

Measured, side by side and interleaved (observer, otelcol, observer, otelcol…), on the
same load:

- observer: ``observer agent`` with ``sources.spans`` (OTLP/gRPC only) and
  ``sinks.collector`` listing three replicas statically; pod metadata from a real
  kube-apiserver (tests/services/kubernetes.py).
- otelcol: otlp receiver → k8sattributes (``pod_association: connection``, the same
  node filter and fields) → batch → loadbalancing exporter (``routing_key: traceID``,
  static resolver, the same three replicas). gzip on both exporters (both defaults).

The sender's pod is a Deployment's pod whose IP is 127.0.0.1, so both tools find it by
the connection's address and add namespace, pod name, uid, node and workload.

Around the measured process, two helper processes of this script (not measured):
- ``sink``: three OTLP/gRPC servers playing the collector replicas; they count spans and
  check that every trace id arrived at exactly one of them;
- ``load``: sends pre-encoded ExportTraceServiceRequests (512 SDK-shaped spans each:
  resource with service.name and telemetry.sdk.*, 8 attributes per span, 4 spans per
  trace), 4 requests at a time; a refused request (retryable code) is sent again after
  50 ms, as an SDK would.

Throughput: spans per CPU-second of the measured process (rusage user+system, start-up
included) to move `--spans` spans into the sinks. Overload: `--load-processes` load
processes, together paced at twice the intake rate the tool reached, for
`--overload-seconds`, without resending refusals, with the tool alone on CPU 0: peak RSS,
spans refused and spans delivered are reported. `--compression none` turns off both
tools' export compression.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import random
import socket
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
    REPO,
    free_port,
    load_average,
    machine_facts,
    observer_command,
    observer_env,
    prometheus_value,
    run_until,
    snapshot_observer,
)

TARGET_SPANS_PER_CPU_SECOND = 100_000
NODE = "bench-node"
SPANS_PER_REQUEST = 512
SPANS_PER_TRACE = 4
EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


# --- helper process: the three collector replicas --------------------------------------


async def serve_sinks(ports: list[int], status: Path) -> None:
    import grpc
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
    )

    counts = [0] * len(ports)
    owner: dict[bytes, int] = {}
    conflicts = 0
    enriched = 0
    resource_keys: set[str] = set()
    empty = ExportTraceServiceResponse().SerializeToString()

    def handler(index: int) -> Any:
        async def export(body: bytes, context: Any) -> bytes:
            nonlocal conflicts, enriched
            request = ExportTraceServiceRequest.FromString(body)
            for resource in request.resource_spans:
                keys = {a.key for a in resource.resource.attributes}
                spans = 0
                for scope in resource.scope_spans:
                    spans += len(scope.spans)
                    for span in scope.spans:
                        found = owner.setdefault(span.trace_id, index)
                        if found != index:
                            conflicts += 1
                counts[index] += spans
                if "k8s.namespace.name" in keys and "k8s.pod.uid" in keys:
                    enriched += spans
                resource_keys.update(keys)
            return empty

        return export

    servers = []
    for index, port in enumerate(ports):
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "opentelemetry.proto.collector.trace.v1.TraceService",
                    {"Export": grpc.unary_unary_rpc_method_handler(handler(index))},
                ),
            )
        )
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        servers.append(server)
    while True:
        report = {
            "spans": sum(counts),
            "per_sink": counts,
            "traces": len(owner),
            "traces_on_two_sinks": conflicts,
            "enriched": enriched,
            "resource_keys": sorted(resource_keys),
        }
        write_json(status, report)
        await asyncio.sleep(0.2)


# --- helper process: the load ------------------------------------------------------------


def build_requests(count: int, seed: int) -> list[bytes]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    generator = random.Random(seed)
    bodies = []
    for _ in range(count):
        request = ExportTraceServiceRequest()
        resource = request.resource_spans.add()
        for key, value in (
            ("service.name", "checkout"),
            ("telemetry.sdk.language", "python"),
            ("telemetry.sdk.name", "opentelemetry"),
            ("telemetry.sdk.version", "1.45.1"),
        ):
            resource.resource.attributes.add(key=key).value.string_value = value
        scope = resource.scope_spans.add()
        scope.scope.name = "opentelemetry.instrumentation.aiohttp_server"
        start = 1_763_700_000_000_000_000
        for number in range(SPANS_PER_REQUEST):
            if number % SPANS_PER_TRACE == 0:
                trace_id = generator.randbytes(16)
                parent = b""
            span = scope.spans.add(
                trace_id=trace_id, span_id=generator.randbytes(8), name="GET /api/cart/{id}"
            )
            span.parent_span_id = parent
            parent = span.span_id
            span.kind = 2
            span.start_time_unix_nano = start + number * 1000
            span.end_time_unix_nano = start + number * 1000 + 250_000
            for key, value in (
                ("http.request.method", "GET"),
                ("url.path", f"/api/cart/{number}"),
                ("url.scheme", "http"),
                ("server.address", "checkout.shop.svc.cluster.local"),
                ("network.peer.address", "10.244.1.17"),
                ("user_agent.original", "python-requests/2.32.3"),
            ):
                span.attributes.add(key=key).value.string_value = value
            span.attributes.add(key="http.response.status_code").value.int_value = 200
            span.attributes.add(key="server.port").value.int_value = 8080
            span.status.code = 0
        bodies.append(request.SerializeToString())
    return bodies


async def send_load(
    target: str, spans: int, rate: float | None, seconds: float | None, seed: int, workers: int
) -> dict[str, float]:
    import grpc

    bodies = build_requests(max(1, min(400, spans // SPANS_PER_REQUEST)), seed)
    retryable = {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE}
    sent = refused = accepted = 0
    started = time.monotonic()
    async with grpc.aio.insecure_channel(target) as channel:
        export = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
        next_index = 0

        async def worker() -> None:
            nonlocal next_index, sent, refused, accepted
            while True:
                if rate is None and sent >= spans:
                    return
                if seconds is not None and time.monotonic() - started >= seconds:
                    return
                if rate is not None:
                    due = started + sent / rate
                    delay = due - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                body = bodies[next_index % len(bodies)]
                next_index += 1
                sent += SPANS_PER_REQUEST
                while True:
                    try:
                        await export(body, timeout=30)
                        accepted += SPANS_PER_REQUEST
                        break
                    except grpc.aio.AioRpcError as error:
                        if error.code() not in retryable:
                            raise
                        refused += SPANS_PER_REQUEST
                        if rate is not None:
                            break  # overload: a refusal is the answer being measured
                        await asyncio.sleep(0.05)

        await asyncio.gather(*(worker() for _ in range(workers)))
    return {
        "sent": sent,
        "accepted": accepted,
        "refused": refused,
        "seconds": time.monotonic() - started,
    }


# --- the measured tools --------------------------------------------------------------------


def observer_config(
    work: Path, port: int, sinks: list[int], kubeconfig: Path, telemetry: int, compression: str
) -> Path:
    config = work / "agent.yaml"
    endpoints = "".join(f"\n      - 127.0.0.1:{sink}" for sink in sinks)
    config.write_text(
        f"""\
node_name: {NODE}
state_dir: {work / "state"}
telemetry:
  listen: 127.0.0.1:{telemetry}
kubernetes:
  kubeconfig: {kubeconfig}
sources:
  pod_logs:
    root: {work / "pods"}
  kube_events:
    enabled: false
  spans:
    enabled: true
    otlp_grpc:
      listen: 127.0.0.1:{port}
    otlp_http:
      enabled: false
    zipkin:
      enabled: false
sinks:
  elasticsearch: null
  file:
    path: {work / "out.jsonl"}
  collector:
    compression: {compression}
    endpoints:{endpoints}
"""
    )
    return config


def otelcol_config(work: Path, port: int, sinks: list[int], compression: str) -> Path:
    config = work / "otelcol.yaml"
    hostnames = ", ".join(f"127.0.0.1:{sink}" for sink in sinks)
    config.write_text(
        f"""\
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{port}
processors:
  k8sattributes:
    auth_type: kubeConfig
    filter:
      node: {NODE}
    pod_association:
      - sources:
          - from: connection
    extract:
      metadata: [k8s.namespace.name, k8s.pod.name, k8s.pod.uid, k8s.node.name, k8s.replicaset.name, k8s.deployment.name]
  batch: {{}}
exporters:
  loadbalancing:
    routing_key: traceID
    protocol:
      otlp:
        compression: {compression}
        tls:
          insecure: true
    resolver:
      static:
        hostnames: [{hostnames}]
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    traces:
      receivers: [otlp]
      processors: [k8sattributes, batch]
      exporters: [loadbalancing]
"""
    )
    return config


def sender_pod(kube: Any) -> None:
    """A Deployment → ReplicaSet → Pod on NODE whose IP is 127.0.0.1: the load's sender."""
    from tests.services.kubernetes import admin_request

    namespace = "bench-spans"
    admin_request(kube, "POST", "/api/v1/namespaces", {"metadata": {"name": namespace}})
    template = {
        "metadata": {"labels": {"app": "checkout"}},
        "spec": {"containers": [{"name": "app", "image": "checkout:1"}]},
    }
    selector = {"matchLabels": {"app": "checkout"}}
    deployment = admin_request(
        kube,
        "POST",
        f"/apis/apps/v1/namespaces/{namespace}/deployments",
        {"metadata": {"name": "checkout"}, "spec": {"selector": selector, "template": template}},
    )
    replica_set = admin_request(
        kube,
        "POST",
        f"/apis/apps/v1/namespaces/{namespace}/replicasets",
        {
            "metadata": {
                "name": "checkout-7d9",
                "ownerReferences": [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "name": "checkout",
                        "uid": deployment["metadata"]["uid"],
                        "controller": True,
                    }
                ],
            },
            "spec": {"selector": selector, "template": template},
        },
    )  # type: ignore[index]
    pod = {
        "metadata": {
            "name": "checkout-7d9-abcde",
            "labels": {"app": "checkout"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": "checkout-7d9",
                    "uid": replica_set["metadata"]["uid"],
                    "controller": True,
                }
            ],
        },  # type: ignore[index]
        "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": "checkout:1"}]},
    }
    created = admin_request(kube, "POST", f"/api/v1/namespaces/{namespace}/pods", pod)
    # The kubelet's part: the pod runs, at the address the load is sent from.
    created["status"] = {"phase": "Running", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}]}
    admin_request(
        kube, "PUT", f"/api/v1/namespaces/{namespace}/pods/checkout-7d9-abcde/status", created
    )


def spans_otelcol_binary() -> Path:
    """The peer distribution with the loadbalancing exporter (bench/otelcol/spans.yaml),
    built once by bench/otelcol/build.sh."""
    env = {**os.environ, "OTELCOL_MANIFEST": str(BENCH / "otelcol" / "spans.yaml")}
    out = subprocess.run(
        [str(BENCH / "otelcol" / "build.sh")], env=env, check=True, capture_output=True, text=True
    )
    return Path(out.stdout.strip().splitlines()[-1])


def write_json(path: Path, value: dict[str, Any]) -> None:
    path.with_suffix(".tmp").write_text(json.dumps(value))
    path.with_suffix(".tmp").replace(path)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def read_json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def pinned(cpus: set[int] | None) -> Any:
    """A preexec_fn that keeps a child on `cpus` (None: anywhere)."""
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def run_one(
    tool: str, args: argparse.Namespace, kube: Any, source: Path, otelcol: Path, rate: float | None
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"spans-{tool}-") as tmp:
        work = Path(tmp)
        (work / "pods").mkdir()
        sinks = [free_port() for _ in range(3)]
        port = free_port()
        status = work / "sinks.json"
        me = [sys.executable, str(Path(__file__).resolve())]
        overload = rate is not None
        # Overload: the measured tool gets CPU 0 alone and the helpers (load, replicas) the
        # others. Sharing both cores, the Python load could never offer more than the tool
        # took in: it was slowed as much as the tool. Throughput runs are not pinned.
        cpus = os.cpu_count() or 1
        tool_cpus = {0} if overload and cpus > 1 else None
        helper_cpus = set(range(1, cpus)) if tool_cpus else None
        sink_process = subprocess.Popen(
            [*me, "sink", "--ports", ",".join(map(str, sinks)), "--status", str(status)],
            env=observer_env(source),
            preexec_fn=pinned(helper_cpus),
        )
        while not read_json(status):
            time.sleep(0.1)
        telemetry = free_port()
        if tool == "observer":
            config = observer_config(
                work, port, sinks, kube.kubeconfig, telemetry, args.compression
            )
            argv = [*observer_command(), "agent", "--config", str(config)]
            env = observer_env(source)
        else:
            argv = [
                str(otelcol),
                "--config",
                str(otelcol_config(work, port, sinks, args.compression)),
            ]
            env = {**os.environ, "KUBECONFIG": str(kube.kubeconfig)}
        # Overload: several load processes (one Python process tops out near 100,000
        # spans/s on this machine), each paced at its share of the rate, `--load-workers`
        # requests in flight each; throughput: one process, 4 in flight, as always.
        processes = args.load_processes if overload else 1
        load_results = [work / f"load-{number}.json" for number in range(processes)]
        load: list[subprocess.Popen[bytes]] = []
        target_spans = args.spans
        tool_counts: dict[str, float | None] = {}

        def done() -> bool:
            if not load:
                if not port_open(port):
                    return False
                time.sleep(args.warmup)  # metadata synced: both tools list pods at start
                for number, result in enumerate(load_results):
                    command = [
                        *me,
                        "load",
                        "--target",
                        f"127.0.0.1:{port}",
                        "--spans",
                        str(target_spans),
                        "--result",
                        str(result),
                        "--seed",
                        str(number + 1),
                    ]
                    if overload:
                        assert rate is not None
                        command += [
                            "--rate",
                            str(rate / processes),
                            "--seconds",
                            str(args.overload_seconds),
                            "--workers",
                            str(args.load_workers),
                        ]
                    load.append(
                        subprocess.Popen(
                            command, env=observer_env(source), preexec_fn=pinned(helper_cpus)
                        )
                    )
                return False
            if overload:
                if any(process.poll() is None for process in load):
                    return False
                time.sleep(1.0)  # what was accepted reaches the replicas
                if tool == "observer":
                    metrics = f"http://127.0.0.1:{telemetry}/metrics"
                    received = prometheus_value(metrics, "observer_spans_received")
                    if received is not None:  # a counter with no samples yet means none
                        tool_counts["received"] = received
                        for name in ("refused", "dropped"):
                            found = prometheus_value(metrics, f"observer_spans_{name}")
                            tool_counts[name] = found or 0.0
                return True
            return int(read_json(status).get("spans", 0)) >= target_spans

        try:
            measured = run_until(
                argv,
                work / f"{tool}.log",
                done,
                timeout_s=args.timeout,
                poll_s=0.1,
                env=env,
                preexec_fn=pinned(tool_cpus),
            )
        finally:
            for process in load:
                if process.poll() is None:
                    process.kill()
                process.wait()
            sink_report = read_json(status)
            sink_process.kill()
            sink_process.wait()
        row: dict[str, Any] = {
            "tool": tool,
            "mode": "overload" if overload else "throughput",
            **asdict(measured),
        }
        row["sinks"] = sink_report
        loads = [read_json(result) for result in load_results]
        row["load"] = {
            key: sum(part.get(key, 0) for part in loads) for key in ("sent", "accepted", "refused")
        }
        row["load"]["seconds"] = max((part.get("seconds", 0) for part in loads), default=0)
        row["load"]["processes"] = processes
        if overload:
            row["offered_spans_per_s"] = rate
            row["tool_counts"] = tool_counts
        row["spans_per_cpu_s"] = (
            sink_report.get("spans", 0) / measured.cpu_s if measured.cpu_s else 0.0
        )
        row["spans_per_wall_s"] = (
            sink_report.get("spans", 0) / measured.wall_s if measured.wall_s else 0.0
        )
        if not overload and (
            sink_report.get("traces_on_two_sinks") or sink_report.get("enriched", 0) < target_spans
        ):
            row["invalid"] = "traces split across sinks or spans not enriched"
            tail = (work / f"{tool}.log").read_text(errors="replace").splitlines()[-40:]
            print(f"{tool} run invalid; the end of its log:", *tail, sep="\n", file=sys.stderr)
        return row


def write_report(
    rows: list[dict[str, Any]], facts: dict[str, str], args: argparse.Namespace
) -> str:
    lines = [
        f"# Span path benchmark, {datetime.date.today().isoformat()}",
        "",
        "Produced by (from the repository root):",
        "",
        "```",
        f"~/.cache/observer/venv/bin/python bench/spans.py --spans {args.spans} --runs {args.runs}"
        f" --compression {args.compression} --load-processes {args.load_processes}"
        f" --load-workers {args.load_workers}"
        + (f" --results-suffix={args.results_suffix}" if args.results_suffix else ""),
        "```",
        "",
        "## Machine",
        "",
        *[f"- {key}: {value}" for key, value in facts.items()],
        "",
        "## Runs (in the order they ran)",
        "",
        "| # | tool | mode | spans delivered | enriched | traces split | refused by tool | wall s | spans/s | CPU s | spans / CPU s | peak RSS MB | load before |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        sinks = row["sinks"]
        lines.append(
            f"| {row['run']} | {row['tool']} | {row['mode']} | {sinks.get('spans', 0):,} | {sinks.get('enriched', 0):,} "
            f"| {sinks.get('traces_on_two_sinks', '?')} | {row['load'].get('refused', 0):,} | {row['wall_s']:.2f} "
            f"| {row['spans_per_wall_s']:,.0f} | {row['user_s'] + row['sys_s']:.2f} | {row['spans_per_cpu_s']:,.0f} "
            f"| {row['max_rss_mb']:.1f} | {row['load_before']} |"
            + (f" invalid: {row['invalid']}" if row.get("invalid") else "")
        )
    lines += ["", "Pod attributes the replicas received, by tool:", ""]
    for tool in ("observer", "otelcol"):
        found = {k for r in rows if r["tool"] == tool for k in r["sinks"].get("resource_keys", [])}
        if found:
            lines.append(f"- {tool}: {', '.join(sorted(k for k in found if k.startswith('k8s.')))}")
    lines += [
        "",
        "## Summary (medians of the throughput runs)",
        "",
        "| tool | spans / CPU s | spans/s | peak RSS MB (worst, throughput) | peak RSS MB (worst, 2× overload) |",
        "|---|---|---|---|---|",
    ]
    summary: dict[str, float] = {}
    for tool in ("observer", "otelcol"):
        runs = [
            r
            for r in rows
            if r["tool"] == tool and r["mode"] == "throughput" and not r.get("invalid")
        ]
        over = [r for r in rows if r["tool"] == tool and r["mode"] == "overload"]
        if not runs:
            continue
        summary[tool] = statistics.median(r["spans_per_cpu_s"] for r in runs)
        rss = max(r["max_rss_mb"] for r in runs)
        over_rss = f"{max(r['max_rss_mb'] for r in over):.1f}" if over else "not run"
        lines.append(
            f"| {tool} | {summary[tool]:,.0f} | {statistics.median(r['spans_per_wall_s'] for r in runs):,.0f} | {rss:.1f} | {over_rss} |"
        )
    over_rows = [r for r in rows if r["mode"] == "overload"]
    if over_rows:
        lines += [
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
    lines += ["", "## Targets", "", "| target | observer | met |", "|---|---|---|"]
    if "observer" in summary:
        ours = summary["observer"]
        lines.append(
            f"| ≥ {TARGET_SPANS_PER_CPU_SECOND:,} spans per CPU-second | {ours:,.0f} | {'yes' if ours >= TARGET_SPANS_PER_CPU_SECOND else 'no'} |"
        )
        if "otelcol" in summary:
            lines.append(
                f"| ≥ otelcol beside it ({summary['otelcol']:,.0f}) | {ours / summary['otelcol']:.2f} × | {'yes' if ours >= summary['otelcol'] else 'no'} |"
            )
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    sink = sub.add_parser("sink")
    sink.add_argument("--ports", required=True)
    sink.add_argument("--status", type=Path, required=True)
    load = sub.add_parser("load")
    load.add_argument("--target", required=True)
    load.add_argument("--spans", type=int, required=True)
    load.add_argument("--rate", type=float)
    load.add_argument("--seconds", type=float)
    load.add_argument("--result", type=Path, required=True)
    load.add_argument("--seed", type=int, default=1)
    load.add_argument("--workers", type=int, default=4)
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--tools", default="observer,otelcol")
    parser.add_argument("--overload-seconds", type=float, default=20.0)
    parser.add_argument("--skip-overload", action="store_true")
    parser.add_argument(
        "--load-processes",
        type=int,
        default=4,
        choices=range(1, 9),
        metavar="1..8",
        help="load processes in the overload run, sharing its rate",
    )
    parser.add_argument(
        "--load-workers",
        type=int,
        default=16,
        choices=range(1, 257),
        metavar="1..256",
        help="requests in flight per load process in the overload run",
    )
    parser.add_argument(
        "--compression",
        choices=("gzip", "none"),
        default="gzip",
        help="both tools' export compression (gzip is both defaults)",
    )
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--results-suffix", default="", help="results/spans-<date><suffix>.md, for another run"
    )
    args = parser.parse_args(argv)
    if args.command == "sink":
        asyncio.run(serve_sinks([int(p) for p in args.ports.split(",")], args.status))
        return 0
    if args.command == "load":
        outcome = asyncio.run(
            send_load(args.target, args.spans, args.rate, args.seconds, args.seed, args.workers)
        )
        write_json(args.result, outcome)
        return 0

    sys.path.insert(0, str(REPO))
    from tests.services import kubernetes

    tools = args.tools.split(",")
    otelcol = spans_otelcol_binary() if "otelcol" in tools else Path("otelcol-not-used")
    snapshot = Path(tempfile.mkdtemp(prefix="spans-observer-src-"))
    source = snapshot_observer(snapshot)
    kube = kubernetes.start(Path(tempfile.mkdtemp(prefix="spans-kube-")))
    rows: list[dict[str, Any]] = []
    try:
        sender_pod(kube)
        for run in range(1, args.runs + 1):
            for tool in tools:
                before = load_average()
                row = run_one(tool, args, kube, source, otelcol, None)
                row.update(run=run, load_before=before)
                rows.append(row)
                print(
                    json.dumps(
                        {
                            **{k: row[k] for k in ("tool", "run", "spans_per_cpu_s", "max_rss_mb")},
                            "sinks": row["sinks"],
                        }
                    ),
                    flush=True,
                )
        if not args.skip_overload:
            for tool in tools:
                # The tool's best intake rate, as its load saw it (the wall figure also
                # holds start-up and the warm-up pause, which would understate it).
                best = max(
                    r["load"]["accepted"] / r["load"]["seconds"]
                    for r in rows
                    if r["tool"] == tool and r["load"].get("seconds")
                )
                before = load_average()
                row = run_one(tool, args, kube, source, otelcol, 2 * best)
                row.update(run="2×", load_before=before)
                rows.append(row)
                print(json.dumps({k: row[k] for k in ("tool", "run", "max_rss_mb")}), flush=True)
    finally:
        kube.stop()
    facts = machine_facts(otelcol if "otelcol" in tools else None, source)
    report = write_report(rows, facts, args)
    print(report)
    if not args.no_write:
        stem = BENCH / "results" / f"spans-{datetime.date.today().isoformat()}{args.results_suffix}"
        stem.with_suffix(".md").write_text(report)
        stem.with_suffix(".json").write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
