"""Fixtures shared by the tests that play the kubelet against the real kube-apiserver."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from observer.config import KubernetesConfig
from observer.kube.client import KubeApi
from observer.testing import PodLogTree
from tests.services.kubernetes import KubeCluster


@pytest.fixture
async def api(kube: KubeCluster) -> AsyncIterator[KubeApi]:
    """An authenticated connection to the real API server, as the agent makes it."""
    connection = KubeApi.connect(KubernetesConfig(kubeconfig=kube.kubeconfig))
    yield connection
    await connection.close()


@pytest.fixture
def node(kube_namespace: str) -> str:
    """A node name of the test's own, so that no other test's pods are on it."""
    return f"node-{kube_namespace}"


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[PodLogTree]:
    """A kubelet-style pod log tree under the test's temporary directory."""
    pods = PodLogTree(tmp_path / "pods")
    yield pods
    pods.close()
