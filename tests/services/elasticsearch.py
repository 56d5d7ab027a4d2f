"""A real Elasticsearch 8 node in its own JVM, built by tools/elasticsearch/build.sh.

The node is the Elasticsearch server with its netty4 transport and x-pack-core, the parts
published on Maven Central. Modules that are not published there are missing: ILM,
ingest pipelines, Painless, and the mapper-extras field types (scaled_float,
match_only_text, wildcard, constant_keyword). The GET / and _data_stream REST endpoints
are stood in for by tools/elasticsearch's RestCompatPlugin.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.services.process import ServiceProcess, free_port, require_binary
from tests.services.versions import ELASTICSEARCH_HOME


@dataclass
class Node:
    url: str
    process: ServiceProcess

    def ensure_running(self) -> None:
        self.process.ensure_running()

    def stop(self) -> None:
        self.process.stop()

    def restart(self) -> None:
        """Start the stopped node again: same port, same data."""
        self.process.start()
        self.process.wait_ready(lambda: _healthy(self.url), timeout=120)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method)  # noqa: S310
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
            return json.loads(response.read() or b"{}")

    def clean(self) -> None:
        """Delete every data stream, index and template that tests made (not the system's)."""
        self.request("DELETE", "/_data_stream/*?expand_wildcards=all")
        for index in self.request("GET", "/_cat/indices?format=json&expand_wildcards=open,closed"):
            if not index["index"].startswith("."):
                self.request("DELETE", f"/{index['index']}")
        templates = self.request("GET", "/_index_template").get("index_templates", [])
        for template in templates:
            if not template["index_template"].get("_meta", {}).get("managed"):
                self.request("DELETE", f"/_index_template/{template['name']}")


def start(workdir: Path, heap: str = "512m", settings: dict[str, str] | None = None) -> Node:
    """A node of its own; `settings` are passed as -E name=value (e.g. tiny write queues)."""
    java = require_binary("Elasticsearch", "java")
    if not (ELASTICSEARCH_HOME / "jars").is_dir():
        require_binary("Elasticsearch", ELASTICSEARCH_HOME / "jars")
    port = free_port()
    extra = [arg for name, value in (settings or {}).items() for arg in ("-E", f"{name}={value}")]
    process = ServiceProcess(
        "Elasticsearch",
        [
            str(java),
            "-Xms256m",
            f"-Xmx{heap}",
            "-XX:+UseSerialGC",  # two cores: no parallel collector threads to feed
            "-cp",
            f"{ELASTICSEARCH_HOME}/jars/*:{ELASTICSEARCH_HOME}/classes",
            "observer.tools.EsNode",
            "--port",
            str(port),
            "--home",
            str(workdir),
            *extra,
        ],
        workdir / "elasticsearch.log",
    )
    process.start()
    url = f"http://127.0.0.1:{port}"
    process.wait_ready(lambda: _healthy(url), timeout=120)
    return Node(url, process)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_cluster/health", timeout=2) as response:  # noqa: S310
            return json.loads(response.read()).get("status") in ("green", "yellow")
    except (urllib.error.URLError, OSError, ValueError):
        return False
