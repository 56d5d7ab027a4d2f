"""Helm renders charts, and what it renders is accepted by the real API server."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.services.kubernetes import KubeCluster, admin_request

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

    created = admin_request(
        kube, "POST", f"/api/v1/namespaces/{kube_namespace}/configmaps", manifest
    )
    metadata = created["metadata"]
    assert isinstance(metadata, dict)
    assert metadata["name"] == "demo-smoke"
    assert metadata["uid"]
