"""The measured tools of the span benchmark (bench/spans.py): their configurations, the
sender's pod they enrich spans with, and their own counters.

- observer: `observer agent` with `sources.spans` (OTLP/gRPC only) and `sinks.collector`
  listing the replicas statically, pod metadata from the API server.
- otelcol: otlp receiver → k8sattributes (`pod_association: connection`, the same node
  filter and fields) → batch → loadbalancing exporter (`routing_key: traceID`, static
  resolver), the distribution of bench/otelcol/spans.yaml.
- otelcol-queue-batch: the same without the batch processor; batching moves into the
  exporters' sending queues, so that a full queue reaches the receiver as a refusal (with
  the batch processor it never does: the processor drops what its exporter cannot take,
  and the sender has been told OK already).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from harness import BENCH, observer_command, observer_env, prometheus_value

NODE = "bench-node"
TOOLS = ("observer", "otelcol", "otelcol-queue-batch")


def observer_config(
    work: Path,
    port: int,
    sinks: list[int],
    kubeconfig: Path,
    telemetry: int,
    compression: str,
    queue_bytes: int | None = None,
) -> Path:
    config = work / "agent.yaml"
    endpoints = "".join(f"\n      - 127.0.0.1:{sink}" for sink in sinks)
    queue = f"\n    queue:\n      max_bytes: {queue_bytes}" if queue_bytes else ""
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
    compression: {compression}{queue}
    endpoints:{endpoints}
"""
    )
    return config


def otelcol_config(
    work: Path,
    port: int,
    sinks: list[int],
    compression: str,
    telemetry: int | None = None,
    queue_bytes: int | None = None,
    batch_processor: bool = True,
) -> Path:
    """otlp → k8sattributes → batch → loadbalancing; without `batch_processor`, batching
    moves into each replica's sending queue. `queue_bytes` bounds those queues by bytes
    (a third each, 2 consumers each: observer's bound and `max_in_flight`), else they keep
    their defaults. `telemetry`: serve otelcol's own metrics on that port."""
    config = work / "otelcol.yaml"
    hostnames = ", ".join(f"127.0.0.1:{sink}" for sink in sinks)
    queue = []
    if queue_bytes or not batch_processor:
        queue.append("sending_queue:")
        if queue_bytes:
            share = queue_bytes // len(sinks)
            queue += ["  sizer: bytes", f"  queue_size: {share}", "  num_consumers: 2"]
        if not batch_processor:  # as observer's `batch`: 2048 spans or 200 ms
            queue += ["  batch:", "    sizer: items", "    min_size: 2048", "    max_size: 2048"]
            queue += ["    flush_timeout: 200ms"]
    queue_yaml = "".join(f"\n        {line}" for line in queue)
    metrics = (
        f"""level: normal
      readers:
        - pull:
            exporter:
              prometheus:
                host: 127.0.0.1
                port: {telemetry}"""
        if telemetry
        else "level: none"
    )
    processors = "[k8sattributes, batch]" if batch_processor else "[k8sattributes]"
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
          insecure: true{queue_yaml}
    resolver:
      static:
        hostnames: [{hostnames}]
service:
  telemetry:
    metrics:
      {metrics}
  pipelines:
    traces:
      receivers: [otlp]
      processors: {processors}
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


def tool_command(
    tool: str,
    work: Path,
    ports: tuple[int, int],
    sinks: list[int],
    kube: Any,
    source: Path,
    otelcol: Path,
    compression: str,
    queue_bytes: int | None = None,
    otelcol_metrics: bool = False,
) -> tuple[list[str], dict[str, str]]:
    """The measured process's argv and environment. `ports`: its OTLP/gRPC port and the
    port of its own metrics (observer always serves them; otelcol with `otelcol_metrics`,
    kept off in throughput runs, where they would cost it CPU)."""
    port, telemetry = ports
    if tool == "observer":
        config = observer_config(
            work, port, sinks, kube.kubeconfig, telemetry, compression, queue_bytes
        )
        return [*observer_command(), "agent", "--config", str(config)], observer_env(source)
    config = otelcol_config(
        work,
        port,
        sinks,
        compression,
        telemetry=telemetry if otelcol_metrics else None,
        queue_bytes=queue_bytes,
        batch_processor=tool == "otelcol",
    )
    return [str(otelcol), "--config", str(config)], {
        **os.environ,
        "KUBECONFIG": str(kube.kubeconfig),
    }


def tool_counters(tool: str, telemetry: int) -> dict[str, float | None]:
    """The tool's own counts of spans taken in, refused, exported and dropped (None: the
    tool does not export that count, or its metrics were not served)."""
    url = f"http://127.0.0.1:{telemetry}/metrics"
    queue_full = {"reason": "queue_full"}
    names: dict[str, tuple[str, dict[str, str] | None]] = (
        {
            "received": ("observer_spans_received", None),
            "refused": ("observer_spans_refused", queue_full),
            "refused_requests": ("observer_span_requests_refused", queue_full),
            "refused_any_reason": ("observer_spans_refused", None),
            "exported": ("observer_spans_exported", None),
            "dropped": ("observer_spans_dropped", None),
        }
        if tool == "observer"
        else {
            "received": ("otelcol_receiver_accepted_spans", None),
            "refused": ("otelcol_receiver_refused_spans", None),
            "exported": ("otelcol_exporter_sent_spans", None),
            # The loadbalancing exporter's failed sends: what a full queue turned away.
            "dropped": ("otelcol_exporter_send_failed_spans", None),
        }
    )
    counts = {key: prometheus_value(url, name, labels) for key, (name, labels) in names.items()}
    if tool == "observer" and counts["exported"] is not None:
        # A counter family with no samples yet (nothing refused, nothing dropped) means 0.
        counts = {key: value or 0.0 for key, value in counts.items()}
    return counts
