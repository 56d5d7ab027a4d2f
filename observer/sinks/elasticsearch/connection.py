"""The connection to Elasticsearch that both deployables use.

The official 8.x client's transport (elastic_transport) carries it: node failover across
the configured hosts, TLS, authentication. Retrying is not left to it: the sinks retry
per item and know which outcomes are safe to retry.

The agent's sink needs only `_bulk` and a few setup requests, so it takes the transport
alone (`transport`): the client's generated API is 7 MB of an agent's memory. The
collector's store and the tests use the whole client (`connect`), over the same nodes.
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from elastic_transport import (
    AsyncTransport,
    NdjsonSerializer,
    NodeConfig,
    OrjsonSerializer,
    Serializer,
)
from elastic_transport.client_utils import url_to_node_config

from observer.config import ElasticsearchConfig

if TYPE_CHECKING:
    from elasticsearch import AsyncElasticsearch

USER_AGENT = "observer"

_RETRIES: dict[str, Any] = {
    # The transport retries nothing: the sinks do, after their backoff, and each attempt
    # goes to the next live host (the pool rests a node that failed or answered 429/5xx).
    "max_retries": 0,
    "retry_on_timeout": True,
    "retry_on_status": (502, 503, 504),
}


def transport(settings: ElasticsearchConfig) -> AsyncTransport:
    """The transport for every configured host, authenticated the one way the config
    allows; request bodies are sent as given (the sink gzips them itself)."""
    return AsyncTransport(
        nodes(settings, compress_requests=False),
        node_class="aiohttp",
        serializers=_serializers(),
        **_RETRIES,
    )


def connect(settings: ElasticsearchConfig, compress_requests: bool = True) -> AsyncElasticsearch:
    """The official client over the same nodes as `transport`.

    `compress_requests=False` is for callers that gzip bodies themselves: the client's
    own compression uses gzip's slowest level.
    """
    from elasticsearch import AsyncElasticsearch

    return AsyncElasticsearch(
        hosts=nodes(settings, compress_requests), serializers=_serializers(), **_RETRIES
    )


class RefusedError(Exception):
    """Elasticsearch answered a request with an error status."""

    def __init__(self, status: int, body: object, headers: Mapping[str, str]) -> None:
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            detail = f"{error.get('type', 'unknown')}: {error.get('reason', '')}"
        else:
            detail = str(error if error is not None else body)
        super().__init__(f"{status} {detail}"[:500])
        self.status = status
        self.headers = headers


JSON_HEADERS = {
    "accept": "application/vnd.elasticsearch+json; compatible-with=8",
    "content-type": "application/vnd.elasticsearch+json; compatible-with=8",
}


async def request(connection: AsyncTransport, method: str, target: str, body: object = None) -> Any:
    """A JSON request's answer; RefusedError for an error status."""
    response = await connection.perform_request(method, target, body=body, headers=JSON_HEADERS)
    if not 200 <= response.meta.status < 300:
        raise RefusedError(response.meta.status, response.body, response.meta.headers)
    return response.body


def nodes(settings: ElasticsearchConfig, compress_requests: bool) -> list[NodeConfig]:
    headers = {"user-agent": USER_AGENT}
    if settings.api_key is not None:
        headers["authorization"] = f"ApiKey {settings.api_key}"
    elif settings.username is not None and settings.password is not None:
        pair = f"{settings.username}:{settings.password}".encode()
        headers["authorization"] = f"Basic {base64.b64encode(pair).decode()}"
    https = [host.startswith("https:") for host in settings.hosts]
    context = _tls_context(settings) if any(https) else None
    return [
        url_to_node_config(host, use_default_ports_for_scheme=True).replace(
            headers=headers,
            request_timeout=settings.request_timeout,
            http_compress=compress_requests,
            ssl_context=context if is_https else None,
        )
        for host, is_https in zip(settings.hosts, https, strict=True)
    ]


def _tls_context(settings: ElasticsearchConfig) -> ssl.SSLContext:
    tls = settings.tls
    context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    if tls.cert_file is not None and tls.key_file is not None:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _serializers() -> dict[str, Serializer]:
    orjson_serializer = OrjsonSerializer()
    return {
        "application/json": orjson_serializer,
        "application/vnd.elasticsearch+json": orjson_serializer,
        "application/vnd.elasticsearch+x-ndjson": NdjsonSerializer(),
    }
