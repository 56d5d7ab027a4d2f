"""Pod metadata as pods change and the API server fails, against the real kube-apiserver.

The tests play the kubelet (pods bound to a node of the test's own, status patches) and
the cluster's troubles: a label patched on a running pod, a pod deleted with much unread
log, a StatefulSet pod recreated under its name, a watch whose resourceVersion the
server has forgotten, and the API server stopped for a minute.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client import CollectorRegistry

from observer.agent.app import pods_being_read
from observer.agent.checkpoint import CheckpointStore
from observer.agent.tail import Batch, Tailer
from observer.kube.client import KubeApi
from observer.kube.metadata import PodMetadataCache
from observer.testing import PodLogTree
from tests.integration.test_pod_metadata import (
    MERGE_PATCH,
    agent_config,
    create,
    delivered,
    following,
    pod_body,
    set_running,
    until,
)
from tests.services.kubernetes import KubeCluster, _get_ok


async def running(
    api: KubeApi, namespace: str, node: str, name: str, labels: dict[str, str], ip: str
) -> str:
    """A pod bound to `node` with the status the kubelet writes; its uid."""
    pod = await create(api, f"/api/v1/namespaces/{namespace}/pods", pod_body(name, node, labels))
    await set_running(api, namespace, name, ip)
    return str(pod["metadata"]["uid"])


async def delete_pod(api: KubeApi, namespace: str, name: str) -> None:
    await api.request(
        "delete",
        "DELETE",
        f"/api/v1/namespaces/{namespace}/pods/{name}",
        params={"gracePeriodSeconds": "0"},
    )


def samples(registry: CollectorRegistry, name: str, label: str) -> dict[str, float]:
    return {
        sample.labels[label]: sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == name
    }


async def test_label_patched_on_a_running_pod_reaches_its_new_lines_within_10s(
    tmp_path: Path,
    tree: PodLogTree,
    api: KubeApi,
    kube: KubeCluster,
    kube_namespace: str,
    node: str,
) -> None:
    """After a label is patched onto a running pod, its lines carry it within 10 s."""
    uid = await running(api, kube_namespace, node, "web-1", {"app": "web"}, "10.244.3.1")
    log = tree.container(kube_namespace, "web-1", "app", uid)
    log.write(["before"])
    async with following(agent_config(tmp_path, node, kube.kubeconfig)):
        await until(lambda: any(d["message"] == "before" for d in delivered(tmp_path)))
        await api.request(
            "patch",
            "PATCH",
            f"/api/v1/namespaces/{kube_namespace}/pods/web-1",
            body={"metadata": {"labels": {"track": "canary"}}},
            content_type=MERGE_PATCH,
        )

        def canary_line_arrived() -> bool:
            log.write(["after"])
            return any(
                d["kubernetes"].get("labels", {}).get("track") == "canary"
                for d in delivered(tmp_path)
            )

        await until(canary_line_arrived, within=10.0)

    (before,) = [d for d in delivered(tmp_path) if d["message"] == "before"]
    assert before["kubernetes"]["labels"] == {"app": "web"}


async def test_deleted_pod_with_10mb_unread_is_enriched_until_its_files_are_drained(
    tmp_path: Path, tree: PodLogTree, api: KubeApi, kube_namespace: str, node: str
) -> None:
    """A pod deleted with 10 MB of log not yet read, and its grace period over before reading
    starts: every line carries its metadata; once its files are gone it is forgotten."""
    now = [1000.0]
    cache = PodMetadataCache(api, node, deleted_pod_grace=60.0, clock=lambda: now[0])
    settings = agent_config(tmp_path, node, tmp_path / "unused").sources.pod_logs
    queue: asyncio.Queue[Batch] = asyncio.Queue(maxsize=4)
    tailer = Tailer(settings, CheckpointStore(tmp_path / "state"), queue, metadata=cache)
    cache.in_use = lambda: pods_being_read(tailer)
    watching = asyncio.create_task(cache.run())
    try:
        uid = await running(api, kube_namespace, node, "batch-7", {"app": "batch"}, "10.244.3.2")
        await asyncio.wait_for(cache.synced.wait(), 10)
        await until(lambda: cache.pod(uid) is not None)
        log = tree.container(kube_namespace, "batch-7", "app", uid)
        line = "x" * 90
        written = 0
        for _ in range(2):  # two files: a rotated one and the live one
            log.write([f"{index:08d} {line}" for index in range(written, written + 55_000)])
            written += 55_000
            if written == 55_000:
                log.rotate()
        assert sum(path.stat().st_size for path in log.path.parent.iterdir()) >= 10_000_000

        await delete_pod(api, kube_namespace, "batch-7")
        await until(lambda: (entry := cache.pod(uid)) is not None and entry.deleted_at is not None)
        now[0] += 3600.0
        cache.prune()
        assert cache.pod(uid) is not None  # its log is still to be read

        enriched = missing = 0

        async def consume() -> None:
            nonlocal enriched, missing
            while True:
                batch = await queue.get()
                for document in batch.documents:
                    if document["kubernetes"].get("labels") == {"app": "batch"}:
                        enriched += 1
                    else:
                        missing += 1
                queue.task_done()

        consumer = asyncio.create_task(consume())
        await tailer.run(once=True)
        await queue.join()
        consumer.cancel()

        assert (enriched, missing) == (written, 0)
        # The kubelet removes a deleted pod's logs; then nothing holds its metadata.
        tree.close()
        for path in sorted((tmp_path / "pods").rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        cache.prune()
        assert cache.pod(uid) is None
    finally:
        watching.cancel()
        await asyncio.wait({watching})


async def test_pod_recreated_under_its_name_keeps_each_uids_labels(
    tmp_path: Path,
    tree: PodLogTree,
    api: KubeApi,
    kube: KubeCluster,
    kube_namespace: str,
    node: str,
) -> None:
    """A StatefulSet pod deleted and recreated as web-0: each line carries the labels of the
    pod (uid) that wrote it, also the old pod's lines read after the new pod exists."""
    old_uid = await running(
        api, kube_namespace, node, "web-0", {"app": "web", "revision": "1"}, "10.244.3.3"
    )
    old_log = tree.container(kube_namespace, "web-0", "app", old_uid)
    old_log.write(["old 1"])
    async with following(agent_config(tmp_path, node, kube.kubeconfig)):
        await until(
            lambda: any(
                d["message"] == "old 1" and "labels" in d["kubernetes"] for d in delivered(tmp_path)
            )
        )
        await delete_pod(api, kube_namespace, "web-0")
        new_uid = await running(
            api, kube_namespace, node, "web-0", {"app": "web", "revision": "2"}, "10.244.3.3"
        )
        new_log = tree.container(kube_namespace, "web-0", "app", new_uid)
        old_log.write(["old 2"])  # the old container's last words, read late
        new_log.write(["new 1"])

        def all_enriched() -> bool:
            found = {d["message"]: d for d in delivered(tmp_path)}
            return all(
                "labels" in found.get(m, {}).get("kubernetes", {}) for m in ("old 2", "new 1")
            )

        await until(all_enriched)

    documents = delivered(tmp_path)
    revisions = {
        d["message"]: (d["kubernetes"]["pod"]["uid"], d["kubernetes"]["labels"]["revision"])
        for d in documents
    }
    assert revisions == {
        "old 1": (old_uid, "1"),
        "old 2": (old_uid, "1"),
        "new 1": (new_uid, "2"),
    }


def start_api_server(kube: KubeCluster) -> None:
    """Start the stopped API server again (same port, same etcd) and wait until it is ready."""
    kube.apiserver.start()
    kube.apiserver.wait_ready(
        lambda: _get_ok(f"{kube.server}/readyz", kube.token, kube.ca_file), timeout=120
    )


async def test_forgotten_resource_version_relists_once_and_matches_the_server(
    api: KubeApi, kube: KubeCluster, kube_namespace: str, node: str
) -> None:
    """A watch resumed from a resourceVersion the server no longer has (410 Gone: a
    restarted API server's watch cache begins at its start) lists exactly once more, and
    the cache then holds what the server holds: pods created, deleted and relabelled while
    it was not watching."""
    cache = PodMetadataCache(api, node)
    uids = {
        name: await running(api, kube_namespace, node, name, {"app": name}, f"10.244.4.{i}")
        for i, name in enumerate(("keep", "drop", "relabel"), start=1)
    }
    watching = asyncio.create_task(cache.run())
    await asyncio.wait_for(cache.synced.wait(), 10)
    watching.cancel()
    await asyncio.wait({watching})

    # While nobody watches: one pod deleted, one relabelled, one created.
    await delete_pod(api, kube_namespace, "drop")
    await api.request(
        "patch",
        "PATCH",
        f"/api/v1/namespaces/{kube_namespace}/pods/relabel",
        body={"metadata": {"labels": {"app": "relabel", "moved": "yes"}}},
        content_type=MERGE_PATCH,
    )
    uids["new"] = await running(api, kube_namespace, node, "new", {"app": "new"}, "10.244.4.9")
    # A new watch cache: the version the watch resumes from is older than anything it keeps.
    kube.apiserver.stop()
    start_api_server(kube)

    watching = asyncio.create_task(cache.run())
    try:
        await until(
            lambda: cache.pods_reflector.relists == 2 and cache.pod(uids["new"]) is not None
        )
        server = await api.list("/api/v1/pods", {"fieldSelector": f"spec.nodeName={node}"})
        on_server = {
            item["metadata"]["uid"]: item["metadata"]["labels"] for item in server["items"]
        }
        live = {uid: entry.labels for uid, entry in cache.pods.items() if entry.deleted_at is None}
        assert live == on_server
        assert set(on_server) == {uids["keep"], uids["relabel"], uids["new"]}
        assert cache.pods[uids["drop"]].deleted_at is not None
        # One list at start, exactly one after the 410 (each resource has its own).
        assert cache.pods_reflector.relists == 2
        assert cache.namespaces_reflector.relists == 2
    finally:
        watching.cancel()
        await asyncio.wait({watching})


async def test_api_server_down_for_a_minute_loses_no_line_and_costs_one_list_per_resource(
    tmp_path: Path,
    tree: PodLogTree,
    api: KubeApi,
    kube: KubeCluster,
    kube_namespace: str,
    node: str,
) -> None:
    """With the API server stopped for 60 s, lines keep flowing (those of a pod the cache
    does not know with the path's fields, marked), none lost; once it is back each cached
    resource is listed once, the kubelet's Events not at all, and the cache catches up: a
    pod bound to the node then has its lines enriched."""
    known = await running(api, kube_namespace, node, "web-1", {"app": "web"}, "10.244.5.1")
    new_uid = "7a1f3c9e-2b4d-4e8f-9a6b-0c1d2e3f4a5b"  # a pod the API server never had
    registry = CollectorRegistry()
    known_log = tree.container(kube_namespace, "web-1", "app", known)
    new_log = tree.container(kube_namespace, "web-2", "app", new_uid)
    written = 0
    async with following(agent_config(tmp_path, node, kube.kubeconfig), registry):
        await until(  # every resource listed once before the outage
            lambda: all(
                registry.get_sample_value("observer_kubernetes_relists_total", {"resource": r}) == 1
                for r in ("pods", "namespaces", "events")
            )
        )
        kube.apiserver.stop()
        try:
            loop = asyncio.get_running_loop()
            down_until = loop.time() + 60.0
            while loop.time() < down_until:
                known_log.write([f"known {written}"])
                new_log.write([f"new {written}"])
                written += 1
                await asyncio.sleep(1.0)
            await until(lambda: len(delivered(tmp_path)) == 2 * written, within=10)
        finally:
            start_api_server(kube)
        relists = samples(registry, "observer_kubernetes_relists_total", "resource")
        requests = samples(registry, "observer_kubernetes_api_requests_total", "verb")

        after_uid = await running(
            api, kube_namespace, node, "web-3", {"app": "after"}, "10.244.5.3"
        )
        after_log = tree.container(kube_namespace, "web-3", "app", after_uid)

        def caught_up() -> bool:
            after_log.write(["after the outage"])  # read before the pod is known: marked
            after = samples(registry, "observer_kubernetes_relists_total", "resource")
            down = samples(registry, "observer_kubernetes_watch_down_seconds", "resource")
            return (
                all(after[r] == relists[r] + 1 for r in ("pods", "namespaces"))
                and all(seconds == 0 for seconds in down.values())  # every watch open again
                and any(
                    d["message"] == "after the outage" and d["kubernetes"].get("labels")
                    for d in delivered(tmp_path)
                )
            )

        await until(caught_up, within=60)
        await asyncio.sleep(2.0)
        relists_after = samples(registry, "observer_kubernetes_relists_total", "resource")
        requests_after = samples(registry, "observer_kubernetes_api_requests_total", "verb")

    documents = [d for d in delivered(tmp_path) if d["message"] != "after the outage"]
    messages = [d["message"] for d in documents]
    assert sorted(messages) == sorted(
        [f"known {i}" for i in range(written)] + [f"new {i}" for i in range(written)]
    )
    assert all(
        d["kubernetes"]["labels"] == {"app": "web"}
        for d in documents
        if d["message"].startswith("known")
    )
    assert all(
        d["kubernetes"].get("metadata_missing") for d in documents if d["message"].startswith("new")
    )
    assert {r: relists_after[r] - relists[r] for r in relists_after} == {
        "pods": 1,
        "namespaces": 1,
        "events": 0,
    }
    # One list and one watch each for pods and namespaces (listed at once after failing to
    # connect: a restarted server's watch cache would answer their old versions 410); the
    # Events watch resumes from its version, without a list.
    assert requests_after["list"] - requests["list"] == 2
    assert requests_after["watch"] - requests["watch"] == 3
