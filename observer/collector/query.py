"""The Jaeger-compatible query API: the HTTP JSON API that Jaeger's UI and Grafana's Jaeger
data source call, served from a `TraceStore`, so a user points either at the collector.

Endpoints and parameters are Jaeger's (jaegertracing/jaeger cmd/query/app/http_handler.go
and query_parser.go):

    GET /api/services
    GET /api/services/{service}/operations        names only (the UI's legacy call)
    GET /api/operations?service=&spanKind=        [{name, spanKind}]
    GET /api/traces?service=&operation=&tags=&tag=&minDuration=&maxDuration=&start=&end=
                   &limit=&lookback=&traceID=
    GET /api/traces/{traceID}
    GET /api/dependencies?endTs=&lookback=&service=

Every answer has Jaeger's envelope ``{"data", "total", "limit", "offset", "errors"}``;
`errors` is null unless something went wrong (Grafana reads any non-null `errors` as a
failure). Bad parameters get 400 and an unknown trace 404, with
``errors: [{"code", "msg"}]``. Times are microseconds (``start``, ``end``), milliseconds
(``endTs``, ``lookback`` of dependencies), durations Go's (``1.5s``, ``300ms``).

Traces are shaped as Jaeger's UI model (model/json): processes ``p1…``, CHILD_OF and
FOLLOWS_FROM references, typed tags, events as logs, microsecond times; observer adds
its findings as tags and warnings (`jaeger.py` says which).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from multidict import MultiMapping
from prometheus_client import CollectorRegistry, Counter

from observer.collector.jaeger import trace_to_jaeger
from observer.collector.model import SpanKind
from observer.collector.store import NS_PER_US, TraceQuery, TraceStore
from observer.telemetry import metric_name

log = logging.getLogger(__name__)

NS_PER_MS = 1_000_000
# Jaeger's defaults (cmd/query/app/default_params.go, query_parser.go).
DEFAULT_TRACE_LOOKBACK_NS = 2 * 86400 * 1_000_000_000
DEFAULT_DEPENDENCIES_LOOKBACK_NS = 86400 * 1_000_000_000
DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000
MAX_NS = 2**63 - 1
"""Times and durations are int64 nanoseconds in the stores, as in OTLP."""


class BadParameterError(ValueError):
    """A query parameter the API cannot use; the message is what the caller is told."""


# --- parameters ---------------------------------------------------------------------------

_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_GO_UNITS_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_TRACE_ID = re.compile(r"^[0-9a-fA-F]{1,32}$")


def parse_go_duration(text: str) -> int:
    """Nanoseconds of a Go duration string (time.ParseDuration): 300ms, 1.5s, 2h45m, 0."""
    if text == "0":
        return 0
    position = 0
    total = 0.0
    for match in _GO_DURATION.finditer(text):
        if match.start() != position:
            break
        total += float(match[1]) * _GO_UNITS_NS[match[2]]
        position = match.end()
    if position != len(text) or not text:
        raise ValueError(f"invalid duration {text!r}")
    if total > MAX_NS:
        raise ValueError(f"invalid duration {text!r}: too long")
    return int(total)


def parse_trace_id(text: str) -> str:
    """A trace id as stored: 32 lowercase hex digits; 64-bit ids are left-padded with zeros."""
    if not _TRACE_ID.match(text):
        raise BadParameterError(f"cannot parse traceID param: not 1 to 32 hex digits: {text!r}")
    return text.lower().rjust(32, "0")


def _integer(query: MultiMapping[str], name: str) -> int | None:
    text = query.get(name, "")
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise BadParameterError(
            f"unable to parse param '{name}': not an integer: {text!r}"
        ) from None


def _nanoseconds(query: MultiMapping[str], name: str, unit_ns: int) -> int | None:
    """A time or length given as an integer of `unit_ns`, in nanoseconds (stores use int64)."""
    value = _integer(query, name)
    if value is None:
        return None
    if not 0 <= value * unit_ns <= MAX_NS:
        raise BadParameterError(f"unable to parse param '{name}': out of range: {value}")
    return value * unit_ns


def _duration(query: MultiMapping[str], name: str) -> int | None:
    text = query.get(name, "")
    if text == "":
        return None
    try:
        value = parse_go_duration(text)
    except ValueError as error:
        raise BadParameterError(f"unable to parse param '{name}': {error}") from None
    return value


def _tags(query: MultiMapping[str]) -> dict[str, str]:
    """`tag=key:value` (repeatable) and `tags={"key":"value"}` (JSON), as Jaeger takes them."""
    tags: dict[str, str] = {}
    for pair in query.getall("tag", []):
        key, sep, value = pair.partition(":")
        if not sep:
            raise BadParameterError(
                f"malformed 'tag' parameter, expecting key:value, received: {pair}"
            )
        tags[key] = value
    for text in query.getall("tags", []):
        try:
            parsed = orjson.loads(text)
        except orjson.JSONDecodeError as error:
            raise BadParameterError(
                f"malformed 'tags' parameter, cannot unmarshal JSON: {error}"
            ) from None
        if not isinstance(parsed, dict):
            raise BadParameterError("malformed 'tags' parameter, expecting a JSON object")
        for key, value in parsed.items():
            if isinstance(value, bool):
                tags[key] = "true" if value else "false"
            elif isinstance(value, str | int | float):
                tags[key] = str(value)
            else:
                raise BadParameterError(
                    f"malformed 'tags' parameter, the value of {key!r} is not a string"
                )
    return tags


def trace_query(query: MultiMapping[str], now_ns: int) -> tuple[TraceQuery | None, list[str]]:
    """The search a /api/traces request asks for, or the trace ids it names."""
    trace_ids = [parse_trace_id(text) for text in query.getall("traceID", [])]
    service = query.get("service", "")
    if not service and not trace_ids:
        raise BadParameterError("parameter 'service' is required")
    end_ns = _nanoseconds(query, "end", NS_PER_US)
    if end_ns is None:
        end_ns = now_ns
    start_ns = _nanoseconds(query, "start", NS_PER_US)
    if start_ns is None:
        # Jaeger ignores `lookback` (its UI sends start and end too; Grafana sends
        # "custom"); a duration is honoured here when no start is given.
        try:
            start_ns = end_ns - parse_go_duration(query.get("lookback", ""))
        except ValueError:
            start_ns = end_ns - DEFAULT_TRACE_LOOKBACK_NS
    limit = _integer(query, "limit")
    if limit is None:
        limit = DEFAULT_LIMIT
    elif not 1 <= limit <= MAX_LIMIT:
        raise BadParameterError(f"unable to parse param 'limit': not within 1..{MAX_LIMIT}")
    min_duration = _duration(query, "minDuration")
    max_duration = _duration(query, "maxDuration")
    if min_duration and max_duration and max_duration < min_duration:
        raise BadParameterError("'maxDuration' should be greater than 'minDuration'")
    tags = _tags(query)
    if trace_ids:
        return None, trace_ids
    search = TraceQuery(
        service=service,
        operation=query.get("operation") or None,
        tags=tags,
        min_duration_ns=min_duration or None,
        max_duration_ns=max_duration or None,
        start_min_ns=start_ns,
        start_max_ns=end_ns,
        limit=limit,
    )
    return search, []


def _span_kind(query: MultiMapping[str]) -> SpanKind | None:
    text = query.get("spanKind", "")
    if text == "":
        return None
    try:
        kind = SpanKind(text)
    except ValueError:
        kind = SpanKind.UNSPECIFIED
    if kind is SpanKind.UNSPECIFIED:
        allowed = ", ".join(k.value for k in SpanKind if k is not SpanKind.UNSPECIFIED)
        raise BadParameterError(f"unsupported span kind: {text!r}; one of {allowed}")
    return kind


# --- responses ----------------------------------------------------------------------------


def envelope(data: Any, total: int = 0, errors: list[dict[str, Any]] | None = None) -> bytes:
    return orjson.dumps(
        {"data": data, "total": total, "limit": 0, "offset": 0, "errors": errors or None}
    )


def _json(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json")


# --- the application ----------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.Response]]


class QueryApi:
    """The handlers, bound to a store and a clock (the default time windows end now)."""

    def __init__(
        self,
        store: TraceStore,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.clock = clock
        self.requests = Counter(
            metric_name("query_requests"),
            "Query API requests by endpoint and HTTP status (400: bad parameters).",
            ["endpoint", "code"],
            registry=registry,
        )

    def application(self) -> web.Application:
        app = web.Application()
        routes = [
            ("/api/services", "services", self.services),
            ("/api/services/{service}/operations", "operations_legacy", self.operations_legacy),
            ("/api/operations", "operations", self.operations),
            ("/api/traces", "traces", self.search),
            ("/api/traces/{trace_id}", "trace", self.trace),
            ("/api/dependencies", "dependencies", self.dependencies),
        ]
        for path, endpoint, handler in routes:
            app.router.add_get(path, self._counted(endpoint, handler))
        return app

    def _counted(self, endpoint: str, handler: Handler) -> Handler:
        async def handle(request: web.Request) -> web.Response:
            try:
                response = await handler(request)
            except BadParameterError as error:
                response = self._refuse(endpoint, request, 400, str(error))
            except Exception as error:
                log.exception(
                    "The query API could not answer: the trace store failed.",
                    extra={"endpoint": endpoint, "store": self.store.name},
                )
                response = _json(
                    envelope(None, errors=[{"code": 500, "msg": f"trace store: {error}"}]), 500
                )
            self.requests.labels(endpoint, str(response.status)).inc()
            return response

        return handle

    def _refuse(
        self, endpoint: str, request: web.Request, status: int, message: str
    ) -> web.Response:
        log.info(
            "Refused a query with bad parameters.",
            extra={"endpoint": endpoint, "query": request.query_string[:500], "error": message},
        )
        return _json(envelope(None, errors=[{"code": status, "msg": message}]), status)

    def _now_ns(self) -> int:
        return int(self.clock() * 1_000_000_000)

    async def services(self, request: web.Request) -> web.Response:
        services = await self.store.services()
        return _json(envelope(services, total=len(services)))

    async def operations_legacy(self, request: web.Request) -> web.Response:
        operations = await self.store.operations(request.match_info["service"])
        names = sorted({operation.name for operation in operations})
        return _json(envelope(names, total=len(names)))

    async def operations(self, request: web.Request) -> web.Response:
        service = request.query.get("service", "")
        if not service:
            raise BadParameterError("parameter 'service' is required")
        operations = await self.store.operations(service, _span_kind(request.query))
        data = [
            {
                "name": operation.name,
                "spanKind": ""
                if operation.span_kind is SpanKind.UNSPECIFIED
                else operation.span_kind.value,
            }
            for operation in operations
        ]
        return _json(envelope(data, total=len(data)))

    async def search(self, request: web.Request) -> web.Response:
        search, trace_ids = trace_query(request.query, self._now_ns())
        errors = []
        if search is not None:
            traces = await self.store.find_traces(search)
        else:
            traces = []
            for trace_id in trace_ids:
                found = await self.store.get_trace(trace_id)
                if found is None:
                    errors.append({"msg": "trace not found", "traceID": trace_id})
                else:
                    traces.append(found)
        return _json(envelope([trace_to_jaeger(trace) for trace in traces], errors=errors))

    async def trace(self, request: web.Request) -> web.Response:
        trace_id = parse_trace_id(request.match_info["trace_id"])
        found = await self.store.get_trace(trace_id)
        if found is None:
            return _json(envelope(None, errors=[{"code": 404, "msg": "trace not found"}]), 404)
        return _json(envelope([trace_to_jaeger(found)]))

    async def dependencies(self, request: web.Request) -> web.Response:
        end_ns = _nanoseconds(request.query, "endTs", NS_PER_MS)
        if end_ns is None:
            end_ns = self._now_ns()
        lookback_ns = _nanoseconds(request.query, "lookback", NS_PER_MS)
        if lookback_ns is None:
            lookback_ns = DEFAULT_DEPENDENCIES_LOOKBACK_NS
        elif lookback_ns == 0:
            raise BadParameterError("unable to parse param 'lookback': must be positive")
        service = request.query.get("service", "")
        links = [
            {
                "parent": dependency.parent,
                "child": dependency.child,
                "callCount": dependency.calls,
                # Not in Jaeger's model; its UI and Grafana ignore it, observer's users need it.
                "errorCount": dependency.errors,
            }
            for dependency in await self.store.dependencies(end_ns, lookback_ns)
            if not service or service in (dependency.parent, dependency.child)
        ]
        return _json(envelope(links))


class QueryServer:
    """Serves the query API on `listen` (host:port; port 0 picks a free one)."""

    def __init__(
        self,
        store: TraceStore,
        listen: str,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.api = QueryApi(store, registry, clock)
        self.host, _, port = listen.rpartition(":")
        self.port = int(port)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(self.api.application(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            server = site._server
            assert server is not None
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        log.info(
            "Serving the Jaeger-compatible query API.",
            extra={"listen": f"{self.host}:{self.port}", "store": self.api.store.name},
        )

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


__all__ = ["BadParameterError", "QueryApi", "QueryServer"]
