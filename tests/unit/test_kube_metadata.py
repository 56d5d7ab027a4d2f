"""The pod metadata cache's fields, from pod objects as the API server sends them."""

from __future__ import annotations

from typing import Any, cast

import pytest

from observer.kube.client import KubeApi
from observer.kube.metadata import PodMetadataCache, dedot


def pod(
    uid: str = "uid-1",
    owner: tuple[str, str, str] | None = None,
    ip: str | None = "10.0.0.5",
    host_network: bool = False,
    statuses: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "uid": uid,
        "name": "web-0",
        "namespace": "shop",
        "labels": {"app.kubernetes.io/name": "web"},
    }
    if owner is not None:
        kind, name, owner_uid = owner
        metadata["ownerReferences"] = [
            {"kind": kind, "name": name, "uid": owner_uid, "controller": True}
        ]
    status: dict[str, Any] = {"containerStatuses": statuses or []}
    if ip:
        status["podIP"] = ip
        status["podIPs"] = [{"ip": ip}]
    return {
        "metadata": metadata,
        "spec": {
            "nodeName": "node-a",
            "hostNetwork": host_network,
            "containers": [{"name": "app", "image": "web:2"}],
        },
        "status": status,
    }


def cache() -> PodMetadataCache:
    return PodMetadataCache(cast(KubeApi, None), "node-a")


def test_dedot_replaces_dots_in_keys_only() -> None:
    """Dots in keys become underscores, as Filebeat's labels.dedot does; values are kept."""
    assert dedot({"app.kubernetes.io/name": "a.b", "tier": "x"}) == {
        "app_kubernetes_io/name": "a.b",
        "tier": "x",
    }


@pytest.mark.parametrize(
    ("owner", "workload"),
    [
        (("StatefulSet", "db", "u1"), {"statefulset": {"name": "db"}}),
        (("DaemonSet", "agent", "u2"), {"daemonset": {"name": "agent"}}),
        (("Node", "node-a", "u3"), {}),
        (None, {}),
    ],
)
def test_workload_from_the_controller_reference(
    owner: tuple[str, str, str] | None, workload: dict[str, Any]
) -> None:
    """A StatefulSet or DaemonSet is named directly; other owners (a static pod's Node) not."""
    pods = cache()
    pods._pod_event("ADDED", pod(owner=owner))
    found = pods.fields("uid-1", "app", 0)
    assert found is not None
    kubernetes, _ = found
    kinds = ("replicaset", "deployment", "statefulset", "daemonset", "job", "cronjob")
    assert {key: kubernetes[key] for key in kinds if key in kubernetes} == workload


async def test_job_owned_by_a_cronjob_names_both() -> None:
    """A Job's fetched owner adds the CronJob beside the Job."""
    pods = cache()
    pods.owners["job-uid"] = {"job": {"name": "report-28"}, "cronjob": {"name": "report"}}
    pods._pod_event("ADDED", pod(owner=("Job", "report-28", "job-uid")))
    found = pods.fields("uid-1", "app", 0)
    assert found is not None
    assert found[0]["job"] == {"name": "report-28"}
    assert found[0]["cronjob"] == {"name": "report"}


def test_container_id_belongs_to_the_run_of_the_log_file() -> None:
    """N.log gets the id of run N: the current run's, or the previous one's from lastState."""
    pods = cache()
    status = {
        "name": "app",
        "restartCount": 1,
        "containerID": "containerd://new",
        "lastState": {"terminated": {"containerID": "containerd://old"}},
    }
    pods._pod_event("ADDED", pod(statuses=[status]))
    current, previous = pods.fields("uid-1", "app", 1), pods.fields("uid-1", "app", 0)
    assert current is not None
    assert previous is not None
    assert current[1] == {"restart_count": 1, "image": {"name": "web:2"}, "id": "new"}
    assert previous[1] == {"restart_count": 0, "image": {"name": "web:2"}, "id": "old"}


def test_host_network_pods_are_not_indexed_by_ip() -> None:
    """A host-network pod shares the node's address, so the IP index leaves it out."""
    pods = cache()
    pods._pod_event("ADDED", pod(uid="a", ip="10.0.0.9"))
    pods._pod_event("ADDED", pod(uid="b", ip="192.168.1.1", host_network=True))
    assert pods.pod_by_ip("10.0.0.9") is pods.pod("a")
    assert pods.pod_by_ip("192.168.1.1") is None


def test_status_change_no_record_shows_keeps_the_version() -> None:
    """A pod update that changes no field of its records does not make readers look again."""
    pods = cache()
    pods._pod_event("ADDED", pod())
    version = pods.version
    changed = pod()
    changed["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    pods._pod_event("MODIFIED", changed)
    assert pods.version == version
    relabelled = pod()
    relabelled["metadata"]["labels"] = {"app": "web", "track": "canary"}
    pods._pod_event("MODIFIED", relabelled)
    assert pods.version > version
    found = pods.fields("uid-1", "app", 0)
    assert found is not None
    assert found[0]["labels"] == {"app": "web", "track": "canary"}
