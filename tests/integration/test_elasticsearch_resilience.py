"""The Elasticsearch sink when the cluster is down or overloaded: nothing lost, nothing twice.

Each test starts a node of its own, since it stops it or starves it on purpose.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from observer.agent import app
from observer.config import AgentConfig
from observer.testing import PodLogTree
from tests.services import elasticsearch
from tests.services.elasticsearch import Node

LOGS = "logs-kubernetes.container-default"
OUTAGE_SECONDS = 60


def agent_config(tmp_path: Path, node: Node, **elasticsearch_settings: Any) -> AgentConfig:
    return AgentConfig.model_validate(
        {
            "node_name": "node-a",
            "state_dir": str(tmp_path / "state"),
            "telemetry": {"listen": "127.0.0.1:0"},
            "sources": {"pod_logs": {"root": str(tmp_path / "pods"), "poll_interval": "50ms"}},
            "sinks": {
                "file": None,
                "elasticsearch": {
                    "hosts": [node.url],
                    "request_timeout": "5s",
                    "retry": {"initial_backoff": "50ms", "max_backoff": "2s"},
                    "setup": {"number_of_replicas": 0},
                    **elasticsearch_settings,
                },
            },
        }
    )


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def stored_messages(node: Node) -> list[str]:
    """Every stored document's message (duplicates included), read with scroll."""
    node.request("POST", f"/{LOGS}/_refresh")
    page = node.request(
        "POST", f"/{LOGS}/_search?scroll=1m", {"size": 5000, "_source": ["message"]}
    )
    messages: list[str] = []
    while page["hits"]["hits"]:
        messages += [hit["_source"]["message"] for hit in page["hits"]["hits"]]
        page = node.request(
            "POST", "/_search/scroll", {"scroll": "1m", "scroll_id": page["_scroll_id"]}
        )
    return messages


def count(node: Node) -> int:
    try:
        node.request("POST", f"/{LOGS}/_refresh")
        return int(node.request("GET", f"/{LOGS}/_count")["count"])
    except OSError:
        return 0


@pytest.fixture
def own_node(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Node]:
    settings = getattr(request, "param", None)
    node = elasticsearch.start(tmp_path / "elasticsearch", settings=settings)
    yield node
    node.stop()


async def test_an_outage_of_a_minute_loses_and_duplicates_nothing(
    tmp_path: Path, own_node: Node, tree: PodLogTree
) -> None:
    """Elasticsearch stops for 60 s while lines keep coming: reading pauses, then all arrive once."""
    containers = [tree.container("shop", f"web-{i}", "app") for i in range(2)]
    # A small sink bound, so that the outage reaches the reader within the minute.
    config = agent_config(tmp_path, own_node, bulk={"max_bytes": "64KiB", "max_in_flight": 1})
    registry = CollectorRegistry()
    stop = asyncio.Event()
    agent = asyncio.create_task(app.run(config, once=False, stop=stop, registry=registry))
    written: list[str] = []
    loop = asyncio.get_running_loop()

    async def write_for(seconds: float) -> None:
        deadline = loop.time() + seconds
        while loop.time() < deadline:
            for number, container in enumerate(containers):
                lines = [f"c{number} line {len(written) + i} " + "x" * 200 for i in range(20)]
                container.write(lines)
                written.extend(lines)
                if len(written) % 4000 < 40:
                    # Rotated files stay uncompressed for the minute, as with the kubelet's
                    # default 10 MiB files: compressing unread ones would lose their lines.
                    container.rotate(compress_older=False)
            await asyncio.sleep(0.05)

    try:
        await write_for(3)
        await loop.run_in_executor(None, own_node.stop)
        outage = asyncio.create_task(write_for(OUTAGE_SECONDS))
        await asyncio.sleep(OUTAGE_SECONDS / 2)
        assert sample(registry, "observer_elasticsearch_unavailable_seconds") > 0
        assert sample(registry, "observer_sink_backpressure", sink="elasticsearch") == 1
        read_while_blocked = sample(registry, "observer_log_lines_read_total")
        await outage
        assert sample(registry, "observer_log_lines_read_total") == read_while_blocked
        await loop.run_in_executor(None, own_node.restart)
        await write_for(3)
        async with asyncio.timeout(120):
            while await loop.run_in_executor(None, count, own_node) < len(written):
                await asyncio.sleep(1)
    finally:
        stop.set()
        await asyncio.wait_for(agent, 30)

    messages = stored_messages(own_node)
    assert len(messages) == len(written)
    assert set(messages) == set(written)
    assert sample(registry, "observer_elasticsearch_unavailable_seconds") == 0
    assert sample(registry, "observer_log_bytes_lost_to_rotation_total") == 0
    assert sample(registry, "observer_sink_blocked_seconds_total", sink="elasticsearch") > 10


@pytest.mark.parametrize(
    "own_node",
    [{"thread_pool.write.size": "1", "thread_pool.write.queue_size": "1"}],
    indirect=True,
)
async def test_an_overloaded_node_gets_only_its_rejected_items_again(
    tmp_path: Path, own_node: Node, tree: PodLogTree
) -> None:
    """A node with a one-slot write queue answers 429s: those items alone are re-sent, all arrive once."""
    containers = [tree.container("shop", f"web-{i}", "app") for i in range(8)]
    written = []
    for number, container in enumerate(containers):
        lines = [f"c{number} line {i}" for i in range(5000)]
        container.write(lines)
        written += lines
    config = agent_config(
        tmp_path,
        own_node,
        bulk={"max_documents": 500, "max_in_flight": 4},
        setup={"number_of_replicas": 0, "number_of_shards": 4},
    )
    registry = CollectorRegistry()
    await app.run(config, once=True, registry=registry)

    retried = sample(
        registry, "observer_elasticsearch_items_total", outcome="retried", status="429"
    )
    assert retried > 0, "the node never rejected an item: the test did not overload it"
    # Items already stored were never sent again: a re-sent one would be answered 409.
    assert (
        sample(registry, "observer_elasticsearch_items_total", outcome="duplicate", status="409")
        == 0
    )
    created = sample(
        registry, "observer_elasticsearch_items_total", outcome="created", status="201"
    )
    assert created == len(written)
    messages = stored_messages(own_node)
    assert len(messages) == len(written)
    assert set(messages) == set(written)
