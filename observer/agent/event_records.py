"""Records of the kubelet's story: its Events, and the ends of containers' runs.

Two origins, one data stream (``logs-kubernetes.event-<namespace>``: Elastic's dataset
name for Kubernetes events), one shape:

- **Events** the kubelet reports for this node and its pods (`observer.kube.events`):
  probe failures (parsed into ``probe.kind``, ``error.message``,
  ``http.response.status_code``: `observer.agent.kubelet_messages`), kills, back-offs,
  a node's ``SystemOOM``. The kubelet posts no Event when the kernel OOM-kills a
  container, nor for a restart as such; those are in the pod's status.
- **Terminations** from the pods' status, seen by the metadata cache's pod watch: when a
  container's ``restartCount`` grows, its ``lastState.terminated`` (reason ``OOMKilled``,
  ``Error``...; exit code) becomes a record about the run that ended, with that run's
  ``container.id`` and ``container.restart_count`` so that it joins its log lines.

Fields (ECS): ``@timestamp`` (when it happened), ``message``, ``event.kind: event``,
``event.provider`` (``kubelet`` or ``pod-status``), ``event.id`` (what makes the
Elasticsearch ``_id``: ``<event uid>/<count>``, ``<pod uid>/<container>/<restart>``),
``event.reason``, ``event.action``, ``log.level`` (``warning`` for Warning Events,
OOM kills and failed runs), ``process.exit_code``, the pod's ``kubernetes.*`` and
``container.*`` from the metadata cache (marked ``kubernetes.metadata_missing`` when it
lacks the pod), and Elastic's ``kubernetes.event.*`` (``uid``, ``name``, ``count``,
``type``, ``reason``, ``source``, ``involved_object``, ``timestamp.first_occurrence`` /
``last_occurrence``).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from observer.agent.kubelet_messages import (
    ACTION_OOM_KILLED,
    ACTION_RESTARTED,
    parse_kubelet_message,
)
from observer.kube.client import JsonObject
from observer.kube.events import event_count
from observer.kube.metadata import PodMetadataCache

Document = dict[str, Any]

_CONTAINER_FIELD_PATH = re.compile(
    r"spec\.(?:initContainers|containers|ephemeralContainers)\{(.+)\}"
)


def _pod_parts(
    metadata: PodMetadataCache, uid: str, container: str | None, restart: int | None = None
) -> tuple[Document, Document | None] | None:
    """The pod's ``kubernetes`` and ``container`` parts (None when the cache lacks the pod);
    with no `restart`, the container's current run."""
    entry = metadata.pod(uid)
    if entry is None:
        return None
    if restart is None:
        runs = [count for name, count in entry.container_ids if name == container]
        restart = max(runs, default=0)
    found = metadata.fields(uid, container or "", restart)
    if found is None:
        return None
    kubernetes, container_part = found
    if container is None:
        del kubernetes["container"]
        return kubernetes, None
    return kubernetes, container_part


def event_record(event: JsonObject, metadata: PodMetadataCache, node: str) -> Document:
    """One occurrence of a kubelet Event as a record (see the module docstring)."""
    meta = event.get("metadata") or {}
    involved = event.get("involvedObject") or {}
    source = event.get("source") or {}
    reason = str(event.get("reason") or "")
    message = str(event.get("message") or "")
    count = event_count(event)
    series = event.get("series") or {}
    last = (
        event.get("lastTimestamp")
        or series.get("lastObservedTime")
        or event.get("eventTime")
        or meta.get("creationTimestamp")
    )
    first = event.get("firstTimestamp") or event.get("eventTime") or last
    field_path = str(involved.get("fieldPath") or "")
    container_match = _CONTAINER_FIELD_PATH.fullmatch(field_path)
    container = container_match[1] if container_match else None

    record: Document = {
        "@timestamp": last or datetime.now(UTC).isoformat(),
        "message": message,
        "log": {"level": "warning" if event.get("type") == "Warning" else "info"},
        "event": {
            "kind": "event",
            "provider": "kubelet",
            "id": f"{meta.get('uid', '')}/{count}",
            "reason": reason,
        },
    }
    parsed = parse_kubelet_message(reason, message)
    for key, value in parsed.items():
        if key == "event":
            record["event"].update(value)
        else:
            record[key] = value

    kubernetes: Document
    if involved.get("kind") == "Pod":
        parts = _pod_parts(metadata, str(involved.get("uid") or ""), container)
        if parts is not None:
            kubernetes, container_part = parts
            if container_part is not None:
                record["container"] = container_part
        else:
            kubernetes = {
                "namespace": involved.get("namespace", ""),
                "pod": {"name": involved.get("name", ""), "uid": involved.get("uid", "")},
                "node": {"name": node},
                "metadata_missing": True,
            }
            if container is not None:
                kubernetes["container"] = {"name": container}
    else:
        kubernetes = {"node": {"name": node}}
    kubernetes["event"] = {
        "uid": meta.get("uid", ""),
        "name": meta.get("name", ""),
        "namespace": meta.get("namespace", ""),
        "type": event.get("type", ""),
        "reason": reason,
        "count": count,
        "source": {"component": source.get("component", ""), "host": source.get("host", "")},
        "involved_object": {
            "kind": involved.get("kind", ""),
            "name": involved.get("name", ""),
            "uid": involved.get("uid", ""),
            "field_path": field_path,
        },
        "timestamp": {"first_occurrence": first, "last_occurrence": last},
    }
    record["kubernetes"] = kubernetes
    return record


def termination_record(
    pod: JsonObject, status: JsonObject, metadata: PodMetadataCache, node: str
) -> Document | None:
    """The end of a container's previous run, from its status; None without one."""
    terminated = (status.get("lastState") or {}).get("terminated")
    restarts = int(status.get("restartCount") or 0)
    if not terminated or restarts < 1:
        return None
    meta = pod["metadata"]
    uid, name = meta["uid"], status["name"]
    reason = str(terminated.get("reason") or "")
    exit_code = terminated.get("exitCode")
    oom = reason == "OOMKilled"
    what = "was OOM-killed" if oom else f"exited ({reason or 'no reason given'})"
    record: Document = {
        "@timestamp": terminated.get("finishedAt") or datetime.now(UTC).isoformat(),
        "message": f"Container {name} {what} with exit code {exit_code}; restart {restarts}.",
        "log": {"level": "warning" if oom or exit_code else "info"},
        "event": {
            "kind": "event",
            "provider": "pod-status",
            "id": f"{uid}/{name}/{restarts}",
            "reason": reason,
            "action": ACTION_OOM_KILLED if oom else ACTION_RESTARTED,
        },
    }
    if exit_code is not None:
        record["process"] = {"exit_code": int(exit_code)}
    # About the run that ended: its log file is (restarts - 1).log, its id the previous one.
    parts = _pod_parts(metadata, uid, name, restarts - 1)
    if parts is not None and parts[1] is not None:
        record["kubernetes"], record["container"] = parts
    else:
        record["kubernetes"] = {
            "namespace": meta.get("namespace", ""),
            "pod": {"name": meta.get("name", ""), "uid": uid},
            "container": {"name": name},
            "node": {"name": node},
            "metadata_missing": True,
        }
        record["container"] = {"restart_count": restarts - 1}
    previous_id = terminated.get("containerID")
    if previous_id:
        record["container"]["id"] = str(previous_id).rpartition("://")[2]
    return record
