"""pytest fixtures for the real services.

Each service starts once per session, on first use, and stops at the end of the session.
The per-test fixtures check the service is still running (a dead service fails the test
and names itself) and clean state after the test: indices and data streams, namespaces,
scrape targets.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import elasticsearch, kubernetes, prometheus
from tests.services.process import require_binary
from tests.services.versions import HELM


@pytest.fixture(scope="session")
def elasticsearch_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[elasticsearch.Node]:
    node = elasticsearch.start(tmp_path_factory.mktemp("elasticsearch"))
    yield node
    node.stop()


@pytest.fixture
def es(elasticsearch_node: elasticsearch.Node) -> Iterator[elasticsearch.Node]:
    """The real Elasticsearch node, emptied of everything the test wrote."""
    elasticsearch_node.ensure_running()
    yield elasticsearch_node
    elasticsearch_node.ensure_running()
    elasticsearch_node.clean()


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kubernetes.KubeCluster]:
    cluster = kubernetes.start(tmp_path_factory.mktemp("kubernetes"))
    yield cluster
    cluster.stop()


@pytest.fixture
def kube(kube_cluster: kubernetes.KubeCluster) -> kubernetes.KubeCluster:
    """The real kube-apiserver; use `kube_namespace` for objects the test creates."""
    kube_cluster.ensure_running()
    return kube_cluster


@pytest.fixture
def kube_namespace(kube: kubernetes.KubeCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace, deleted with everything in it after the test."""
    name = kubernetes.create_namespace(kube, request.node.name)
    yield name
    kube.ensure_running()
    kubernetes.delete_namespace(kube, name)


@pytest.fixture(scope="session")
def prometheus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[prometheus.Prometheus]:
    server = prometheus.start_prometheus(tmp_path_factory.mktemp("prometheus"))
    yield server
    server.process.stop()


@pytest.fixture
def prometheus_instance(
    prometheus_server: prometheus.Prometheus,
) -> Iterator[prometheus.Prometheus]:
    """The real Prometheus, scraping nothing until the test calls `configure`."""
    prometheus_server.ensure_running()
    yield prometheus_server
    prometheus_server.ensure_running()
    prometheus_server.configure()


@pytest.fixture(scope="session")
def alertmanager_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[prometheus.Alertmanager]:
    server = prometheus.start_alertmanager(tmp_path_factory.mktemp("alertmanager"))
    yield server
    server.process.stop()


@pytest.fixture
def alertmanager(alertmanager_server: prometheus.Alertmanager) -> prometheus.Alertmanager:
    alertmanager_server.ensure_running()
    return alertmanager_server


@pytest.fixture(scope="session")
def promtool() -> Path:
    return require_binary("promtool", "promtool")


@pytest.fixture(scope="session")
def helm() -> Path:
    return require_binary("Helm", HELM)


def http_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
        body: bytes = response.read()
        return body
