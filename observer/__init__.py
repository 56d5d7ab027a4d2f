"""observer — an observability pipeline for Kubernetes, in one package with two deployables.

The map (a folder holds several implementations of one idea, or one deployable;
folders for wire formats and the span path arrive with the code that needs them):

    config.py     the typed configuration of both deployables; `observer check-config`
    telemetry.py  observer's own JSON logs, metric names, /metrics /healthz /readyz
    cli.py        `observer agent | collector | demo | check-config`
    kube/         the Kubernetes API: connection, and list+watch caches (reflectors)
    sinks/        where records are written: Elasticsearch, …
    protocols/    span wire formats (OTLP, Zipkin v2) → OTLP ResourceSpans; decode only
    receivers/    span receivers for both deployables: OTLP/gRPC, OTLP/HTTP, Zipkin
    agent/        the per-node DaemonSet: tail pod logs → decode → enrich → sinks
    collector/    the trace collector: intake → assemble → reconstruct → graph → sample
                  → store/ (SQLite | Elasticsearch) → query (Jaeger API); app.py wires it

How data flows through the agent:

    /var/log/pods files ─► tail ─► decode ─► enrich (kube/) ─► sinks/elasticsearch
                              ▲                                      │
                              └──────── checkpoints advance on ack ──┘

    kubelet Events (kube/events.py), restarts in pod status ─► agent/events.py records
        (probe kind, status code, exit code; pod metadata) ─► the kubernetes.event data stream

    workloads, sidecars ─► receivers/ ─► agent/spans: pod identity (kube/) ─► route by
                                          trace id ─► one collector replica (OTLP/gRPC)

How data flows through the collector:

    agents ─► receivers/ ─► collector/pipeline.py: intake → assemble (by trace id) →
        reconstruct → graph (Tempo-named metrics) → sample ─► collector/store/
        ─► collector/query.py: the Jaeger HTTP API for Jaeger's UI and Grafana

`agent` and `collector` never import each other, and the shared folders never import
either; an import-linter contract in the test command keeps it so. docs/architecture.md
tells the longer story.
"""

__version__ = "0.1.0"
