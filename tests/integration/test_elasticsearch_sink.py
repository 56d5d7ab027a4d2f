"""The agent's Elasticsearch sink against the real node: exactly once, dead letters, setup."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from observer.agent import app
from observer.agent.checkpoint import STATE_FILE
from observer.config import AgentConfig, ElasticsearchSinkConfig
from observer.sinks.elasticsearch.setup import ilm_policy, index_templates
from observer.testing import PodLogTree
from tests.services.elasticsearch import Node, check_lifecycle_policy
from tests.services.process import free_port

LOGS = "logs-kubernetes.container-default"
DEAD_LETTERS = "logs-observer.dead_letter-default"


def agent_config(tmp_path: Path, es: Node, **elasticsearch: Any) -> AgentConfig:
    return AgentConfig.model_validate(
        {
            "node_name": "node-a",
            "state_dir": str(tmp_path / "state"),
            "sources": {"pod_logs": {"root": str(tmp_path / "pods"), "max_line_bytes": "64KiB"}},
            "sinks": {
                "file": {"path": str(tmp_path / "out.jsonl")},
                "elasticsearch": {
                    "hosts": [es.url],
                    "setup": {"number_of_replicas": 0},
                    **elasticsearch,
                },
            },
        }
    )


def stored(es: Node, index: str) -> list[dict[str, Any]]:
    """Every document of a data stream, with its _id, in a stable order."""
    es.request("POST", f"/{index}/_refresh")
    response = es.request(
        "POST",
        f"/{index}/_search",
        {
            "size": 10000,
            "sort": [{"log.offset": "asc"}, {"_doc": "asc"}],
            "seq_no_primary_term": False,
        },
    )
    return response["hits"]["hits"]


def install_strict_templates(es: Node) -> None:
    """Observer's templates as a cluster managed elsewhere might edit them: json.status is a long."""
    settings = ElasticsearchSinkConfig(hosts=[es.url])
    for name, body in index_templates(settings, lifecycle=None).items():
        if "observer.dead_letter" not in name:
            body["template"]["mappings"] = dict(body["template"]["mappings"])
            body["template"]["mappings"]["properties"] = {
                **body["template"]["mappings"]["properties"],
                "json": {"properties": {"status": {"type": "long"}}},
            }
        es.request("PUT", f"/_index_template/{name}", body)


def file_sink_documents(tmp_path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (tmp_path / "out.jsonl").read_bytes().splitlines()]


def edge_cases(tree: PodLogTree) -> None:
    """One file per kind of trouble the collection issue names."""
    web = tree.container("shop", "web-1", "app")
    web.write(["plain text", "x" * 40_000])  # a 16 KiB-split line
    web.write_interleaved("o" * 20_000, "e" * 20_000)  # partials of both streams interleaved
    web.write(['{"level":"WARN","msg":"slow","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736"}'])
    web.write_raw(b"2026-11-21T10:00:00.123456789Z stdout F caf\xc3\xa9 \xff\xfe\n")
    web.write_raw(b"this is not a CRI line\n")
    web.write(["y" * 70_000])  # longer than max_line_bytes: truncated and marked
    web.rotate()
    web.write(["after rotation"])
    web.restart_container()
    web.write(["after restart"])
    docker = tree.container("kube-system", "dns-1", "dns")
    docker.write_raw(
        b'{"log":"emoji \\ud83d\\ude00 and \\"quotes\\"\\n","stream":"stderr","time":"2026-11-21T10:00:01.000000001Z"}\n'
        b'{"log":"split ","stream":"stdout","time":"2026-11-21T10:00:02Z"}\n'
        b'{"log":"line\\n","stream":"stdout","time":"2026-11-21T10:00:03Z"}\n'
    )


async def test_every_document_is_stored_once_with_its_fields(
    tmp_path: Path, es: Node, tree: PodLogTree
) -> None:
    """`agent --once` over every edge case: Elasticsearch holds exactly the documents the file sink wrote."""
    edge_cases(tree)
    config = agent_config(tmp_path, es)
    await app.run(config, once=True)

    expected = file_sink_documents(tmp_path)
    hits = stored(es, LOGS)
    assert len(hits) == len(expected) == 12
    by_content = {orjson.dumps(hit["_source"], option=orjson.OPT_SORT_KEYS) for hit in hits}
    assert by_content == {orjson.dumps(doc, option=orjson.OPT_SORT_KEYS) for doc in expected}
    assert len({hit["_id"] for hit in hits}) == len(hits)

    nanos = es.request(
        "POST",
        f"/{LOGS}/_search",
        {
            "query": {"match_phrase": {"message": "café"}},
            "fields": [{"field": "@timestamp", "format": "strict_date_optional_time_nanos"}],
        },
    )["hits"]["hits"]
    assert nanos[0]["fields"]["@timestamp"] == ["2026-11-21T10:00:00.123456789Z"]
    warn = [hit["_source"] for hit in hits if hit["_source"].get("log", {}).get("level")]
    assert warn[0]["trace"]["id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert warn[0]["data_stream"] == {
        "type": "logs",
        "dataset": "kubernetes.container",
        "namespace": "default",
    }
    malformed = [hit["_source"] for hit in hits if "error" in hit["_source"]]
    assert [doc["message"] for doc in malformed] == ["this is not a CRI line"]

    # A second run over the same files (no checkpoints: a lost state directory) stores nothing new.
    (tmp_path / "state" / STATE_FILE).unlink()
    await app.run(config, once=True)
    assert len(stored(es, LOGS)) == len(expected)


async def test_a_refused_document_goes_to_the_dead_letter_store_and_the_checkpoint_moves_on(
    tmp_path: Path, es: Node, tree: PodLogTree
) -> None:
    """1 line in 500 conflicts with the cluster's mapping: 499 stored, 1 dead-lettered, none retried."""
    install_strict_templates(es)
    web = tree.container("shop", "web-1", "app")
    lines = [
        json.dumps({"msg": f"request {i}", "status": "teapot" if i == 250 else 200})
        for i in range(500)
    ]
    web.write(lines)

    config = agent_config(tmp_path, es, setup={"enabled": False})
    stats = await run_with_metrics(config)

    documents = stored(es, LOGS)
    assert len(documents) == 499
    assert "request 250" not in {hit["_source"]["message"] for hit in documents}
    (letter,) = [hit["_source"] for hit in stored(es, DEAD_LETTERS)]
    assert letter["error"]["type"] in ("document_parsing_exception", "mapper_parsing_exception")
    assert "json.status" in letter["error"]["message"]
    assert json.loads(letter["event"]["original"])["message"] == "request 250"
    assert letter["observer"]["target"] == LOGS
    assert stats.get('observer_elasticsearch_items_total{outcome="retried"', 0) == 0
    assert (
        stats[
            'observer_records_dead_lettered_total{reason="document_parsing_exception",store="elasticsearch"}'
        ]
        == 1
    )
    state = json.loads((tmp_path / "state" / STATE_FILE).read_text())
    (checkpoint,) = state["files"].values()
    assert checkpoint["offset"] == web.path.stat().st_size


async def run_with_metrics(config: AgentConfig) -> dict[str, float]:
    """Run `--once`; return the agent's samples by name and labels, and summed by first label."""
    registry = CollectorRegistry()
    await app.run(config, once=True, registry=registry)
    samples: dict[str, float] = {}
    for metric in registry.collect():
        for sample in metric.samples:
            labels = [f'{k}="{v}"' for k, v in sample.labels.items()]
            samples[f"{sample.name}{{{','.join(labels)}}}"] = sample.value
            if labels:
                first = f"{sample.name}{{{labels[0]}"
                samples[first] = samples.get(first, 0) + sample.value
    return samples


@pytest.mark.parametrize(
    "ilm",
    [
        {},
        {
            "rollover_max_primary_shard_size": "10GiB",
            "rollover_max_age": "6h",
            "delete_after": "30d",
        },
    ],
)
def test_the_ilm_policy_is_one_elasticsearch_accepts_and_rolls_over_then_deletes(
    ilm: dict[str, str],
) -> None:
    """No test node can run ILM (its module is not published as a jar), so the policy the
    agent PUTs is checked by Elasticsearch's own ILM classes: parsed as the REST layer
    parses it, validated, and turned into the steps ILM would run."""
    settings = ElasticsearchSinkConfig.model_validate(
        {"hosts": ["http://127.0.0.1:9200"], "setup": {"ilm": ilm}}
    )
    body = {"policy": ilm_policy(settings)}

    check = check_lifecycle_policy(settings.setup.ilm.name, body)

    assert check.valid, check.reason
    assert "hot/rollover/check-rollover-ready" in check.steps
    assert "hot/rollover/attempt-rollover" in check.steps
    assert check.steps.index("hot/rollover/attempt-rollover") < check.steps.index(
        "delete/delete/delete"
    )
    rollover = body["policy"]["phases"]["hot"]["actions"]["rollover"]
    assert rollover["max_age"] == f"{int(settings.setup.ilm.rollover_max_age)}s"
    assert body["policy"]["phases"]["delete"]["min_age"] == (
        f"{int(settings.setup.ilm.delete_after)}s"
    )


def test_the_ilm_policy_check_refuses_what_elasticsearch_would_refuse() -> None:
    """The check above can fail: a misspelt condition and a delete in the hot phase are
    refused with Elasticsearch's own reasons."""
    misspelt = check_lifecycle_policy(
        "p", {"policy": {"phases": {"hot": {"actions": {"rollover": {"max_agee": "1d"}}}}}}
    )
    misplaced = check_lifecycle_policy(
        "p", {"policy": {"phases": {"hot": {"actions": {"delete": {}}}}}}
    )

    assert not misspelt.valid
    assert "unknown field [max_agee]" in misspelt.reason
    assert not misplaced.valid
    assert "invalid action [delete] defined in phase [hot]" in misplaced.reason


async def test_setup_installs_templates_once_and_survives_a_cluster_without_ilm(
    tmp_path: Path, es: Node, tree: PodLogTree, caplog: pytest.LogCaptureFixture
) -> None:
    """Templates are installed at start and left alone when current; missing ILM is a warning."""
    tree.container("shop", "web-1", "app").write(["hello"])
    config = agent_config(tmp_path, es)
    await app.run(config, once=True)

    templates = {
        t["name"]: t["index_template"]
        for t in es.request("GET", "/_index_template")["index_templates"]
    }
    logs = templates["observer-logs-kubernetes.container"]
    assert logs["index_patterns"] == ["logs-kubernetes.container-*"]
    assert logs["template"]["mappings"]["properties"]["@timestamp"] == {"type": "date_nanos"}
    assert "observer-logs-observer.dead_letter" in templates
    assert "no index lifecycle management" in caplog.text
    mapping = es.request("GET", f"/{LOGS}/_mapping")
    (backing,) = mapping.values()
    assert backing["mappings"]["properties"]["json"]["type"] == "flattened"

    # An operator's edit under the same template version is kept.
    logs["template"]["settings"]["index"]["refresh_interval"] = "5s"
    es.request("PUT", "/_index_template/observer-logs-kubernetes.container", logs)
    await app.run(config, once=True)
    again = es.request("GET", "/_index_template/observer-logs-kubernetes.container")
    assert (
        again["index_templates"][0]["index_template"]["template"]["settings"]["index"][
            "refresh_interval"
        ]
        == "5s"
    )


async def test_documents_are_routed_to_a_data_stream_per_namespace(
    tmp_path: Path, es: Node, tree: PodLogTree
) -> None:
    """namespace_from: kubernetes.namespace sends each namespace's lines to its own data stream."""
    tree.container("shop", "web-1", "app").write(["from shop"])
    tree.container("kube-system", "dns-1", "dns").write(["from kube-system"])
    config = agent_config(tmp_path, es, data_stream={"namespace_from": "kubernetes.namespace"})
    await app.run(config, once=True)

    assert [h["_source"]["message"] for h in stored(es, "logs-kubernetes.container-shop")] == [
        "from shop"
    ]
    kube_system = stored(es, "logs-kubernetes.container-kube_system")
    assert [h["_source"]["data_stream"]["namespace"] for h in kube_system] == ["kube_system"]


async def test_a_dead_host_in_the_list_fails_over_to_a_live_one(
    tmp_path: Path, es: Node, tree: PodLogTree
) -> None:
    """With the first configured host refusing connections, every document still arrives once."""
    tree.container("shop", "web-1", "app").write([f"line {i}" for i in range(2000)])
    config = agent_config(
        tmp_path,
        es,
        hosts=[f"http://127.0.0.1:{free_port()}", es.url],
        retry={"initial_backoff": "10ms", "max_backoff": "200ms"},
        bulk={"max_documents": 100},
    )
    await app.run(config, once=True)

    assert sorted(hit["_source"]["message"] for hit in stored(es, LOGS)) == sorted(
        f"line {i}" for i in range(2000)
    )


async def test_values_longer_than_a_lucene_term_are_stored(
    tmp_path: Path, es: Node, tree: PodLogTree
) -> None:
    """A 40 KB JSON value (past Lucene's 32 KB term limit) is stored, not refused."""
    web = tree.container("shop", "web-1", "app")
    web.write([json.dumps({"msg": "big", "payload": "p" * 40_000})])
    await app.run(agent_config(tmp_path, es), once=True)

    (document,) = [hit["_source"] for hit in stored(es, LOGS)]
    assert document["json"]["payload"] == "p" * 40_000


async def test_a_refused_document_of_any_size_fits_the_dead_letter_stream(
    tmp_path: Path, es: Node, tree: PodLogTree
) -> None:
    """A refused 50 KB document (past the 32 KB term limit) is kept in the dead-letter data stream, not the local file."""
    install_strict_templates(es)
    tree.container("shop", "web-1", "app").write(
        [json.dumps({"msg": "huge", "status": "teapot", "pad": "q" * 50_000})]
    )
    await app.run(agent_config(tmp_path, es, setup={"enabled": False}), once=True)

    (letter,) = [hit["_source"] for hit in stored(es, DEAD_LETTERS)]
    assert len(letter["event"]["original"]) > 50_000
    assert not (tmp_path / "state" / "dead-letter.jsonl").exists()
