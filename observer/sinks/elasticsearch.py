"""Elasticsearch: the connection both deployables use to write documents.

The official 8.x client carries the transport (node failover, TLS, auth, compression);
observer adds what a pipeline needs on top of it as the sink grows.
"""

from __future__ import annotations

import ssl
from typing import Any

from elasticsearch import AsyncElasticsearch

from observer.config import ElasticsearchConfig


def connect(settings: ElasticsearchConfig) -> AsyncElasticsearch:
    """A client for every configured host, authenticated the one way the config allows."""
    options: dict[str, Any] = {
        "hosts": list(settings.hosts),
        "request_timeout": settings.request_timeout,
        "http_compress": True,
        # Failover between hosts is the client's; retrying items is the sink's job.
        "retry_on_timeout": True,
        "max_retries": 0,
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
