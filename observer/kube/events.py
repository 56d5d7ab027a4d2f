"""The kubelet's Events, of this node or of the whole cluster, from one watch.

The kubelet reports what it does to containers as core/v1 Events: probe failures
(``Unhealthy``), kills (``Killing``), restarts held back (``BackOff``), image pulls, and
node conditions such as ``SystemOOM``. It writes them with ``source.component: kubelet``
and ``source.host: <node>`` (newer kubelets also set ``reportingController`` and
``reportingInstance`` to the same), and repeats of one event update the same object with a
growing ``count`` (client-go's EventCorrelator).

The API server can select Events by ``source`` (the component) but not by the host:
``source.host`` and ``reportingInstance`` are not selectable fields
(pkg/registry/core/event/strategy.go, ToSelectableFields). So the watch asks the server
for ``fieldSelector=source=kubelet`` and keeps only this node's Events as they arrive;
the others are dropped before they are stored, so memory follows this node's Events,
not the cluster's. That the server sends every kubelet Event of the cluster to every
agent is the price, measured in docs/kubernetes-api-load.md.

Without a node (the cluster's one Events watcher, `observer.kube.lease` elects it) every
kubelet Event is handed on, and none is kept: the handler keeps what it needs.

Resuming: the watch can start from a saved resourceVersion without listing. When that
version has been compacted out of etcd (the API server keeps about five minutes of history
for Events, which it serves from etcd rather than from its watch cache), the server answers
`410 Gone` and the reflector lists once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from observer.kube.client import JsonObject, KubeApi
from observer.kube.reflector import Reflector

log = logging.getLogger(__name__)

EVENTS_PATH = "/api/v1/events"
KUBELET_SELECTOR = "source=kubelet"
"""The component the kubelet writes in ``source.component`` (and ``reportingController``)."""

EventHandler = Callable[[str, JsonObject, bool], None]
"""Called with ADDED, MODIFIED or DELETED, the Event, and whether it came from a list
(objects that existed before) rather than from the watch (changes as they happen)."""


def event_host(event: JsonObject) -> str:
    """The node that reported the Event: ``source.host``, else ``reportingInstance``."""
    source = event.get("source") or {}
    return str(source.get("host") or event.get("reportingInstance") or "")


def event_count(event: JsonObject) -> int:
    """How many times it has happened: ``count`` (core/v1), ``series.count``
    (events.k8s.io), or once."""
    series = event.get("series") or {}
    return int(event.get("count") or series.get("count") or 1)


class KubeletEvents:
    """A node's kubelet Events (every node's, without one), handed to `on_event` as they are
    listed and watched."""

    def __init__(
        self,
        api: KubeApi,
        node_name: str | None,
        on_event: EventHandler,
        resource_version: str = "",
    ) -> None:
        self.api = api
        self.node_name = node_name
        self._on_event = on_event
        self.reflector = Reflector(
            api,
            EVENTS_PATH,
            {"fieldSelector": KUBELET_SELECTOR},
            on_event=self._handle,
            keep=None if node_name is None else self._on_this_node,
            resource_version=resource_version,
            remember=node_name is not None,
            watch_cached=False,  # Events are served from etcd, which keeps their history
        )

    @property
    def resource_version(self) -> str:
        """Every Event up to this version has been handed to `on_event`."""
        return self.reflector.resource_version

    async def run(self) -> None:
        """Watch until cancelled; API failures are retried by the reflector, never raised."""
        log.info(
            "Watching the kubelet's Events"
            + (" of every node." if self.node_name is None else " for this node."),
            extra={
                "node": self.node_name,
                "resume_from": self.reflector.resource_version or None,
            },
        )
        await self.reflector.run()

    def _on_this_node(self, event: JsonObject) -> bool:
        return event_host(event) == self.node_name

    def _handle(self, kind: str, event: JsonObject) -> None:
        self._on_event(kind, event, self.reflector.listing)
