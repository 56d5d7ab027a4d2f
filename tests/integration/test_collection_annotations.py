"""observer.dev/* pod annotations steer collection: exclusion, multiline, the body parser.

Pods live in the real kube-apiserver; the agent reads a kubelet-style log tree.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from observer.agent import app
from observer.kube.client import KubeApi
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
from tests.services.kubernetes import KubeCluster

JAVA_TRACE = [
    "java.lang.IllegalStateException: boom",
    "\tat com.example.Shop.checkout(Shop.java:42)",
    "\tat com.example.Main.main(Main.java:7)",
]
PYTHON_TRACE = [
    "Traceback (most recent call last):",
    '  File "/app/main.py", line 3, in <module>',
    "    run()",
    "ValueError: bad input",
]


async def annotated_pod(
    api: KubeApi, namespace: str, node: str, name: str, annotations: dict[str, str]
) -> str:
    """A running pod with containers app and sidecar; its uid."""
    pod = await create(
        api,
        f"/api/v1/namespaces/{namespace}/pods",
        pod_body(name, node, {"app": name}, annotations=annotations),
    )
    await set_running(api, namespace, name, "10.244.2.10")
    return str(pod["metadata"]["uid"])


def messages(tmp_path: Path, container: str) -> list[str]:
    return [
        document["message"]
        for document in delivered(tmp_path)
        if document["kubernetes"]["container"]["name"] == container
    ]


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_excluded_container_is_read_but_not_sent(
    tmp_path: Path,
    tree: PodLogTree,
    api: KubeApi,
    kube: KubeCluster,
    kube_namespace: str,
    node: str,
) -> None:
    """A pod excluded as a whole but with its app container included: only app's lines are
    sent; the sidecar's are counted as excluded and its checkpoint moves to the end."""
    uid = await annotated_pod(
        api,
        kube_namespace,
        node,
        "web-1",
        {"observer.dev/exclude": "true", "observer.dev/app.exclude": "false"},
    )
    tree.container(kube_namespace, "web-1", "app", uid).write(["kept 1", "kept 2"])
    sidecar = tree.container(kube_namespace, "web-1", "sidecar", uid)
    sidecar.write([f"noise {i}" for i in range(5)])
    registry = CollectorRegistry()
    async with following(agent_config(tmp_path, node, kube.kubeconfig), registry):
        await until(lambda: sample(registry, "observer_log_lines_excluded_total") == 5)
        await until(lambda: len(messages(tmp_path, "app")) == 2)
        await asyncio.sleep(0.5)  # time for lines that should not come

    assert messages(tmp_path, "app") == ["kept 1", "kept 2"]
    assert messages(tmp_path, "sidecar") == []


async def test_annotation_added_to_a_running_pod_applies_to_its_new_lines(
    tmp_path: Path,
    tree: PodLogTree,
    api: KubeApi,
    kube: KubeCluster,
    kube_namespace: str,
    node: str,
) -> None:
    """Lines written after a container is annotated as excluded are no longer sent."""
    uid = await annotated_pod(api, kube_namespace, node, "web-2", {})
    log = tree.container(kube_namespace, "web-2", "app", uid)
    log.write(["before"])
    registry = CollectorRegistry()
    async with following(agent_config(tmp_path, node, kube.kubeconfig), registry):
        await until(lambda: messages(tmp_path, "app") == ["before"])
        await api.request(
            "patch",
            "PATCH",
            f"/api/v1/namespaces/{kube_namespace}/pods/web-2",
            body={"metadata": {"annotations": {"observer.dev/app.exclude": "true"}}},
            content_type=MERGE_PATCH,
        )

        def annotation_applies() -> bool:
            log.write(["meanwhile"])  # sent or excluded, depending on when it is read
            return sample(registry, "observer_log_lines_excluded_total") > 0

        await until(annotation_applies)
        log.write(["late 1", "late 2", "late 3"])

        def every_line_accounted_for() -> bool:
            written = len(log.path.read_text().splitlines())
            excluded = sample(registry, "observer_log_lines_excluded_total")
            return len(messages(tmp_path, "app")) + excluded == written

        await until(every_line_accounted_for)

    sent = messages(tmp_path, "app")
    assert sent[0] == "before"
    assert not [message for message in sent if message.startswith("late")]


async def test_multiline_is_chosen_per_container(
    tmp_path: Path,
    tree: PodLogTree,
    api: KubeApi,
    kube: KubeCluster,
    kube_namespace: str,
    node: str,
) -> None:
    """Multiline off for the pod and Python only for app: app joins the Python traceback
    and not the Java trace; the sidecar joins neither."""
    uid = await annotated_pod(
        api,
        kube_namespace,
        node,
        "web-3",
        {"observer.dev/multiline": "false", "observer.dev/app.multiline": "python"},
    )
    for container in ("app", "sidecar"):
        tree.container(kube_namespace, "web-3", container, uid).write(JAVA_TRACE + PYTHON_TRACE)
    await app.run(agent_config(tmp_path, node, kube.kubeconfig), once=True)

    assert messages(tmp_path, "app") == [*JAVA_TRACE, "\n".join(PYTHON_TRACE)]
    assert messages(tmp_path, "sidecar") == JAVA_TRACE + PYTHON_TRACE


async def test_parser_is_chosen_per_container(
    tmp_path: Path,
    tree: PodLogTree,
    api: KubeApi,
    kube: KubeCluster,
    kube_namespace: str,
    node: str,
) -> None:
    """parser: plain keeps a JSON line as text; parser: json parses it, and marks and counts
    a line that is not JSON."""
    uid = await annotated_pod(
        api,
        kube_namespace,
        node,
        "web-4",
        {"observer.dev/parser": "plain", "observer.dev/app.parser": "json"},
    )
    line = '{"msg": "paid", "level": "info", "order": 7}'
    tree.container(kube_namespace, "web-4", "app", uid).write([line, "not json"])
    tree.container(kube_namespace, "web-4", "sidecar", uid).write([line])
    registry = CollectorRegistry()
    async with following(agent_config(tmp_path, node, kube.kubeconfig), registry):
        await until(lambda: len(delivered(tmp_path)) == 3)
        not_json = sample(registry, "observer_log_lines_repaired_total", reason="not_json")

    by_container: dict[str, list[dict[str, Any]]] = {"app": [], "sidecar": []}
    for document in delivered(tmp_path):
        by_container[document["kubernetes"]["container"]["name"]].append(document)
    parsed, plain_text = by_container["app"]
    assert parsed["message"] == "paid"
    assert parsed["json"] == {"order": 7}
    assert plain_text["error"] == {"message": "not a JSON object (observer.dev/parser: json)"}
    (sidecar,) = by_container["sidecar"]
    assert sidecar["message"] == line
    assert "json" not in sidecar
    assert not_json == 1


async def test_annotation_that_cannot_be_understood_is_ignored_and_counted(
    tmp_path: Path,
    tree: PodLogTree,
    api: KubeApi,
    kube: KubeCluster,
    kube_namespace: str,
    node: str,
) -> None:
    """An unknown parser and an unknown setting change nothing and are counted."""
    uid = await annotated_pod(
        api,
        kube_namespace,
        node,
        "web-5",
        {"observer.dev/parser": "xml", "observer.dev/app.exclud": "true"},
    )
    tree.container(kube_namespace, "web-5", "app", uid).write(['{"msg": "hello"}'])
    registry = CollectorRegistry()
    async with following(agent_config(tmp_path, node, kube.kubeconfig), registry):
        await until(lambda: len(delivered(tmp_path)) == 1)
        errors = sample(registry, "observer_kubernetes_annotation_errors_total")

    (document,) = delivered(tmp_path)
    assert document["message"] == "hello"  # parsed as by default
    assert errors == 2
