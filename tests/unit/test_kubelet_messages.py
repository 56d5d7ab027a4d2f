"""The kubelet's Event messages as fields, and the records made of Events and restarts.

The messages are the kubelet's own texts (pkg/kubelet/prober/prober.go, pkg/probe/*,
pkg/kubelet/kuberuntime, pkg/kubelet/oom), as Kubernetes 1.30 writes them.
"""

from __future__ import annotations

from typing import Any, cast

import pytest

from observer.agent.event_records import event_record, termination_record
from observer.agent.kubelet_messages import parse_kubelet_message
from observer.kube.client import KubeApi
from observer.kube.events import event_count, event_host
from observer.kube.metadata import PodMetadataCache
from observer.kube.workload import workload_of

POD_UID = "5f0c4f7e-0b1f-4f43-9d7b-2f1b1f0c9a11"


@pytest.mark.parametrize(
    ("reason", "message", "fields"),
    [
        (
            "Unhealthy",
            "Readiness probe failed: HTTP probe failed with statuscode: 500",
            {
                "event": {"action": "probe_failed"},
                "probe": {"kind": "readiness", "result": "failed", "type": "http"},
                "error": {"message": "HTTP probe failed with statuscode: 500"},
                "http": {"response": {"status_code": 500}},
            },
        ),
        (
            "Unhealthy",
            'Liveness probe failed: Get "http://10.244.1.17:8080/healthz": dial tcp '
            "10.244.1.17:8080: connect: connection refused",
            {
                "event": {"action": "probe_failed"},
                "probe": {"kind": "liveness", "result": "failed", "type": "http"},
                "error": {
                    "message": 'Get "http://10.244.1.17:8080/healthz": dial tcp '
                    "10.244.1.17:8080: connect: connection refused"
                },
            },
        ),
        (
            "Unhealthy",
            'Startup probe failed: Get "https://10.244.1.17:8443/ready": context deadline '
            "exceeded (Client.Timeout exceeded while awaiting headers)",
            {
                "event": {"action": "probe_failed"},
                "probe": {"kind": "startup", "result": "failed", "type": "http"},
                "error": {
                    "message": 'Get "https://10.244.1.17:8443/ready": context deadline '
                    "exceeded (Client.Timeout exceeded while awaiting headers)"
                },
            },
        ),
        (
            "Unhealthy",
            "Liveness probe failed: dial tcp 10.244.1.17:5432: i/o timeout",
            {
                "event": {"action": "probe_failed"},
                "probe": {"kind": "liveness", "result": "failed", "type": "tcp"},
                "error": {"message": "dial tcp 10.244.1.17:5432: i/o timeout"},
            },
        ),
        (
            "Unhealthy",
            'Readiness probe failed: service unhealthy (responded with "NOT_SERVING")',
            {
                "event": {"action": "probe_failed"},
                "probe": {"kind": "readiness", "result": "failed", "type": "grpc"},
                "error": {"message": 'service unhealthy (responded with "NOT_SERVING")'},
            },
        ),
        (
            "Unhealthy",
            "Liveness probe failed: cat: can't open '/tmp/healthy': No such file or directory\n",
            {
                "event": {"action": "probe_failed"},
                "probe": {"kind": "liveness", "result": "failed"},
                "error": {"message": "cat: can't open '/tmp/healthy': No such file or directory\n"},
            },
        ),
        (
            "Unhealthy",
            "Readiness probe errored: rpc error: code = NotFound desc = failed to exec in "
            "container: container is in CONTAINER_EXITED state",
            {
                "event": {"action": "probe_errored"},
                "probe": {"kind": "readiness", "result": "errored"},
                "error": {
                    "message": "rpc error: code = NotFound desc = failed to exec in container: "
                    "container is in CONTAINER_EXITED state"
                },
            },
        ),
        (
            "ProbeWarning",
            "Readiness probe warning: Probe terminated redirects, Response body: moved",
            {
                "event": {"action": "probe_warning"},
                "probe": {"kind": "readiness", "result": "warning"},
                "error": {"message": "Probe terminated redirects, Response body: moved"},
            },
        ),
        (
            "Killing",
            "Container app failed liveness probe, will be restarted",
            {
                "event": {"action": "container_killed"},
                "probe": {"kind": "liveness", "result": "failed"},
            },
        ),
        ("Killing", "Stopping container app", {"event": {"action": "container_killed"}}),
        (
            "BackOff",
            f"Back-off restarting failed container app in pod web-0_shop({POD_UID})",
            {"event": {"action": "restart_backoff"}},
        ),
        (
            "BackOff",
            'Back-off pulling image "registry.example/shop/web:1.5"',
            {"event": {"action": "image_pull_backoff"}},
        ),
        (
            "FailedPostStartHook",
            'Exec lifecycle hook ([/bin/sh -c exit 3]) for Container "app" in Pod '
            f"\"web-0_shop({POD_UID})\" failed - error: command '/bin/sh -c exit 3' exited "
            'with 3: , message: ""',
            {"process": {"exit_code": 3}},
        ),
        (
            "SystemOOM",
            "System OOM encountered, victim process: java, pid: 4242",
            {"event": {"action": "system_oom"}, "process": {"name": "java", "pid": 4242}},
        ),
        ("Pulled", 'Container image "nginx:1.27" already present on machine', {}),
        ("Unhealthy", "Something the kubelet never wrote", {}),
    ],
    ids=lambda value: value[:40] if isinstance(value, str) else None,
)
def test_kubelet_message_fields(reason: str, message: str, fields: dict[str, Any]) -> None:
    """Each kubelet message gives exactly the fields it states, and no others."""
    assert parse_kubelet_message(reason, message) == fields


def test_count_comes_from_count_or_series() -> None:
    """An Event's occurrences: core/v1 count, else events.k8s.io series.count, else one."""
    assert event_count({"count": 7}) == 7
    assert event_count({"series": {"count": 3}}) == 3
    assert event_count({}) == 1


def test_host_comes_from_source_or_reporting_instance() -> None:
    """The reporting node: source.host, else reportingInstance (newer recorders)."""
    assert event_host({"source": {"component": "kubelet", "host": "node-a"}}) == "node-a"
    assert event_host({"reportingInstance": "node-b"}) == "node-b"
    assert event_host({"source": {"component": "kubelet"}}) == ""


def pod(restarts: int = 0, last: dict[str, Any] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {
        "name": "app",
        "restartCount": restarts,
        "containerID": f"containerd://run{restarts}",
    }
    if last is not None:
        status["lastState"] = {"terminated": last}
    return {
        "metadata": {
            "uid": POD_UID,
            "name": "web-0",
            "namespace": "shop",
            "labels": {"app": "web"},
            "ownerReferences": [
                {"kind": "StatefulSet", "name": "web", "uid": "sts-uid", "controller": True}
            ],
        },
        "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "web:2"}]},
        "status": {"podIP": "10.244.1.17", "containerStatuses": [status]},
    }


def cache_with(*pods: dict[str, Any]) -> PodMetadataCache:
    cache = PodMetadataCache(cast(KubeApi, None), "node-a")
    for item in pods:
        cache._pod_event("ADDED", item)
    return cache


def kubelet_event(count: int = 1, **changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "metadata": {"uid": "ev-1", "name": "web-0.17f3a", "namespace": "shop"},
        "involvedObject": {
            "kind": "Pod",
            "namespace": "shop",
            "name": "web-0",
            "uid": POD_UID,
            "fieldPath": "spec.containers{app}",
        },
        "reason": "Unhealthy",
        "message": "Readiness probe failed: HTTP probe failed with statuscode: 500",
        "type": "Warning",
        "count": count,
        "firstTimestamp": "2026-01-01T00:00:00Z",
        "lastTimestamp": "2026-01-01T00:00:30Z",
        "source": {"component": "kubelet", "host": "node-a"},
    }
    event.update(changes)
    return event


def test_event_record_carries_the_pods_metadata_and_the_occurrence() -> None:
    """A probe failure's record has the pod's labels and workload, the container's run, the
    parsed probe, and an id made of the Event's uid and count."""
    record = event_record(kubelet_event(count=4), cache_with(pod()), "node-a")
    assert record["@timestamp"] == "2026-01-01T00:00:30Z"
    assert record["event"] == {
        "kind": "event",
        "provider": "kubelet",
        "id": "ev-1/4",
        "reason": "Unhealthy",
        "action": "probe_failed",
    }
    assert record["log"] == {"level": "warning"}
    assert record["probe"] == {"kind": "readiness", "result": "failed", "type": "http"}
    assert record["http"] == {"response": {"status_code": 500}}
    kubernetes = record["kubernetes"]
    assert kubernetes["labels"] == {"app": "web"}
    assert kubernetes["statefulset"] == {"name": "web"}
    assert kubernetes["container"] == {"name": "app"}
    assert kubernetes["event"]["count"] == 4
    assert kubernetes["event"]["involved_object"]["uid"] == POD_UID
    assert record["container"] == {"restart_count": 0, "image": {"name": "web:2"}, "id": "run0"}
    assert workload_of(kubernetes) == "statefulset/web"


def test_event_of_an_unknown_pod_is_marked() -> None:
    """A pod the cache does not know leaves the Event's own reference, marked metadata_missing."""
    record = event_record(kubelet_event(), cache_with(), "node-a")
    assert record["kubernetes"]["pod"] == {"name": "web-0", "uid": POD_UID}
    assert record["kubernetes"]["container"] == {"name": "app"}
    assert record["kubernetes"]["metadata_missing"] is True
    assert "container" not in record


def test_termination_record_describes_the_run_that_ended() -> None:
    """An OOM kill in lastState becomes a record with the ended run's id, restart count and
    exit code, identified by pod, container and restart."""
    last = {
        "reason": "OOMKilled",
        "exitCode": 137,
        "finishedAt": "2026-01-01T00:01:00Z",
        "containerID": "containerd://run0",
    }
    current = pod(restarts=1, last=last)
    record = termination_record(
        current, current["status"]["containerStatuses"][0], cache_with(current), "node-a"
    )
    assert record is not None
    assert record["event"] == {
        "kind": "event",
        "provider": "pod-status",
        "id": f"{POD_UID}/app/1",
        "reason": "OOMKilled",
        "action": "container_oom_killed",
    }
    assert record["@timestamp"] == "2026-01-01T00:01:00Z"
    assert record["process"] == {"exit_code": 137}
    assert record["container"]["restart_count"] == 0
    assert record["container"]["id"] == "run0"
    assert record["kubernetes"]["labels"] == {"app": "web"}
