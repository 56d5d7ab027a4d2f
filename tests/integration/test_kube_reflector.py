"""The project's list+watch cache against the real kube-apiserver."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from observer.kube.client import KubeApi
from observer.kube.reflector import Reflector


def pod(name: str, node: str = "node-a") -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": "nginx:1.27"}]},
    }


async def wait_for(condition: Callable[[], bool], within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not condition():
            await asyncio.sleep(0.05)


async def test_pod_created_after_list_arrives_through_the_watch(
    api: KubeApi, kube_namespace: str
) -> None:
    """A pod created after the initial list reaches the cache as an ADDED watch event."""
    events: list[tuple[str, str]] = []
    reflector = Reflector(
        api,
        f"/api/v1/namespaces/{kube_namespace}/pods",
        on_event=lambda kind, obj: events.append((kind, obj["metadata"]["name"])),
    )
    task = asyncio.create_task(reflector.run())
    try:
        await asyncio.wait_for(reflector.synced.wait(), 10)
        assert reflector.store == {}
        await api.request(
            "create", "POST", f"/api/v1/namespaces/{kube_namespace}/pods", body=pod("web-1")
        )
        await wait_for(lambda: ("ADDED", "web-1") in events)
        (cached,) = reflector.store.values()
        assert cached["spec"]["nodeName"] == "node-a"
        assert cached["metadata"]["labels"] == {"app": "web"}
        assert reflector.relists == 1
    finally:
        task.cancel()


async def test_deleted_pod_leaves_the_cache(api: KubeApi, kube_namespace: str) -> None:
    """A pod listed at start and deleted later is removed from the cache."""
    path = f"/api/v1/namespaces/{kube_namespace}/pods"
    await api.request("create", "POST", path, body=pod("web-2"))
    reflector = Reflector(api, path)
    task = asyncio.create_task(reflector.run())
    try:
        await asyncio.wait_for(reflector.synced.wait(), 10)
        assert [p["metadata"]["name"] for p in reflector.store.values()] == ["web-2"]
        await api.request("delete", "DELETE", f"{path}/web-2", params={"gracePeriodSeconds": "0"})
        await wait_for(lambda: not reflector.store)
    finally:
        task.cancel()
