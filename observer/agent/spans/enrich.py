"""Pod identity on spans: resource attributes from the pod that sent them.

The pod is found, in this order, by the resource's `k8s.pod.uid`, by its `k8s.pod.ip`
(both set when a sidecar or gateway forwards spans for another pod), or by the peer
address of the connection (`PodMetadataCache.pod_by_ip`; host-network pods share the
node's address and are not found that way). The attributes added are the OpenTelemetry
semantic conventions' (`k8s.namespace.name`, `k8s.pod.name`, `k8s.pod.uid`,
`k8s.node.name`, `k8s.<workload kind>.name`, e.g. `k8s.replicaset.name` and
`k8s.deployment.name`), as the Collector's k8sattributes processor adds them; an
attribute the sender already set is kept, never overwritten.

The work is per resource, never per span: a batch of 500 spans from one SDK is one
lookup and one extension of the resource's attribute list. The attribute messages of a
pod are built once and reused until the cache's `version` changes.

Spans whose pod is not found pass through unenriched and are counted by reason:
`no_metadata` (no cache: the API server is not configured or not reachable at start),
`unknown_pod` (the cache does not know the address or uid).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from observer.kube.metadata import PodEntry, PodMetadataCache
from observer.telemetry import metric_name

POD_UID = "k8s.pod.uid"
POD_IP = "k8s.pod.ip"
_WORKLOAD_KINDS = ("replicaset", "deployment", "statefulset", "daemonset", "job", "cronjob")


class PodIdentity:
    """Adds the sender pod's identity to each resource of a batch (see the module docstring)."""

    def __init__(self, cache: PodMetadataCache | None) -> None:
        self.cache = cache
        self.enriched = 0
        self.unenriched: Counter[str] = Counter()
        self._attributes: dict[str, list[KeyValue]] = {}
        self._version = -1

    def enrich(self, resource_spans: Iterable[ResourceSpans], peer: str | None) -> None:
        cache = self.cache
        if cache is None:
            self.unenriched["no_metadata"] += _spans(resource_spans)
            return
        if cache.version != self._version:
            self._attributes.clear()
            self._version = cache.version
        for resource_span in resource_spans:
            attributes = resource_span.resource.attributes
            present: set[str] = set()
            uid = ip = None
            for attribute in attributes:
                key = attribute.key
                present.add(key)
                if key == POD_UID:
                    uid = attribute.value.string_value
                elif key == POD_IP:
                    ip = attribute.value.string_value
            entry = _find(cache, uid, ip, peer)
            spans = sum(len(scope.spans) for scope in resource_span.scope_spans)
            if entry is None:
                self.unenriched["unknown_pod"] += spans
                continue
            added = self._attributes.get(entry.uid)
            if added is None:
                added = self._attributes[entry.uid] = _pod_attributes(cache, entry)
            attributes.extend(kv for kv in added if kv.key not in present)
            self.enriched += spans


def _find(
    cache: PodMetadataCache, uid: str | None, ip: str | None, peer: str | None
) -> PodEntry | None:
    if uid:
        return cache.pod(uid)
    if ip:
        return cache.pod_by_ip(ip)
    if peer:
        return cache.pod_by_ip(peer)
    return None


def _pod_attributes(cache: PodMetadataCache, entry: PodEntry) -> list[KeyValue]:
    values = {
        "k8s.namespace.name": entry.namespace,
        "k8s.pod.name": entry.name,
        POD_UID: entry.uid,
        "k8s.node.name": entry.node,
    }
    # The workload as the log records name it (a ReplicaSet's Deployment, a Job's
    # CronJob), from the same cache.
    fields = cache.fields(entry.uid, "", 0)
    if fields is not None:
        kubernetes = fields[0]
        for kind in _WORKLOAD_KINDS:
            workload = kubernetes.get(kind)
            if isinstance(workload, dict) and workload.get("name"):
                values[f"k8s.{kind}.name"] = workload["name"]
    return [
        KeyValue(key=key, value=AnyValue(string_value=value))
        for key, value in values.items()
        if value
    ]


def _spans(resource_spans: Iterable[ResourceSpans]) -> int:
    return sum(len(scope.spans) for resource in resource_spans for scope in resource.scope_spans)


class EnrichMetrics(Collector):
    def __init__(self, identity: PodIdentity) -> None:
        self.identity = identity

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            metric_name("spans_enriched"),
            "Spans whose resource got the sending pod's identity.",
            value=self.identity.enriched,
        )
        unenriched = CounterMetricFamily(
            metric_name("spans_unenriched"),
            "Spans passed on without pod identity: no metadata cache, or the pod not found.",
            labels=["reason"],
        )
        for reason, value in sorted(self.identity.unenriched.items()):
            unenriched.add_metric([reason], value)
        yield unenriched
