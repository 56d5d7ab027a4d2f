"""observer's own signals: JSON logs on stderr, Prometheus metrics, and the HTTP endpoint
that serves them with the health checks Kubernetes probes use.

Every metric name comes from `metric_name`, so they share one prefix. Labels stay bounded
(namespace and workload at most, never a pod name or a trace id): a pipeline must not
become its own cardinality problem.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

from observer import __version__

METRIC_PREFIX = "observer"


def metric_name(name: str) -> str:
    """The one place metric names are made: `records_in` → `observer_records_in`."""
    return f"{METRIC_PREFIX}_{name}"


# --- logs --------------------------------------------------------------------------------

_STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line; `extra=` fields become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES:
                entry[key] = value
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 - overrides logging's name
        seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{seconds}.{int(record.msecs):03d}Z"


def configure_logging(level: str = "info") -> None:
    """Route every logger, ours and our libraries', through one JSON handler on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries log per request at INFO; that is our metrics' job, not our logs'.
    for chatty in ("elastic_transport", "httpx", "httpx2", "aiohttp.access"):
        logging.getLogger(chatty).setLevel(logging.WARNING)


# --- metrics and health ------------------------------------------------------------------

ReadinessCheck = Callable[[], Awaitable[str | None]]


def build_info(registry: CollectorRegistry, deployable: str) -> None:
    gauge = Gauge(
        metric_name("build_info"),
        "Always 1; labels say which observer this is.",
        ["version", "deployable"],
        registry=registry,
    )
    gauge.labels(version=__version__, deployable=deployable).set(1)


_PROMETHEUS_TYPES = {
    "info": "gauge",
    "stateset": "gauge",
    "gaugehistogram": "histogram",
    "unknown": "untyped",
}
_OPENMETRICS_ONLY = ("_created", "_gsum", "_gcount")
"""Samples the text format has no place for in their family: written after it as gauges."""
_CACHED_LABEL_SETS = 4096
"""About ten times the series of a loaded agent; past it (series came and went) the text
is made again. Each is a couple of hundred bytes."""
_go_float = cast(Callable[[float], str], floatToGoString)
"""How Prometheus (Go) writes a float: `+Inf`, `1.2345678e+07`, …"""


class Exposition:
    """A registry in Prometheus' text format (0.0.4): byte for byte what prometheus_client's
    `generate_latest` writes for observer's metrics (a test compares them), in a fraction
    of its time.

    `generate_latest` checks every label name of every sample against the legacy character
    set and escapes it (its UTF-8 name support): on a loaded agent, 3.5 ms of CPU per
    scrape, most of the scrape and one long event-loop step. Here names are observer's own,
    in the legacy set (tests check them), and the text of each label set is kept from one
    scrape to the next: series mostly stay the same between scrapes.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._label_text: dict[tuple[tuple[str, str], ...], str] = {}

    def render(self) -> bytes:
        if len(self._label_text) > _CACHED_LABEL_SETS:
            self._label_text.clear()
        label_text = self._label_text
        output: list[str] = []
        append = output.append
        for family in self.registry.collect():
            name, kind = family.name, family.type
            shown = (
                name + "_total" if kind == "counter" else name + "_info" if kind == "info" else name
            )
            documentation = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
            append(f"# HELP {shown} {documentation}\n")
            append(f"# TYPE {shown} {_PROMETHEUS_TYPES.get(kind, kind)}\n")
            openmetrics_only: dict[str, list[str]] = {}
            for sample in family.samples:
                key = tuple(sample.labels.items())
                labels = label_text.get(key)
                if labels is None:
                    labels = label_text[key] = _label_text(sample.labels)
                line = f"{sample.name}{labels} {_go_float(sample.value)}"
                if sample.timestamp is not None:
                    line += f" {int(float(sample.timestamp) * 1000):d}"
                suffix = sample.name[len(name) :]
                if suffix in _OPENMETRICS_ONLY and sample.name.startswith(name):
                    openmetrics_only.setdefault(suffix, []).append(line + "\n")
                else:
                    append(line + "\n")
            for suffix, lines in sorted(openmetrics_only.items()):
                append(f"# HELP {name}{suffix} {documentation}\n")
                append(f"# TYPE {name}{suffix} gauge\n")
                output.extend(lines)
        return "".join(output).encode()


def _label_text(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    pairs = ",".join(f'{key}="{_escape(value)}"' for key, value in sorted(labels.items()))
    return f"{{{pairs}}}"


def _escape(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


class TelemetryServer:
    """Serves /metrics, /healthz (the process answers) and /readyz (every check passes).

    A readiness check returns None when ready, or a short reason why not.
    """

    def __init__(self, registry: CollectorRegistry, listen: str) -> None:
        self.registry = registry
        self.host, _, port = listen.rpartition(":")
        self.port = int(port)
        self.readiness_checks: dict[str, ReadinessCheck] = {}
        self._exposition = Exposition(registry)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:  # an ephemeral port was asked for; say which one we got
            server = site._server
            assert server is not None
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        logging.getLogger(__name__).info(
            "Serving metrics and health checks.", extra={"listen": f"{self.host}:{self.port}"}
        )

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        body = self._exposition.render()
        response = web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
        # gzip (or deflate) when the scraper asks, as Prometheus does: a tenth of the bytes
        # per node and scrape, for a fraction of a millisecond.
        response.enable_compression()
        return response

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        failing = {}
        for name, check in self.readiness_checks.items():
            reason = await check()
            if reason is not None:
                failing[name] = reason
        if failing:
            body = "".join(f"{name}: {reason}\n" for name, reason in sorted(failing.items()))
            return web.Response(status=503, text=body)
        return web.Response(text="ok\n")
