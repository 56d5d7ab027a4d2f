"""The project's list+watch cache against the real kube-apiserver."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from observer.config import KubernetesConfig
from observer.kube.client import KubeApi
from observer.kube.reflector import Reflector
from tests.services.kubernetes import KubeCluster
from tests.services.network import TcpRelay


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


async def test_watch_down_time_counts_from_the_break_until_the_watch_resumes(
    kube: KubeCluster, kube_namespace: str, tmp_path: Path
) -> None:
    """Cut from the API server, the reflector says for how long its list/watch has failed;
    once the network is back, the watch resumes, the figure returns to 0 and changes flow."""
    relay = TcpRelay(urlsplit(kube.server).port or 443)
    await relay.start()
    kubeconfig = yaml.safe_load(kube.kubeconfig.read_text())
    kubeconfig["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{relay.port}"
    relayed = tmp_path / "kubeconfig"
    relayed.write_text(yaml.safe_dump(kubeconfig))
    api = KubeApi.connect(KubernetesConfig(kubeconfig=relayed))
    path = f"/api/v1/namespaces/{kube_namespace}/pods"
    reflector = Reflector(api, path, backoff_initial=0.1, backoff_max=0.5)
    task = asyncio.create_task(reflector.run())
    try:
        await asyncio.wait_for(reflector.synced.wait(), 10)
        assert reflector.down_seconds() == 0

        await relay.cut()
        await wait_for(lambda: reflector.down_seconds() > 0)
        await asyncio.sleep(1.0)
        down = reflector.down_seconds()
        assert down >= 1.0

        await relay.start()
        await wait_for(lambda: reflector.down_seconds() == 0)
        await api.request("create", "POST", path, body=pod("web-3"))
        await wait_for(lambda: len(reflector.store) == 1)
        assert reflector.relists == 1  # resumed from its resourceVersion, not listed again
    finally:
        task.cancel()
        await relay.cut()
        await api.close()
