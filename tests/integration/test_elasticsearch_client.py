"""The project's Elasticsearch connection against the real node."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from elasticsearch import AsyncElasticsearch, ConflictError

from observer.config import ElasticsearchConfig
from observer.sinks.elasticsearch import connect
from tests.services.elasticsearch import Node

TEMPLATE = {
    "index_patterns": ["logs-smoke-*"],
    "data_stream": {},
    "priority": 200,
    "template": {
        "mappings": {
            "properties": {
                "@timestamp": {"type": "date_nanos"},
                "message": {"type": "text"},
                "kubernetes": {"properties": {"namespace": {"type": "keyword"}}},
            }
        }
    },
}


@pytest.fixture
async def client(es: Node) -> AsyncIterator[AsyncElasticsearch]:
    connection = connect(ElasticsearchConfig(hosts=[es.url]))
    yield connection
    await connection.close()


async def test_document_created_in_a_data_stream_is_found(client: AsyncElasticsearch) -> None:
    """A document created with an explicit _id in a data stream is found by search, nanoseconds kept."""
    await client.indices.put_index_template(name="logs-smoke", **TEMPLATE)
    document = {
        "@timestamp": "2026-11-21T22:31:12.123456789Z",
        "message": "connection refused",
        "kubernetes": {"namespace": "shop"},
    }
    created = await client.create(
        index="logs-smoke-default", id="file-1:0", document=document, refresh=True
    )
    assert created["result"] == "created"

    found = await client.search(
        index="logs-smoke-default", query={"term": {"kubernetes.namespace": "shop"}}
    )

    (hit,) = found["hits"]["hits"]
    assert hit["_id"] == "file-1:0"
    assert hit["_source"]["@timestamp"] == "2026-11-21T22:31:12.123456789Z"


async def test_creating_the_same_id_twice_is_a_conflict(client: AsyncElasticsearch) -> None:
    """op_type=create of an _id that exists answers 409: the basis of idempotent delivery."""
    await client.indices.put_index_template(name="logs-smoke", **TEMPLATE)
    document = {"@timestamp": "2026-11-21T00:00:00Z", "message": "once"}
    await client.create(index="logs-smoke-default", id="same", document=document)
    with pytest.raises(ConflictError):
        await client.create(index="logs-smoke-default", id="same", document=document)


async def test_harness_cleans_what_a_test_wrote(client: AsyncElasticsearch, es: Node) -> None:
    """The fixture's clean-up removes a test's data streams, indices and templates."""
    await client.indices.put_index_template(name="logs-smoke", **TEMPLATE)
    await client.create(
        index="logs-smoke-default", id="x", document={"@timestamp": "2026-01-01T00:00:00Z"}
    )
    await client.index(index="plain-index", document={"a": 1})

    es.clean()

    assert not await client.indices.exists_index_template(name="logs-smoke")
    assert not await client.indices.exists(index="plain-index")
    assert not await client.indices.exists(index="logs-smoke-default")
