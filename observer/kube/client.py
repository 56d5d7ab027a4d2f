"""One authenticated connection to the Kubernetes API server, speaking raw JSON.

lightkube loads the credentials (a kubeconfig file with certificates, tokens or exec
plugins, or the pod's service account) and builds the HTTP client. Objects stay plain
dicts decoded once with orjson: the caches need a handful of fields of each pod, and typed
models would cost more CPU and memory per object than the agent can spare on a big node.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import httpx2 as httpx
import orjson
from lightkube.config import client_adapter
from lightkube.config.kubeconfig import KubeConfig

from observer.config import KubernetesConfig

JsonObject = dict[str, Any]


class ApiStatusError(Exception):
    """The API server answered with a failure Status (HTTP error, or an ERROR watch event)."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"{code} {reason}: {message}")

    @classmethod
    def from_status(cls, status: Mapping[str, Any], default_code: int = 0) -> ApiStatusError:
        return cls(
            int(status.get("code") or default_code),
            str(status.get("reason", "")),
            str(status.get("message", "")),
        )


class KubeApi:
    """GET, list and watch on API paths, with a count of requests by verb for our metrics."""

    def __init__(self, http: httpx.AsyncClient, watch_timeout: float = 300.0) -> None:
        self.http = http
        self.watch_timeout = watch_timeout
        self.requests_by_verb: collections.Counter[str] = collections.Counter()

    @classmethod
    def connect(cls, settings: KubernetesConfig) -> KubeApi:
        if settings.kubeconfig is not None:
            loaded = KubeConfig.from_file(settings.kubeconfig)
        else:
            loaded = KubeConfig.from_service_account()
        single = loaded.get(context_name=settings.context)
        if single is None:
            raise ValueError(f"kubeconfig has no context {settings.context!r}")
        params = client_adapter.ConnectionParams(timeout=httpx.Timeout(30.0))
        return cls(client_adapter.AsyncClient(single, params))

    async def close(self) -> None:
        await self.http.aclose()

    async def request(
        self,
        verb: str,
        method: str,
        path: str,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> JsonObject:
        self.requests_by_verb[verb] += 1
        content = None if body is None else orjson.dumps(body)
        headers = {"Content-Type": content_type} if content is not None else None
        response = await self.http.request(
            method, path, params=params, content=content, headers=headers
        )
        payload = orjson.loads(response.content) if response.content else {}
        if response.status_code >= 400:
            raise ApiStatusError.from_status(payload, response.status_code)
        result: JsonObject = payload
        return result

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> JsonObject:
        return await self.request("get", "GET", path, params)

    async def list(self, path: str, params: Mapping[str, str] | None = None) -> JsonObject:
        return await self.request("list", "GET", path, params)

    async def watch(
        self, path: str, params: Mapping[str, str], opened: Callable[[], None] | None = None
    ) -> AsyncIterator[tuple[str, JsonObject]]:
        """Yield (type, object) watch events until the server ends the stream; `opened` is
        called once the server has accepted the watch (events may be minutes away).

        An ERROR event (for instance 410 Gone when the resourceVersion was compacted away)
        raises ApiStatusError; the caller decides whether to relist.
        """
        self.requests_by_verb["watch"] += 1
        query = {**params, "watch": "1", "timeoutSeconds": str(int(self.watch_timeout))}
        timeout = httpx.Timeout(30.0, read=self.watch_timeout + 30.0)
        async with self.http.stream("GET", path, params=query, timeout=timeout) as response:
            if response.status_code >= 400:
                body = await response.aread()
                status = orjson.loads(body) if body.startswith(b"{") else {}
                raise ApiStatusError.from_status(status, response.status_code)
            if opened is not None:
                opened()
            async for line in response.aiter_lines():
                if not line:
                    continue
                event = orjson.loads(line)
                if event["type"] == "ERROR":
                    raise ApiStatusError.from_status(event["object"])
                yield event["type"], event["object"]
