"""observer — an observability pipeline for Kubernetes, in one package with two deployables.

The map (a folder holds several implementations of one idea, or one deployable;
folders for wire formats and the span path arrive with the code that needs them):

    config.py     the typed configuration of both deployables; `observer check-config`
    telemetry.py  observer's own JSON logs, metric names, /metrics /healthz /readyz
    cli.py        `observer agent | collector | demo | check-config`
    kube/         the Kubernetes API: connection, and list+watch caches (reflectors)
    sinks/        where records are written: Elasticsearch, …
    agent/        the per-node DaemonSet: tail pod logs → decode → enrich → sinks
    collector/    the trace collector: assemble → reconstruct → graph → store → query

How data flows through the agent:

    /var/log/pods files ─► tail ─► decode ─► enrich (kube/) ─► sinks/elasticsearch
                              ▲                                      │
                              └──────── checkpoints advance on ack ──┘

`agent` and `collector` never import each other, and the shared folders never import
either; an import-linter contract in the test command keeps it so. docs/architecture.md
tells the longer story.
"""

__version__ = "0.1.0"
