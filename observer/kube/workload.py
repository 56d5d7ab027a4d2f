"""The workload a record's pod belongs to, as one label value for metrics.

The metadata cache puts the owning workload in a record's ``kubernetes`` fields the way
Filebeat does (``kubernetes.deployment.name``...); metrics name it in one label, bounded
by the workloads of the node rather than by its pods.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_WORKLOAD_KEYS = ("deployment", "statefulset", "daemonset", "cronjob", "job", "replicaset")


def workload_of(kubernetes: Mapping[str, Any]) -> str:
    """``deployment/web``, ``statefulset/db``...; empty for a pod without a controller."""
    for key in _WORKLOAD_KEYS:
        owner = kubernetes.get(key)
        if owner:
            return f"{key}/{owner['name']}"
    return ""
