"""A real kube-apiserver on etcd, with a static admin token and a kubeconfig file.

There is no kubelet and no controller-manager: tests play the kubelet's part through the
API (pods with spec.nodeName, status patches, Events), and this module finalizes the
namespaces it deletes, which the namespace controller would otherwise do.
"""

from __future__ import annotations

import json
import secrets
import ssl
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.services.process import ServiceProcess, free_port, require_binary
from tests.services.versions import KUBE_APISERVER

ADMIN_USER = "observer-test-admin"


@dataclass
class KubeCluster:
    server: str
    token: str
    kubeconfig: Path
    ca_file: Path
    etcd: ServiceProcess
    apiserver: ServiceProcess
    etcd_endpoint: str

    def ensure_running(self) -> None:
        self.etcd.ensure_running()
        self.apiserver.ensure_running()

    def stop(self) -> None:
        self.apiserver.stop()
        self.etcd.stop()


def start(workdir: Path) -> KubeCluster:
    etcd_binary = require_binary("etcd", "etcd")
    apiserver_binary = require_binary("kube-apiserver", KUBE_APISERVER)
    workdir.mkdir(parents=True, exist_ok=True)

    etcd_port, etcd_peer_port = free_port(), free_port()
    etcd_endpoint = f"http://127.0.0.1:{etcd_port}"
    etcd = ServiceProcess(
        "etcd",
        [
            str(etcd_binary),
            "--data-dir",
            str(workdir / "etcd"),
            "--listen-client-urls",
            etcd_endpoint,
            "--advertise-client-urls",
            etcd_endpoint,
            "--listen-peer-urls",
            f"http://127.0.0.1:{etcd_peer_port}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{etcd_peer_port}",
            "--initial-cluster",
            f"default=http://127.0.0.1:{etcd_peer_port}",
            "--unsafe-no-fsync",  # a test cluster: speed over durability
        ],
        workdir / "etcd.log",
    )
    etcd.start()
    etcd.wait_ready(lambda: _get_ok(f"{etcd_endpoint}/health"), timeout=30)

    token = secrets.token_hex(16)
    (workdir / "tokens.csv").write_text(f'{token},{ADMIN_USER},1000,"system:masters"\n')
    service_account_key = workdir / "sa.key"
    if not service_account_key.exists():
        subprocess.run(
            ["openssl", "genrsa", "-out", str(service_account_key), "2048"],
            check=True,
            capture_output=True,
        )
    port = free_port()
    cert_dir = workdir / "certs"
    apiserver = ServiceProcess(
        "kube-apiserver",
        [
            str(apiserver_binary),
            "--etcd-servers",
            etcd_endpoint,
            "--bind-address",
            "127.0.0.1",
            "--advertise-address",
            "127.0.0.1",
            "--secure-port",
            str(port),
            "--cert-dir",
            str(cert_dir),
            "--token-auth-file",
            str(workdir / "tokens.csv"),
            "--authorization-mode",
            "RBAC",
            "--service-account-issuer",
            "https://kubernetes.default.svc",
            "--service-account-key-file",
            str(service_account_key),
            "--service-account-signing-key-file",
            str(service_account_key),
            "--service-cluster-ip-range",
            "10.96.0.0/16",
            # No controller-manager creates the default ServiceAccount in each namespace.
            "--disable-admission-plugins",
            "ServiceAccount",
            "--enable-priority-and-fairness=false",
            "--profiling=false",
        ],
        workdir / "kube-apiserver.log",
    )
    apiserver.start()
    server = f"https://127.0.0.1:{port}"
    ca_file = cert_dir / "apiserver.crt"
    apiserver.wait_ready(lambda: _get_ok(f"{server}/readyz", token, ca_file), timeout=90)

    kubeconfig = workdir / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "test",
                        "cluster": {"server": server, "certificate-authority": str(ca_file)},
                    }
                ],
                "users": [{"name": ADMIN_USER, "user": {"token": token}}],
                "contexts": [{"name": "test", "context": {"cluster": "test", "user": ADMIN_USER}}],
                "current-context": "test",
            }
        )
    )
    return KubeCluster(server, token, kubeconfig, ca_file, etcd, apiserver, etcd_endpoint)


def _get_ok(url: str, token: str | None = None, ca_file: Path | None = None) -> bool:
    request = urllib.request.Request(url)  # noqa: S310 - a loopback URL we built
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    context = None
    if ca_file is not None:
        if not ca_file.exists():
            return False
        context = ssl.create_default_context(cafile=str(ca_file))
    try:
        with urllib.request.urlopen(request, timeout=2, context=context) as response:  # noqa: S310
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False


def admin_request(
    cluster: KubeCluster, method: str, path: str, body: dict[str, object] | None = None
) -> dict[str, object]:
    """A request to the test API server as its admin; a 404 answers an empty dict."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{cluster.server}{path}", data=data, method=method)  # noqa: S310
    request.add_header("Authorization", f"Bearer {cluster.token}")
    request.add_header("Content-Type", "application/json")
    context = ssl.create_default_context(cafile=str(cluster.ca_file))
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:  # noqa: S310
            answer: dict[str, object] = json.loads(response.read() or b"{}")
            return answer
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return {}
        raise


def create_namespace(cluster: KubeCluster, test_name: str) -> str:
    """A namespace named after the test (DNS-1123), with a random suffix."""
    stem = "".join(c if c.isalnum() else "-" for c in test_name.lower()).strip("-")[:40].strip("-")
    name = f"{stem}-{secrets.token_hex(3)}"
    admin_request(cluster, "POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    return name


def delete_namespace(cluster: KubeCluster, name: str) -> None:
    """Delete a namespace and its contents now, doing the namespace controller's part."""
    for collection in ("pods", "events", "configmaps", "services", "secrets"):
        admin_request(
            cluster, "DELETE", f"/api/v1/namespaces/{name}/{collection}?gracePeriodSeconds=0"
        )
    admin_request(cluster, "DELETE", f"/api/v1/namespaces/{name}")
    admin_request(
        cluster,
        "PUT",
        f"/api/v1/namespaces/{name}/finalize",
        {"metadata": {"name": name}, "spec": {"finalizers": []}},
    )
