"""What the log sink installs in Elasticsearch before its first write, idempotently.

- An ILM policy (rollover, then delete after the retention), when the cluster has ILM.
- An index template per target: the log data streams ``<type>-<dataset>-*`` with ECS
  mappings compatible with Filebeat's Kubernetes fields (``@timestamp`` as ``date_nanos``
  so nanoseconds are kept), and the dead-letter data stream, mapped loosely so that it
  accepts any refused document.

A template is written only when it is missing or was written by another version of
observer (``_meta.version``); one edited by hand under the same version is left alone.
Data streams are created by the first write, as Beats and Elastic Agent rely on too.
"""

from __future__ import annotations

import logging
from typing import Any

from elastic_transport import AsyncTransport

from observer.config import ElasticsearchSinkConfig
from observer.sinks.elasticsearch.connection import RefusedError, request

log = logging.getLogger(__name__)

TEMPLATE_VERSION = 3
"""Bump when a mapping below changes, so that running agents replace the template."""

_KEYWORD = {"type": "keyword", "ignore_above": 1024}

LOG_MAPPINGS: dict[str, Any] = {
    "dynamic_templates": [
        # Filebeat's add_kubernetes_metadata fields: labels and annotations are keywords.
        {"kubernetes_labels": {"path_match": "kubernetes.labels.*", "mapping": _KEYWORD}},
        {
            "kubernetes_annotations": {
                "path_match": "kubernetes.annotations.*",
                "mapping": _KEYWORD,
            }
        },
        {
            "kubernetes_namespace_labels": {
                "path_match": "kubernetes.namespace_labels.*",
                "mapping": _KEYWORD,
            }
        },
        {"strings_as_keyword": {"match_mapping_type": "string", "mapping": _KEYWORD}},
    ],
    "properties": {
        "@timestamp": {"type": "date_nanos"},
        "message": {"type": "text"},
        "stream": {"type": "keyword"},
        "data_stream": {
            "properties": {
                "type": {"type": "keyword"},
                "dataset": {"type": "keyword"},
                "namespace": {"type": "keyword"},
            }
        },
        "log": {
            "properties": {
                "file": {"properties": {"path": {"type": "keyword"}}},
                "offset": {"type": "long"},
                "level": {"type": "keyword"},
                "flags": {"type": "keyword"},
            }
        },
        "kubernetes": {
            "properties": {
                "namespace": {"type": "keyword"},
                "node": {"properties": {"name": {"type": "keyword"}}},
                "pod": {
                    "properties": {
                        "name": {"type": "keyword"},
                        "uid": {"type": "keyword"},
                        "ip": {"type": "ip"},
                    }
                },
                "container": {"properties": {"name": {"type": "keyword"}}},
                # Elastic's kubernetes.event field names; the other strings are keywords.
                "event": {
                    "properties": {
                        "count": {"type": "long"},
                        "timestamp": {
                            "properties": {
                                "first_occurrence": {"type": "date"},
                                "last_occurrence": {"type": "date"},
                            }
                        },
                    }
                },
            }
        },
        "container": {
            "properties": {
                "id": {"type": "keyword"},
                "restart_count": {"type": "long"},
                "image": {"properties": {"name": {"type": "keyword"}}},
            }
        },
        "trace": {"properties": {"id": {"type": "keyword"}}},
        "span": {"properties": {"id": {"type": "keyword"}}},
        "error": {"properties": {"message": {"type": "text"}}},
        # Records of the kubelet's Events (the kubernetes.event dataset, observer/agent/events.py).
        "event": {
            "properties": {
                "id": {"type": "keyword"},
                "kind": {"type": "keyword"},
                "provider": {"type": "keyword"},
                "reason": {"type": "keyword"},
                "action": {"type": "keyword"},
            }
        },
        "probe": {
            "properties": {
                "kind": {"type": "keyword"},
                "result": {"type": "keyword"},
                "type": {"type": "keyword"},
            }
        },
        "http": {"properties": {"response": {"properties": {"status_code": {"type": "long"}}}}},
        "process": {
            "properties": {
                "exit_code": {"type": "long"},
                "name": {"type": "keyword"},
                "pid": {"type": "long"},
            }
        },
        # Keys of structured bodies are the application's: one field, never a mapping
        # conflict or a mapping explosion.
        # ignore_above: a value past Lucene's 32 KB term limit is kept in _source, unindexed,
        # rather than refusing the whole document.
        "json": {"type": "flattened", "ignore_above": 8191},
    },
}

DEAD_LETTER_MAPPINGS: dict[str, Any] = {
    "dynamic": False,
    "properties": {
        "@timestamp": {"type": "date_nanos"},
        "message": {"type": "text"},
        "error": {
            "properties": {
                "type": {"type": "keyword"},
                "message": {"type": "text"},
                "code": {"type": "keyword"},
            }
        },
        # Stored, never indexed: a refused document of any size must fit (ECS does the same).
        "event": {
            "properties": {"original": {"type": "keyword", "index": False, "doc_values": False}}
        },
        "observer": {
            "properties": {
                "target": {"type": "keyword"},
                "document_id": {"type": "keyword"},
            }
        },
        "log": {
            "properties": {
                "file": {"properties": {"path": {"type": "keyword"}}},
                "offset": {"type": "long"},
            }
        },
    },
}


def log_data_stream_pattern(settings: ElasticsearchSinkConfig) -> str:
    return f"{settings.data_stream.type}-{settings.data_stream.dataset}-*"


def ilm_policy(settings: ElasticsearchSinkConfig) -> dict[str, Any]:
    ilm = settings.setup.ilm
    return {
        "phases": {
            "hot": {
                "actions": {
                    "rollover": {
                        "max_primary_shard_size": f"{ilm.rollover_max_primary_shard_size}b",
                        "max_age": f"{int(ilm.rollover_max_age)}s",
                    }
                }
            },
            "delete": {"min_age": f"{int(ilm.delete_after)}s", "actions": {"delete": {}}},
        },
        "_meta": {"managed_by": "observer"},
    }


def index_templates(
    settings: ElasticsearchSinkConfig, lifecycle: str | None
) -> dict[str, dict[str, Any]]:
    """Template name → body, for the log data streams and the dead-letter data stream."""
    index_settings: dict[str, Any] = {
        "number_of_shards": settings.setup.number_of_shards,
        "number_of_replicas": settings.setup.number_of_replicas,
    }
    if lifecycle is not None:
        index_settings["index.lifecycle.name"] = lifecycle
    meta = {"managed_by": "observer", "version": TEMPLATE_VERSION}
    dataset = settings.data_stream.dataset
    dead_letter = settings.dead_letter.data_stream
    return {
        f"observer-{settings.data_stream.type}-{dataset}": {
            "index_patterns": [log_data_stream_pattern(settings)],
            "data_stream": {},
            # Above the built-in logs-*-* template (priority 100) of a default cluster.
            "priority": 200,
            "template": {"settings": index_settings, "mappings": LOG_MAPPINGS},
            "_meta": meta,
        },
        f"observer-{dead_letter.rsplit('-', 1)[0]}": {
            "index_patterns": [f"{dead_letter.rsplit('-', 1)[0]}-*"],
            "data_stream": {},
            "priority": 210,
            "template": {"settings": index_settings, "mappings": DEAD_LETTER_MAPPINGS},
            "_meta": meta,
        },
    }


async def install(connection: AsyncTransport, settings: ElasticsearchSinkConfig) -> None:
    """Install the ILM policy and the index templates; raises what the caller should retry."""
    lifecycle = None
    if settings.setup.ilm.enabled:
        lifecycle = await _install_ilm_policy(connection, settings)
    for name, body in index_templates(settings, lifecycle).items():
        try:
            existing = await request(connection, "GET", f"/_index_template/{name}")
            current = existing["index_templates"][0]["index_template"]
            if current.get("_meta", {}).get("version") == TEMPLATE_VERSION:
                continue
        except RefusedError as error:
            if error.status != 404:
                raise
        await request(connection, "PUT", f"/_index_template/{name}", body)
        log.info("Installed an index template.", extra={"template": name})


async def _install_ilm_policy(
    connection: AsyncTransport, settings: ElasticsearchSinkConfig
) -> str | None:
    name = settings.setup.ilm.name
    try:
        await request(connection, "PUT", f"/_ilm/policy/{name}", {"policy": ilm_policy(settings)})
    except RefusedError as error:
        if error.status in (404, 405, 410) or (
            error.status == 400 and "no handler found" in str(error)
        ):
            # Clusters without ILM: OpenSearch, serverless, or a node without the x-pack
            # ILM module. Their data streams are kept without a lifecycle; retention is theirs.
            log.warning(
                "This Elasticsearch has no index lifecycle management; the data streams get "
                "no ILM policy, so retention must be managed on the cluster. Set "
                "sinks.elasticsearch.setup.ilm.enabled: false to silence this.",
                extra={"status": error.status, "error": str(error)},
            )
            return None
        if error.status == 400:
            # ILM is there and refused this policy (settings it does not accept): logs
            # still flow, without a lifecycle, and the reason is said.
            log.error(
                "Elasticsearch refused the ILM policy; the data streams get none, so "
                "nothing is rolled over or deleted until sinks.elasticsearch.setup.ilm "
                "is corrected.",
                extra={"policy": name, "status": error.status, "error": str(error)},
            )
            return None
        raise
    return name
