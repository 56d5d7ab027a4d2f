"""Fixtures of the Helm chart's tests: a release of the test's own, the chart installed in
the real kube-apiserver, and its ServiceAccount's token as the kubelet would mount it.

There is no kubelet and no controller-manager: nothing runs the DaemonSet. The tests play
the pod instead, taking a token for the chart's ServiceAccount and running the agent with it.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.deploy.helm_support import Manifest, call, create_all, one, render

# The fixtures that play the kubelet (a pod log tree, a node of the test's own, an API
# connection), shared with the integration tests.
from tests.integration.conftest import api, node, tree  # noqa: F401
from tests.services import kubernetes
from tests.services.kubernetes import KubeCluster, admin_request


@pytest.fixture
def release(kube: KubeCluster) -> Iterator[str]:
    """A release name of the test's own; its cluster-scoped objects are deleted after it."""
    name = f"t{secrets.token_hex(4)}"
    yield name
    kube.ensure_running()
    for resource in ("clusterrolebindings", "clusterroles"):
        admin_request(
            kube, "DELETE", f"/apis/rbac.authorization.k8s.io/v1/{resource}/{name}-observer-agent"
        )


@pytest.fixture
def workloads(kube: KubeCluster, kube_namespace: str) -> Iterator[str]:
    """A namespace for the workloads the agent watches, apart from the release's."""
    name = kubernetes.create_namespace(kube, f"apps-{kube_namespace}")
    yield name
    kube.ensure_running()
    kubernetes.delete_namespace(kube, name)


@pytest.fixture
def installed(helm: Path, kube: KubeCluster, kube_namespace: str, release: str) -> list[Manifest]:
    """The default render, every object created in the API server."""
    manifests = render(helm, release, kube_namespace)
    create_all(kube, manifests)
    return manifests


@pytest.fixture
def agent_token(kube: KubeCluster, installed: list[Manifest]) -> str:
    """A token of the chart's ServiceAccount (TokenRequest, what the kubelet mounts in the
    pod), once the chart's bindings apply to it."""
    account = one(installed, "ServiceAccount")["metadata"]
    status, answer = call(
        kube,
        kube.token,
        "POST",
        f"/api/v1/namespaces/{account['namespace']}/serviceaccounts/{account['name']}/token",
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600},
        },
    )
    assert status == 201, answer
    token: str = answer["status"]["token"]
    # The RBAC authorizer learns of new bindings through its informers: shortly.
    for _ in range(100):
        if call(kube, token, "GET", "/api/v1/namespaces?limit=1")[0] == 200:
            return token
        time.sleep(0.1)
    raise AssertionError("the chart's ClusterRoleBinding never applied to its ServiceAccount")


@pytest.fixture
def agent_kubeconfig(kube: KubeCluster, agent_token: str, tmp_path: Path) -> Path:
    """A kubeconfig with the ServiceAccount's token, the API server's address and CA."""
    path = tmp_path / "agent-kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "test",
                        "cluster": {
                            "server": kube.server,
                            "certificate-authority": str(kube.ca_file),
                        },
                    }
                ],
                "users": [{"name": "agent", "user": {"token": agent_token}}],
                "contexts": [{"name": "agent", "context": {"cluster": "test", "user": "agent"}}],
                "current-context": "agent",
            }
        )
    )
    return path
