"""Helm renders charts, and what it renders is accepted by the real API server."""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.request
from pathlib import Path

import yaml

from tests.services.kubernetes import KubeCluster

CHART = {
    "Chart.yaml": "apiVersion: v2\nname: smoke\nversion: 0.1.0\n",
    "values.yaml": "data:\n  greeting: hello\n",
    "templates/configmap.yaml": (
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-smoke\n"
        "data:\n{{ toYaml .Values.data | indent 2 }}\n"
    ),
}


def test_helm_renders_a_chart_the_api_server_accepts(
    helm: Path, kube: KubeCluster, kube_namespace: str, tmp_path: Path
) -> None:
    """helm template output is created for real in the API server."""
    for name, text in CHART.items():
        (tmp_path / "chart" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "chart" / name).write_text(text)

    rendered = subprocess.run(
        [helm, "template", "demo", tmp_path / "chart", "--set", "data.greeting=hi"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (manifest,) = [doc for doc in yaml.safe_load_all(rendered) if doc]
    assert manifest["data"] == {"greeting": "hi"}

    request = urllib.request.Request(  # noqa: S310 - the test's own API server
        f"{kube.server}/api/v1/namespaces/{kube_namespace}/configmaps",
        data=json.dumps(manifest).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {kube.token}", "Content-Type": "application/json"},
    )
    context = ssl.create_default_context(cafile=str(kube.ca_file))
    with urllib.request.urlopen(request, context=context, timeout=10) as response:  # noqa: S310
        created = json.loads(response.read())
    assert created["metadata"]["name"] == "demo-smoke"
    assert created["metadata"]["uid"]
