"""What a Prometheus scrape of /metrics costs a loaded agent, and the same for otelcol (issue 8).

    ~/.cache/observer/venv/bin/python bench/scrape.py            # 110 pods, 5,000 lines/s, 120 scrapes
    ~/.cache/observer/venv/bin/python bench/scrape.py --quick    # 20 pods, 20 scrapes, observer: ~1 min

One run: a real Elasticsearch (tests/services/elasticsearch.py) and kube-apiserver
(tests/services/kubernetes.py) holding a full node, `--pods` pods (110, kubelet's default
maximum) of `--deployments` Deployments through their ReplicaSets in four namespaces. Then
each tool in turn, alone with the services, on a fresh pod-log tree of those pods:

- observer: `observer agent --config …` as a node runs it (a copy of observer/ taken at the
  start): pod logs with metadata from the API server, kube events on (a helper plays the
  kubelet: an Unhealthy Event every second on a fifth of the pods, a container restart
  every 10 s), the spans receiver fed by the OpenTelemetry SDK (`--traces` traces/s of 4
  spans, OTLP/gRPC) and exporting to bench/spans.py's sink, the Elasticsearch sink.
- otelcol: `file_log` (the container operator) → `elasticsearch` exporter, as in
  bench/elasticsearch.py, its own telemetry served by its Prometheus pull reader at the
  default level (what :8888 serves).

A writer appends `--rate` lines/s in total (CRI format, half JSON with a level, a tenth on
stderr) to every pod's log for the tool's whole life. After `--warmup` seconds:

- `--scrapes` GETs of /metrics, one every `--interval` s, with Prometheus' headers (its
  default Accept, `Accept-Encoding: gzip`): the wall time of each (request sent to body
  read, by the client), the body (on the wire and decompressed), its series (sample
  lines), and the tool's threads' on-CPU time (schedstat, ns) over the request: an upper
  bound of its CPU, since other work done meanwhile is in it. Half-way between scrapes a
  probe, a GET the server answers at no cost (observer: /healthz; otelcol: a 404): its wall
  time is the wait for the server (observer: for its event loop), not the scrape's work.
- CPU per scrape: `--pairs` quiet windows (no scrape) and as many burst windows (a scrape
  every `--burst-interval` s), `--window` s each, alternating Q B B Q Q B … so that drift
  cancels: the process's CPU (utime + stime, /proc/<pid>/stat) per second in bursts minus
  in quiet windows, times the burst seconds, over the burst scrapes; ± the standard error
  of the per-pair estimates. At one scrape a second the signal (a few ms a second) is
  below the noise of the loaded agent's own CPU (a first full run: per-pair estimates from
  -91 to +51 ms); a scrape renders the same registry whatever the interval. The bytes the
  tool read per second (/proc/<pid>/io rchar) show the load was the same in both kinds.

A run counts only when every line written is in Elasticsearch at the end (the report gives
both counts). Results go to bench/results/scrape-<date>.{md,json}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import gzip
import http.client
import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
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
    otelcol_binary,
    prometheus_value,
    snapshot_observer,
)

NODE = "bench-node"
NAMESPACES = ("shop", "payments", "search", "platform")
OBSERVER_TARGET = "logs-kubernetes.container-default"
OTELCOL_TARGET = "otelcol-bench"
ACCEPT = (
    "application/openmetrics-text;version=1.0.0;q=0.5,"
    "application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)
"""What Prometheus 2.x sends with its default scrape_protocols (scrape/scrape.go acceptHeader)."""
HEADERS = {
    "Accept": ACCEPT,
    "Accept-Encoding": "gzip",
    "User-Agent": "Prometheus/2.55.1",
    "X-Prometheus-Scrape-Timeout-Seconds": "10",
}
TARGET_MS = 10.0
TICK_S = 1 / os.sysconf("SC_CLK_TCK")
MERGE_PATCH = "application/merge-patch+json"
PROBE_MESSAGES = (
    "Readiness probe failed: HTTP probe failed with statuscode: 503",
    'Liveness probe failed: Get "http://10.244.1.17:8080/healthz": context deadline exceeded',
)


# --- the services: a node's pods on a real kube-apiserver ------------------------------


async def create_node(kubeconfig: Path, pods: int, deployments: int) -> list[dict[str, str]]:
    """`deployments` Deployments with their ReplicaSets, `pods` pods bound to NODE."""
    from observer.config import KubernetesConfig
    from observer.kube.client import KubeApi

    api = KubeApi.connect(KubernetesConfig(kubeconfig=kubeconfig))
    rng = random.Random(8)
    created: list[dict[str, str]] = []

    async def post(path: str, metadata: dict[str, Any], spec: Any = None) -> dict[str, Any]:
        body = {"metadata": metadata} | ({"spec": spec} if spec else {})
        return await api.request("create", "POST", path, body=body)

    def owned_by(kind: str, made: dict[str, Any]) -> list[dict[str, Any]]:
        meta = made["metadata"]
        reference = {"apiVersion": "apps/v1", "kind": kind, "controller": True}
        return [reference | {"name": meta["name"], "uid": meta["uid"]}]

    try:
        for namespace in NAMESPACES:
            await post("/api/v1/namespaces", {"name": namespace})
        for index in range(deployments):
            namespace, name = NAMESPACES[index % len(NAMESPACES)], f"svc{index:02d}"
            apps, labels = f"/apis/apps/v1/namespaces/{namespace}", {"app": name}
            containers = [{"name": "app", "image": f"registry.example/{name}:1"}]
            template = {"metadata": {"labels": labels}, "spec": {"containers": containers}}
            spec = {"selector": {"matchLabels": labels}, "template": template}
            deployment = await post(f"{apps}/deployments", {"name": name}, spec)
            rs_name = f"{name}-{rng.getrandbits(36):09x}"
            owners = owned_by("Deployment", deployment)
            replica_set = await post(
                f"{apps}/replicasets", {"name": rs_name, "ownerReferences": owners}, spec
            )
            for _ in range(pods // deployments + (index < pods % deployments)):
                pod_name = f"{rs_name}-{''.join(rng.choices('bcdfghjklmnpqrstvwxz2456789', k=5))}"
                metadata: dict[str, Any] = {"name": pod_name, "labels": labels}
                metadata["ownerReferences"] = owned_by("ReplicaSet", replica_set)
                pod = await post(
                    f"/api/v1/namespaces/{namespace}/pods",
                    metadata,
                    {"nodeName": NODE, "containers": containers},
                )
                uid = pod["metadata"]["uid"]
                created.append({"namespace": namespace, "name": pod_name, "uid": uid})
        # The spans' sender connects from 127.0.0.1: the first pod is theirs.
        first = created[0]
        await api.request(
            "patch",
            "PATCH",
            f"/api/v1/namespaces/{first['namespace']}/pods/{first['name']}/status",
            body={"status": {"podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}]}},
            content_type=MERGE_PATCH,
        )
    finally:
        await api.close()
    return created


# --- helper processes: the writer, the kubelet, the span sender ------------------------


def cri_time(ns: int) -> bytes:
    seconds, fraction = divmod(ns, 1_000_000_000)
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z").encode()


LEVELS = ("info",) * 12 + ("debug",) * 3 + ("warn",) * 2 + ("error", "WARNING", "fatal", "notice")
PATHS = ("/api/cart", "/api/items", "/healthz", "/api/checkout", "/login", "/static/app.js")


def body(rng: random.Random, n: int) -> tuple[bytes, bytes]:
    """(stream, body): half JSON with a level, the rest access and framework lines."""
    roll = rng.random()
    if roll < 0.5:
        return b"stdout", json.dumps(
            {
                "level": rng.choice(LEVELS),
                "msg": "request served",
                "http": {
                    "method": "GET",
                    "path": rng.choice(PATHS),
                    "status": rng.choice((200, 200, 404, 500)),
                },
                "duration_ms": round(rng.random() * 250, 3),
                "trace_id": f"{rng.getrandbits(128):032x}",
                "seq": n,
            },
            separators=(",", ":"),
        ).encode()
    if roll < 0.9:
        return b"stdout", (
            f'10.{n % 256}.{rng.randrange(256)}.7 - - "GET {rng.choice(PATHS)} HTTP/1.1" '
            f"{rng.choice((200, 304, 404))} {rng.randrange(100, 90_000)}"
        ).encode()
    return (
        b"stderr",
        f"WARN worker-{rng.randrange(16)} slow query id={n} took={rng.randrange(900)}ms".encode(),
    )


def write_logs(root: Path, pods_file: Path, rate: int) -> None:
    """Append `rate` lines/s, spread unevenly over every pod's log, until SIGTERM."""
    pods = json.loads(pods_file.read_text())
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    files = []
    for pod in pods:
        directory = root / f"{pod['namespace']}_{pod['name']}_{pod['uid']}" / "app"
        directory.mkdir(parents=True, exist_ok=True)
        files.append(os.open(directory / "0.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644))
    rng = random.Random(1)
    weights = [rng.paretovariate(1.5) for _ in files]  # a few chatty pods, many quiet ones
    started, written = time.monotonic(), 0
    while not stop["now"]:
        now = time.monotonic()
        due = int((now - started) * rate) - written
        chunks: dict[int, list[bytes]] = {}
        for target, n in zip(
            rng.choices(range(len(files)), weights, k=due),
            range(written, written + due),
            strict=True,
        ):
            stream, text = body(rng, n)
            chunks.setdefault(target, []).append(
                cri_time(time.time_ns()) + b" " + stream + b" F " + text + b"\n"
            )
        for target, lines in chunks.items():
            os.write(files[target], b"".join(lines))
        written += due
        time.sleep(max(0.0, 0.02 - (time.monotonic() - now)))
    print(
        json.dumps({"lines": written, "seconds": round(time.monotonic() - started, 1)}), flush=True
    )


async def play_kubelet(kubeconfig: Path, pods: list[dict[str, str]]) -> None:
    """Unhealthy Events every second on a fifth of the pods, a restart every 10 s."""
    from observer.config import KubernetesConfig
    from observer.kube.client import KubeApi

    failing = pods[::5]
    api = KubeApi.connect(KubernetesConfig(kubeconfig=kubeconfig))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    restarts: dict[str, int] = {}
    tick = 0
    while not stop.is_set():
        tick += 1
        pod = failing[tick % len(failing)]
        namespace, name, uid = pod["namespace"], pod["name"], pod["uid"]
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        involved = {"apiVersion": "v1", "kind": "Pod", "namespace": namespace, "name": name}
        event = {
            "metadata": {"name": f"{name}.{tick:016x}", "namespace": namespace},
            "involvedObject": involved | {"uid": uid, "fieldPath": "spec.containers{app}"},
            "reason": "Unhealthy",
            "message": PROBE_MESSAGES[tick % 3 == 0],
            "type": "Warning",
            "count": 1,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "source": {"component": "kubelet", "host": NODE},
        }
        await api.request("create", "POST", f"/api/v1/namespaces/{namespace}/events", body=event)
        if tick % 10 == 0:  # a container of another pod ended (an OOM kill every third time)
            pod = pods[(tick // 10 * 7) % len(pods)]
            count = restarts[pod["uid"]] = restarts.get(pod["uid"], 0) + 1
            reason, code = ("OOMKilled", 137) if tick % 30 == 0 else ("Error", 1)
            ended = {"reason": reason, "exitCode": code, "finishedAt": now}
            status = {
                "name": "app",
                "ready": True,
                "restartCount": count,
                "image": "registry.example/app:1",
                "imageID": f"registry.example/app@sha256:{'0' * 64}",
                "containerID": f"containerd://{count:064x}",
                "state": {"running": {"startedAt": now}},
                "lastState": {"terminated": ended},
            }
            await api.request(
                "patch",
                "PATCH",
                f"/api/v1/namespaces/{pod['namespace']}/pods/{pod['name']}/status",
                body={"status": {"containerStatuses": [status]}},
                content_type=MERGE_PATCH,
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    await api.close()


def send_spans(target: str, traces_per_s: float) -> None:
    """The OpenTelemetry SDK's OTLP/gRPC exporter: traces of 4 spans at a steady rate."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace import SpanKind

    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    provider = TracerProvider(resource=Resource.create({"service.name": "checkout"}))
    exporter = OTLPSpanExporter(endpoint=target, insecure=True)
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
    tracer = provider.get_tracer("bench.scrape")
    started, sent = time.monotonic(), 0
    while not stop["now"]:
        with tracer.start_as_current_span("POST /checkout", kind=SpanKind.SERVER):
            with tracer.start_as_current_span("charge", kind=SpanKind.CLIENT):
                pass
            with tracer.start_as_current_span("SELECT cart", kind=SpanKind.CLIENT):
                pass
            with tracer.start_as_current_span("render"):
                pass
        sent += 1
        time.sleep(max(0.0, started + sent / traces_per_s - time.monotonic()))
    provider.shutdown()
    print(json.dumps({"spans": sent * 4}), flush=True)


# --- measuring ---------------------------------------------------------------------------


def process_cpu_s(pid: int) -> float:
    """utime + stime of the whole process (threads that exited included), clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S


def threads_on_cpu_ns(pid: int) -> int:
    total = 0
    for task in os.scandir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError, ValueError):  # a thread ended meanwhile
            total += int(Path(task.path, "schedstat").read_text().split()[0])
    return total


def bytes_read(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


class Scraper:
    """GET /metrics as Prometheus does: one kept-alive connection, its headers."""

    def __init__(self, port: int, pid: int, path: str = "/metrics") -> None:
        self.port, self.pid, self.path = port, pid, path
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.last_body = b""

    def scrape(self) -> dict[str, Any]:
        cpu_before = threads_on_cpu_ns(self.pid)
        started = time.perf_counter()
        try:
            self.connection.request("GET", self.path, headers=HEADERS)
            response = self.connection.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as error:
            self.connection.close()
            return {"error": repr(error), "wall_ms": (time.perf_counter() - started) * 1e3}
        wall_ms = (time.perf_counter() - started) * 1e3
        cpu_ms = (threads_on_cpu_ns(self.pid) - cpu_before) / 1e6
        encoding = response.getheader("Content-Encoding") or "identity"
        text = gzip.decompress(raw) if encoding == "gzip" else raw
        self.last_body = text
        return {
            "wall_ms": round(wall_ms, 3),
            "cpu_in_request_ms": round(cpu_ms, 3),
            "status": response.status,
            "wire_bytes": len(raw),
            "body_bytes": len(text),
            "series": sum(1 for line in text.splitlines() if line and not line.startswith(b"#")),
            "content_type": response.getheader("Content-Type"),
            "encoding": encoding,
        }


def sleep_until(deadline: float) -> None:
    time.sleep(max(0.0, deadline - time.monotonic()))


def at_cadence(
    scraper: Scraper, probe: Scraper, count: int, interval: float
) -> tuple[list[dict[str, Any]], list[float]]:
    """`count` scrapes, one every `interval` seconds as Prometheus spaces them, and half-way
    between them a GET that costs the server next to nothing (observer: /healthz; otelcol:
    the 404 of its telemetry server): its wall time is how long a request waits for the
    server, the part of a scrape's wall time that is not the scrape's own work."""
    started, samples, waits = time.monotonic(), [], []
    for k in range(count):
        sleep_until(started + k * interval)
        samples.append(scraper.scrape())
        sleep_until(started + (k + 0.5) * interval)
        waits.append(probe.scrape()["wall_ms"])
    return samples, waits


def cpu_windows(pid: int, scraper: Scraper, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Quiet windows and burst windows (a scrape every `burst_interval` s), alternating
    Q B B Q Q B … so that a drift of the load cancels."""
    windows: list[dict[str, Any]] = []
    for pair in range(args.pairs):
        for kind in ("quiet", "burst") if pair % 2 == 0 else ("burst", "quiet"):
            cpu, read, started = process_cpu_s(pid), bytes_read(pid), time.monotonic()
            end, scrapes, failed = started + args.window, 0, 0
            while kind == "burst" and started + scrapes * args.burst_interval < end:
                sleep_until(started + scrapes * args.burst_interval)
                failed += "error" in scraper.scrape()
                scrapes += 1
            sleep_until(end)
            windows.append(
                {
                    "pair": pair,
                    "kind": kind,
                    "seconds": round(time.monotonic() - started, 3),
                    "scrapes": scrapes,
                    "failed": failed,
                    "cpu_s": round(process_cpu_s(pid) - cpu, 3),
                    "read_mb": round((bytes_read(pid) - read) / 1e6, 2),
                }
            )
    return windows


def cpu_per_scrape(windows: list[dict[str, Any]]) -> dict[str, Any]:
    def rate(kind: str, ws: list[dict[str, Any]]) -> float:
        chosen = [w for w in ws if w["kind"] == kind]
        return sum(w["cpu_s"] for w in chosen) / sum(w["seconds"] for w in chosen)

    scraping = [w for w in windows if w["kind"] == "burst"]
    pooled = (rate("burst", windows) - rate("quiet", windows)) * sum(w["seconds"] for w in scraping)
    pooled_ms = pooled / sum(w["scrapes"] for w in scraping) * 1e3
    per_pair = []
    for pair in sorted({w["pair"] for w in windows}):
        ws = [w for w in windows if w["pair"] == pair]
        s = next(w for w in ws if w["kind"] == "burst")
        per_pair.append((rate("burst", ws) - rate("quiet", ws)) * s["seconds"] / s["scrapes"] * 1e3)
    error = statistics.stdev(per_pair) / math.sqrt(len(per_pair)) if len(per_pair) > 1 else None
    return {
        "pooled_ms": round(pooled_ms, 2),
        "burst_scrapes": sum(w["scrapes"] for w in scraping),
        "burst_failed": sum(w["failed"] for w in scraping),
        "pairs_ms": [round(v, 2) for v in per_pair],
        "standard_error_ms": round(error, 2) if error is not None else None,
        "cpu_per_s_quiet": round(rate("quiet", windows), 4),
        "cpu_per_s_scraping": round(rate("burst", windows), 4),
        "read_mb_per_s_quiet": round(
            sum(w["read_mb"] for w in windows if w["kind"] == "quiet")
            / sum(w["seconds"] for w in windows if w["kind"] == "quiet"),
            2,
        ),
        "read_mb_per_s_scraping": round(
            sum(w["read_mb"] for w in scraping) / sum(w["seconds"] for w in scraping), 2
        ),
    }


def families(body: bytes, top: int = 12) -> dict[str, Any]:
    """Series and bytes per family in one body (a sample belongs to the `# TYPE` before it);
    prometheus_client writes a counter's or histogram's `_created` samples as a family of
    their own, counted apart."""
    table: dict[str, dict[str, Any]] = {}
    current = "(none)"
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("# TYPE "):
            current = line.split()[2]
        elif line and not line.startswith("#"):
            row = table.setdefault(current, {"family": current, "series": 0, "bytes": 0})
            row["series"] += 1
            row["bytes"] += len(line) + 1
    created = [row for name, row in table.items() if name.endswith("_created")]
    rest = [row for name, row in table.items() if not name.endswith("_created")]
    return {
        "families": len(rest),
        "created_series": sum(row["series"] for row in created),
        "created_bytes": sum(row["bytes"] for row in created),
        "largest_families": sorted(rest, key=lambda row: -row["bytes"])[:top],
    }


def percentile(values: list[float], p: float) -> float:
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(len(ordered) * p / 100)) - 1]


def summary(
    samples: list[dict[str, Any]], waits: list[float], windows: list[dict[str, Any]]
) -> dict[str, Any]:
    good = [s for s in samples if "error" not in s and s["status"] == 200]
    walls = [s["wall_ms"] for s in good]
    return {
        **{f"probe_ms_p{p}": round(percentile(waits, p), 2) for p in (50, 99)},
        "probe_ms_max": round(max(waits), 2),
        "scrapes": len(samples),
        "failed": len(samples) - len(good),
        **{f"wall_ms_p{p}": round(percentile(walls, p), 2) for p in (50, 90, 99)},
        "wall_ms_max": round(max(walls), 2),
        "over_target": sum(wall > TARGET_MS for wall in walls),
        "cpu_in_request_ms_p50": round(percentile([s["cpu_in_request_ms"] for s in good], 50), 2),
        "cpu_in_request_ms_p99": round(percentile([s["cpu_in_request_ms"] for s in good], 99), 2),
        "cpu_per_scrape": cpu_per_scrape(windows),
        "series": [min(s["series"] for s in good), max(s["series"] for s in good)],
        "body_bytes_median": int(statistics.median(s["body_bytes"] for s in good)),
        "wire_bytes_median": int(statistics.median(s["wire_bytes"] for s in good)),
        "content_type": good[-1]["content_type"],
        "encoding": good[-1]["encoding"],
    }


# --- one tool's run ----------------------------------------------------------------------


def observer_yaml(work: Path, ports: dict[str, int], kubeconfig: Path, es_url: str) -> str:
    return f"""\
node_name: {NODE}
state_dir: {work / "state"}
telemetry:
  listen: 127.0.0.1:{ports["telemetry"]}
kubernetes:
  kubeconfig: {kubeconfig}
sources:
  pod_logs:
    root: {work / "pods"}
  spans:
    enabled: true
    otlp_grpc: {{listen: '127.0.0.1:{ports["otlp_grpc"]}'}}
    otlp_http: {{listen: '127.0.0.1:{ports["otlp_http"]}'}}
    zipkin: {{listen: '127.0.0.1:{ports["zipkin"]}'}}
sinks:
  elasticsearch:
    hosts: [{es_url}]
    setup: {{number_of_replicas: 0}}
  collector:
    endpoints: ['127.0.0.1:{ports["collector"]}']
"""


def otelcol_yaml(work: Path, ports: dict[str, int], es_url: str) -> str:
    return f"""\
receivers:
  file_log:
    include: [{work / "pods"}/*/*/*.log]
    start_at: beginning
    include_file_path: true
    operators: [{{type: container}}]
exporters:
  elasticsearch:
    endpoints: [{es_url}]
    logs_index: {OTELCOL_TARGET}
    sending_queue: {{batch: {{flush_timeout: 200ms}}}}   # as in bench/elasticsearch.py
service:
  telemetry:
    logs: {{level: warn}}
    metrics:
      readers:
        - pull: {{exporter: {{prometheus: {{host: 127.0.0.1, port: {ports["telemetry"]}}}}}}}
  pipelines:
    logs: {{receivers: [file_log], exporters: [elasticsearch]}}
"""


def es(url: str, method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(  # noqa: S310 - loopback
        f"{url}{path}", None if body is None else json.dumps(body).encode(), method=method
    )
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - loopback
        return json.loads(response.read() or b"{}")


def es_count(url: str, target: str) -> int:
    try:
        es(url, "POST", f"/{target}/_refresh")
        return int(es(url, "GET", f"/{target}/_count")["count"])
    except urllib.error.HTTPError:
        return 0


def up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
            return bool(response.status == 200)
    except OSError:
        return False


def alive(process: subprocess.Popen[bytes]) -> bool:
    """Without reaping it: os.wait4 must get its rusage at the end."""
    return os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None


def wait(what: str, ready: Any, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if not alive(process) or time.monotonic() > deadline:
            raise RuntimeError(f"{what} never became ready")
        time.sleep(0.25)


def run_tool(tool: str, ctx: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"bench-scrape-{tool}-"))
    (work / "pods").mkdir()
    ports = {
        name: free_port() for name in ("telemetry", "otlp_grpc", "otlp_http", "zipkin", "collector")
    }
    url, me = ctx["es_url"], [sys.executable, str(Path(__file__).resolve())]
    helpers: dict[str, subprocess.Popen[bytes]] = {}
    if tool == "observer":
        (work / "agent.yaml").write_text(observer_yaml(work, ports, ctx["kubeconfig"], url))
        argv = [*observer_command(), "agent", "--config", str(work / "agent.yaml")]
        env, target, ready = observer_env(ctx["source"]), OBSERVER_TARGET, "/readyz"
        sink = ["sink", "--ports", str(ports["collector"]), "--status", str(work / "sink.json")]
        helpers["sink"] = subprocess.Popen([sys.executable, str(BENCH / "spans.py"), *sink])
    else:
        es(url, "PUT", f"/_index_template/{OTELCOL_TARGET}", {
            "index_patterns": [f"{OTELCOL_TARGET}*"], "data_stream": {}, "priority": 500,
            "template": {"settings": {"number_of_shards": 1, "number_of_replicas": 0}},
        })  # fmt: skip
        (work / "otelcol.yaml").write_text(otelcol_yaml(work, ports, url))
        argv = [str(ctx["otelcol"]), "--config", str(work / "otelcol.yaml")]
        env, target, ready = dict(os.environ), OTELCOL_TARGET, "/metrics"
    load = load_average()
    log = (work / f"{tool}.log").open("wb")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait(tool, lambda: up(f"http://127.0.0.1:{ports['telemetry']}{ready}"), process)
        helpers["writer"] = subprocess.Popen(
            [*me, "write", str(work / "pods"), str(ctx["pods_file"]), "--rate", str(args.rate)],
            stdout=subprocess.PIPE,
        )
        if tool == "observer":
            helpers["kubelet"] = subprocess.Popen(
                [*me, "kubelet", str(ctx["kubeconfig"]), str(ctx["pods_file"])], env=env
            )
            helpers["spans"] = subprocess.Popen(
                [*me, "spans", f"127.0.0.1:{ports['otlp_grpc']}", "--traces", str(args.traces)],
                stdout=subprocess.PIPE,
            )
        scraper = Scraper(ports["telemetry"], process.pid)
        sleep_until(time.monotonic() + args.warmup)
        warm = []
        for _ in range(3):  # the first scrapes create series and warm caches: not counted
            warm.append(scraper.scrape())
            time.sleep(args.interval)
        probe = Scraper(ports["telemetry"], process.pid, "/healthz")
        samples, waits = at_cadence(scraper, probe, args.scrapes, args.interval)
        windows = cpu_windows(process.pid, scraper, args)
        body = scraper.last_body
        written = stop_helper(helpers.pop("writer"))
        spans = stop_helper(helpers.pop("spans")) if "spans" in helpers else {}
        deadline, found = time.monotonic() + 120, -1
        while time.monotonic() < deadline and found != written["lines"]:
            time.sleep(1)
            found = es_count(url, target)
        extra: dict[str, Any] = {}
        if tool == "observer":
            extra["spans_received"] = prometheus_value(
                f"http://127.0.0.1:{ports['telemetry']}/metrics", "observer_spans_received"
            )
            extra["event_documents"] = es_count(url, "logs-kubernetes.event-default")
            workloads = {
                part.split('"')[1] for line in body.decode().splitlines()
                if line.startswith("observer_log_records_total{")
                for part in line.split(",") if part.startswith("workload=")
            }  # fmt: skip
            extra["workloads_in_log_records"] = len(workloads)
    finally:
        for helper in helpers.values():
            stop_helper(helper)
        if alive(process):
            process.send_signal(signal.SIGTERM)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        log.close()
        if process.returncode not in (None, 0, -signal.SIGTERM):
            print((work / f"{tool}.log").read_text()[-3000:], file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)
    return {
        "tool": tool,
        "argv": argv,
        "load_before": load,
        "lines_written": written["lines"],
        "writer_seconds": written["seconds"],
        "documents": found,
        "delivered": found == written["lines"],
        "spans_sent": spans.get("spans"),
        **extra,
        "process_cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "max_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "summary": summary(samples, waits, windows),
        **families(body),
        "warmup_scrapes": warm,
        "windows": windows,
        "samples": samples,
        "probe_ms": waits,
    }


def stop_helper(helper: subprocess.Popen[bytes]) -> dict[str, Any]:
    if helper.poll() is None:
        helper.send_signal(signal.SIGTERM)
    try:
        out, _ = helper.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        helper.kill()
        out, _ = helper.communicate()
    lines = (out or b"").decode().strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


# --- report ------------------------------------------------------------------------------


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows),
    ]


def report(results: list[dict[str, Any]], facts: dict[str, str], args: Any, command: str) -> str:
    a = args
    out = [
        f"# /metrics scrape cost on a loaded agent, {a.date}",
        "",
        f"Produced by (from the repository root):\n\n```\n{command}\n```",
        "",
        "## Machine",
        "",
        "2 cores, noisy: other engineers' tests and benchmarks share it, so wall times carry "
        "their scheduling delays; CPU figures are the measured process's own.",
        "",
        *(f"- {key}: {value}" for key, value in facts.items()),
        "",
        "## Load",
        "",
        f"{a.pods} pods of {a.deployments} Deployments (through ReplicaSets) in "
        f"{len(NAMESPACES)} namespaces on the real kube-apiserver, bound to the node; "
        f"{a.rate:,} lines/s written in total, uneven over the pods (half JSON with a level, a "
        f"tenth on stderr). observer also: kube events (an Unhealthy Event a second on a fifth "
        f"of the pods, a container restart every 10 s), {a.traces:g} traces/s of 4 spans from "
        f"the OpenTelemetry SDK. Both into one local Elasticsearch node.",
        "",
        "## Method",
        "",
        f"After {a.warmup:g} s of warm-up and 3 uncounted scrapes: {a.scrapes} scrapes, one "
        f"every {a.interval:g} s, with Prometheus' headers (its default Accept, gzip): wall "
        "time (client), body, series (sample lines), and the tool's threads' on-CPU time from "
        "before the request to after the body (*CPU in request*: an upper bound, other work "
        "done meanwhile is in it). Half-way between scrapes, a *probe*: a GET the server "
        "answers at no cost (observer: /healthz; otelcol: the 404 of its telemetry server); "
        "its wall time is what any request waits for the server, not the scrape's own work. "
        "Then *CPU per scrape*: the tool's process CPU "
        f"(/proc/<pid>/stat) per second in {a.pairs} burst windows of {a.window:g} s (a scrape "
        f"every {a.burst_interval:g} s) minus that in as many quiet windows (no scrape), "
        "alternating Q B B Q …, times the burst seconds, over the burst scrapes; ± the "
        "standard error of the per-pair estimates. Bursts, not one scrape a second, because "
        "a few ms a second is below the noise of a loaded agent's own CPU over 10 s windows; "
        "a scrape renders the same registry whatever the interval, so its cost is the same. "
        "The bytes the tool read per second (/proc/<pid>/io rchar) show the load was the same "
        "in both kinds of window.",
        "",
        "## Results",
        "",
    ]
    rows = []
    for r in results:
        s, c = r["summary"], r["summary"]["cpu_per_scrape"]
        rows.append(
            [
                r["tool"],
                f"{s['scrapes']} ({s['failed']})",
                *(s[f"wall_ms_{p}"] for p in ("p50", "p90", "p99", "max")),
                s["over_target"],
                f"{c['pooled_ms']} ± {c['standard_error_ms']}",
                f"{s['cpu_in_request_ms_p50']} / {s['cpu_in_request_ms_p99']}",
                f"{s['probe_ms_p50']} / {s['probe_ms_p99']} / {s['probe_ms_max']}",
                f"{s['series'][0]}–{s['series'][1]} ({r['created_series']})",
                f"{s['body_bytes_median']:,} ({s['wire_bytes_median']:,} {s['encoding']})",
                r["families"],
            ]
        )
    out += table(
        ["tool", "scrapes (failed)", "wall p50 ms", "p90", "p99", "max", "over 10 ms",
         "CPU/scrape ms ± SE", "CPU in request p50 / p99 ms", "probe p50 / p99 / max ms",
         "series (of them _created)", "body bytes (wire)", "families"],
        rows,
    )  # fmt: skip
    by_tool = {r["tool"]: r["summary"] for r in results}
    if {"observer", "otelcol"} <= by_tool.keys():
        ob, ot = by_tool["observer"], by_tool["otelcol"]
        ratios = [
            ("wall p50", ob["wall_ms_p50"], ot["wall_ms_p50"]),
            ("wall p99", ob["wall_ms_p99"], ot["wall_ms_p99"]),
            ("CPU/scrape", ob["cpu_per_scrape"]["pooled_ms"], ot["cpu_per_scrape"]["pooled_ms"]),
            ("series", ob["series"][1], ot["series"][1]),
            ("body bytes", ob["body_bytes_median"], ot["body_bytes_median"]),
        ]
        said = [f"{name} {x / y:.2f} ×" if y > 0 else f"{name} n/a" for name, x, y in ratios]
        out += ["", "observer / otelcol: " + "; ".join(said) + "."]
    if "observer" in by_tool:
        ob = by_tool["observer"]
        wall, cpu = ob["wall_ms_p90"], ob["cpu_per_scrape"]["pooled_ms"]
        met = "met" if wall < TARGET_MS and cpu < TARGET_MS else "**not met**"
        peer = by_tool.get("otelcol")
        tail = f"; p99 wall {ob['wall_ms_p99']} ms" + (
            f" (otelcol {peer['wall_ms_p99']} ms in the same run)" if peer else ""
        )
        out += [
            "",
            f"Target (issue 8), a scrape of a loaded agent costs under {TARGET_MS:g} ms, "
            f"in CPU and in wall time at p90: CPU {cpu} ms per scrape, p90 wall {wall} ms: "
            f"{met}{tail}. The p99 is this shared machine's scheduling as much as the "
            "tool's: compare it with the peer's.",
        ]
    out += ["", "## The runs", ""]
    rows = []
    for r in results:
        c = r["summary"]["cpu_per_scrape"]
        rows.append(
            [
                r["tool"],
                f"{r['lines_written']:,} / {r['documents']:,}",
                r.get("spans_sent") or "",
                r.get("event_documents", ""),
                r.get("workloads_in_log_records", ""),
                r["process_cpu_s"],
                r["max_rss_mb"],
                r["load_before"],
                f"{c['cpu_per_s_quiet']} → {c['cpu_per_s_scraping']}",
                f"{c['read_mb_per_s_quiet']} → {c['read_mb_per_s_scraping']}",
                f"{c['burst_scrapes']} ({c['burst_failed']})",
                ", ".join(map(str, c["pairs_ms"])),
            ]
        )
    out += table(
        ["tool", "lines written / documents", "spans sent", "event documents",
         "workloads in log_records", "CPU s (life)", "peak RSS MB", "load before",
         "CPU s/s quiet → burst", "read MB/s quiet → burst", "burst scrapes (failed)",
         "CPU/scrape by pair ms"],
        rows,
    )  # fmt: skip
    for r in results:
        out += ["", f"### {r['tool']}: the largest families in the last scrape", ""]
        out += table(
            ["family", "series", "bytes"],
            [[f["family"], f["series"], f"{f['bytes']:,}"] for f in r["largest_families"]],
        )
        out.append(f"\n`_created` samples: {r['created_series']}, {r['created_bytes']:,} bytes.")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="helper")
    writer = sub.add_parser("write")
    writer.add_argument("root", type=Path)
    writer.add_argument("pods_file", type=Path)
    writer.add_argument("--rate", type=int, required=True)
    kubelet = sub.add_parser("kubelet")
    kubelet.add_argument("kubeconfig", type=Path)
    kubelet.add_argument("pods_file", type=Path)
    spans = sub.add_parser("spans")
    spans.add_argument("target")
    spans.add_argument("--traces", type=float, required=True)
    parser.add_argument(
        "--quick", action="store_true", help="20 pods, 20 scrapes, observer only: about a minute"
    )
    parser.add_argument("--pods", type=int, default=110)
    parser.add_argument("--deployments", type=int, default=20)
    parser.add_argument("--rate", type=int, default=5000, help="lines/s written in total")
    parser.add_argument("--traces", type=float, default=20, help="traces/s of 4 spans")
    parser.add_argument("--scrapes", type=int, default=120)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between scrapes")
    parser.add_argument("--pairs", type=int, default=6, help="CPU: pairs of windows")
    parser.add_argument("--window", type=float, default=10.0, help="CPU: seconds of a window")
    parser.add_argument("--burst-interval", type=float, default=0.05, help="CPU: in bursts")
    parser.add_argument("--warmup", type=float, default=20.0)
    parser.add_argument("--tools", help="observer,otelcol (--quick: observer)")
    parser.add_argument("--results", type=Path, default=BENCH / "results")
    parser.add_argument("--date", default=datetime.date.today().isoformat())
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    if args.helper == "write":
        write_logs(args.root, args.pods_file, args.rate)
        return 0
    if args.helper == "kubelet":
        asyncio.run(play_kubelet(args.kubeconfig, json.loads(args.pods_file.read_text())))
        return 0
    if args.helper == "spans":
        send_spans(args.target, args.traces)
        return 0
    if args.quick:
        args.pods, args.deployments, args.rate, args.scrapes = 20, 4, 1000, 20
        args.pairs, args.window, args.warmup = 2, 5.0, 3.0
    args.tools = args.tools or ("observer" if args.quick else "observer,otelcol")

    sys.path.insert(0, str(REPO))
    from tests.services import elasticsearch as es_service
    from tests.services import kubernetes

    binary = otelcol_binary() if "otelcol" in args.tools else None
    home = Path(tempfile.mkdtemp(prefix="bench-scrape-"))
    source = snapshot_observer(home / "src")
    facts = machine_facts(binary, source)
    node = es_service.start(home / "es", heap="1g")
    cluster = kubernetes.start(home / "kubernetes")
    results = []
    try:
        pods = asyncio.run(create_node(cluster.kubeconfig, args.pods, args.deployments))
        (home / "pods.json").write_text(json.dumps(pods))
        ctx = {"es_url": node.url, "kubeconfig": cluster.kubeconfig, "source": source,
               "otelcol": binary, "pods_file": home / "pods.json"}  # fmt: skip
        for tool in args.tools.split(","):
            node.clean()
            results.append(run_tool(tool, ctx, args))
            brief = {k: v for k, v in results[-1].items() if k not in ("samples", "windows")}
            print(json.dumps(brief), file=sys.stderr, flush=True)
    finally:
        cluster.stop()
        node.stop()
        shutil.rmtree(home, ignore_errors=True)
    facts["load (1, 5, 15 min) at the end"] = " ".join(
        Path("/proc/loadavg").read_text().split()[:3]
    )
    given = argv if argv is not None else sys.argv[1:]
    command = " ".join(["~/.cache/observer/venv/bin/python bench/scrape.py", *given])
    text = report(results, facts, args, command)
    print(text)
    if not args.no_write:
        stem = args.results / f"scrape-{args.date}"
        stem.with_suffix(".md").write_text(text)
        run = {"command": command, "date": args.date, "machine": facts}
        run |= {"parameters": vars(args), "results": results}
        stem.with_suffix(".json").write_text(json.dumps(run, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
