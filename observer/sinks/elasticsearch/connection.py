"""The connection to Elasticsearch that both deployables use.

The official 8.x client carries the transport: node failover across the configured hosts,
TLS, authentication. Retrying is not left to it: the sink retries per item and knows
which outcomes are safe to retry.
"""

from __future__ import annotations

import ssl
from typing import Any

from elasticsearch import AsyncElasticsearch
from elasticsearch.serializer import JsonSerializer, OrjsonSerializer

from observer.config import ElasticsearchConfig


def connect(settings: ElasticsearchConfig, compress_requests: bool = True) -> AsyncElasticsearch:
    """A client for every configured host, authenticated the one way the config allows.

    `compress_requests=False` is for callers that gzip bodies themselves: the client's
    own compression uses gzip's slowest level.
    """
    orjson_serializer: JsonSerializer = OrjsonSerializer()
    options: dict[str, Any] = {
        "hosts": list(settings.hosts),
        "request_timeout": settings.request_timeout,
        "http_compress": compress_requests,
        "retry_on_timeout": True,
        "max_retries": 0,
        # A 429 is the cluster pacing us, not a node failing: no failover, no dead node.
        "retry_on_status": (502, 503, 504),
        "serializers": {
            "application/json": orjson_serializer,
            "application/vnd.elasticsearch+json": orjson_serializer,
        },
    }
    if settings.api_key is not None:
        options["api_key"] = settings.api_key
    elif settings.username is not None and settings.password is not None:
        options["basic_auth"] = (settings.username, settings.password)
    if any(host.startswith("https:") for host in settings.hosts):
        context = ssl.create_default_context(
            cafile=str(settings.tls.ca_file) if settings.tls.ca_file else None
        )
        if settings.tls.cert_file is not None and settings.tls.key_file is not None:
            context.load_cert_chain(settings.tls.cert_file, settings.tls.key_file)
        if not settings.tls.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        options["ssl_context"] = context
    return AsyncElasticsearch(**options)
