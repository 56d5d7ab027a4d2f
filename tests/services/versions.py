"""The service versions of tools/versions.env, and where the installed binaries are."""

from __future__ import annotations

from pathlib import Path

from tests.services.process import CACHE

_VERSIONS_FILE = Path(__file__).resolve().parents[2] / "tools" / "versions.env"


def _read() -> dict[str, str]:
    versions = {}
    for line in _VERSIONS_FILE.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#"):
            versions[key.strip()] = value.strip()
    return versions


VERSIONS = _read()
BIN = CACHE / "bin"
KUBE_APISERVER = BIN / f"kube-apiserver-v{VERSIONS['KUBERNETES_VERSION']}"
HELM = BIN / f"helm-v{VERSIONS['HELM_VERSION']}"
ELASTICSEARCH_HOME = CACHE / "elasticsearch" / VERSIONS.get("ELASTICSEARCH_VERSION", "unset")
