"""A real Elasticsearch 8 node in its own JVM, built by tools/elasticsearch/build.sh.

The node is the Elasticsearch server with its netty4 transport and x-pack-core, the parts
published on Maven Central. Modules that are not published there are missing: ILM,
ingest pipelines, Painless, and the mapper-extras field types (scaled_float,
match_only_text, wildcard, constant_keyword). The GET / and _data_stream REST endpoints
are stood in for by tools/elasticsearch's RestCompatPlugin.

`start_secure` runs one with Elasticsearch security (the x-pack-security plugin, without
SAML): HTTPS only, with certificates of a CA made for it, a trial license, a file realm
with a superuser for the harness and an agent user, a PKI realm for client certificates,
and API keys. The agent's privileges are `AGENT_ROLE`: what observer's sink needs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import ssl
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.client import HTTPResponse
from pathlib import Path
from typing import Any

from tests.services.process import ServiceProcess, free_port, require_binary
from tests.services.tls import Authority, Certificate, new_authority
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
        self.process.wait_ready(self.healthy, timeout=120)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method)  # noqa: S310
        request.add_header("Content-Type", "application/json")
        with self._open(request, timeout=30) as response:
            return json.loads(response.read() or b"{}")

    def healthy(self) -> bool:
        try:
            with self._open(urllib.request.Request(f"{self.url}/_cluster/health"), 2) as response:  # noqa: S310
                return json.loads(response.read()).get("status") in ("green", "yellow")
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def _open(self, request: urllib.request.Request, timeout: float) -> HTTPResponse:
        response: HTTPResponse = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - loopback
        return response

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


@dataclass(frozen=True)
class PolicyCheck:
    valid: bool
    reason: str
    steps: list[str]
    """``phase/action/step`` in the order ILM would run them."""


def check_lifecycle_policy(name: str, body: dict[str, Any]) -> PolicyCheck:
    """A ``PUT _ilm/policy/<name>`` body checked by Elasticsearch's own ILM classes
    (observer.tools.LifecyclePolicyCheck): no test node can run ILM, whose module is not
    published as a jar, but its parser, validation and steps are in x-pack-core."""
    java = require_binary("Elasticsearch", "java")
    result = subprocess.run(
        [
            str(java),
            "-Xmx128m",
            "-cp",
            f"{ELASTICSEARCH_HOME}/jars/*:{ELASTICSEARCH_HOME}/classes",
            "observer.tools.LifecyclePolicyCheck",
            name,
        ],
        input=json.dumps(body).encode(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    lines = result.stdout.decode().splitlines()
    if result.returncode not in (0, 1) or not lines:
        raise RuntimeError(f"LifecyclePolicyCheck failed: {result.stderr.decode()[-2000:]}")
    verdict, _, reason = lines[0].partition(" ")
    return PolicyCheck(verdict == "VALID", reason, lines[1:])


def start(workdir: Path, heap: str = "512m", settings: dict[str, str] | None = None) -> Node:
    """A node of its own; `settings` are passed as -E name=value (e.g. tiny write queues)."""
    port = free_port()
    node = Node(f"http://127.0.0.1:{port}", _process(workdir, port, heap, settings or {}))
    node.process.start()
    node.process.wait_ready(node.healthy, timeout=120)
    return node


def _process(
    workdir: Path, port: int, heap: str, settings: dict[str, str], security: bool = False
) -> ServiceProcess:
    java = require_binary("Elasticsearch", "java")
    if not (ELASTICSEARCH_HOME / "jars").is_dir():
        require_binary("Elasticsearch", ELASTICSEARCH_HOME / "jars")
    classpath = [f"{ELASTICSEARCH_HOME}/jars/*", f"{ELASTICSEARCH_HOME}/classes"]
    if security:
        if not (ELASTICSEARCH_HOME / "jars-security").is_dir():
            require_binary("Elasticsearch security", ELASTICSEARCH_HOME / "jars-security")
        classpath.insert(1, f"{ELASTICSEARCH_HOME}/jars-security/*")
    extra = [arg for name, value in settings.items() for arg in ("-E", f"{name}={value}")]
    return ServiceProcess(
        "Elasticsearch",
        [
            str(java),
            "-Xms256m",
            f"-Xmx{heap}",
            "-XX:+UseSerialGC",  # two cores: no parallel collector threads to feed
            "-cp",
            ":".join(classpath),
            "observer.tools.EsNode",
            "--port",
            str(port),
            "--home",
            str(workdir),
            *extra,
        ],
        workdir / "elasticsearch.log",
    )


# --- the node with security ----------------------------------------------------------------

AGENT_ROLE = "observer_agent"
AGENT_PRIVILEGES: dict[str, Any] = {
    # Setup: the ILM policy and the index templates. Writing: create (never index) into the
    # data streams, which the first write creates (auto_configure), dead letters included.
    "cluster": ["manage_ilm", "manage_index_templates"],
    "indices": [{"names": ["logs-*"], "privileges": ["create_doc", "auto_configure"]}],
}
"""The least the agent's Elasticsearch sink needs; the agent user, API keys and client
certificates of `SecureNode` get exactly this."""


@dataclass(frozen=True)
class ApiKey:
    id: str
    encoded: str
    """What `sinks.elasticsearch.api_key` takes: base64 of id:key."""


@dataclass
class SecureNode(Node):
    """A node with security. `request` authenticates as the superuser and checks the CA."""

    authority: Authority
    username: str
    """The superuser, for the harness."""
    password: str
    agent_username: str
    """A file realm user with `AGENT_ROLE`."""
    agent_password: str
    _api_keys: list[str] = field(default_factory=list)
    _role_mappings: list[str] = field(default_factory=list)

    @property
    def ca_file(self) -> Path:
        return self.authority.ca_file

    def create_api_key(self, name: str, privileges: dict[str, Any] = AGENT_PRIVILEGES) -> ApiKey:
        """An API key with the agent's privileges (or `privileges`), made by the superuser."""
        created = self.request(
            "POST",
            "/_security/api_key",
            {"name": name, "role_descriptors": {AGENT_ROLE: privileges}},
        )
        self._api_keys.append(created["id"])
        return ApiKey(created["id"], created["encoded"])

    def update_api_key(self, key: ApiKey, privileges: dict[str, Any]) -> None:
        """Change what a key may do; requests it authenticates next get the new privileges."""
        updated = self.request(
            "PUT", f"/_security/api_key/{key.id}", {"role_descriptors": {AGENT_ROLE: privileges}}
        )
        assert updated["updated"], updated

    def invalidate_api_key(self, key: ApiKey) -> None:
        invalidated = self.request("DELETE", "/_security/api_key", {"ids": [key.id]})
        assert invalidated["invalidated_api_keys"] == [key.id], invalidated

    def client_certificate(self, name: str) -> Certificate:
        """A client certificate with subject CN=`name`, signed by the node's CA, that the PKI
        realm maps (role mapping API) to `AGENT_ROLE`."""
        certificate = self.authority.issue(name)
        self.request(
            "PUT",
            f"/_security/role_mapping/{name}",
            {"roles": [AGENT_ROLE], "enabled": True, "rules": {"field": {"dn": f"CN={name}"}}},
        )
        self._role_mappings.append(name)
        return certificate

    def clean(self) -> None:
        """Also invalidate the API keys and delete the role mappings that tests made."""
        super().clean()
        if self._api_keys:
            self.request("DELETE", "/_security/api_key", {"ids": self._api_keys})
            self._api_keys.clear()
        for name in self._role_mappings:
            self.request("DELETE", f"/_security/role_mapping/{name}")
        self._role_mappings.clear()

    def _open(self, request: urllib.request.Request, timeout: float) -> HTTPResponse:
        credentials = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        request.add_header("Authorization", f"Basic {credentials}")
        context = ssl.create_default_context(cafile=str(self.ca_file))
        response: HTTPResponse = urllib.request.urlopen(request, timeout=timeout, context=context)  # noqa: S310
        return response


def start_secure(workdir: Path, heap: str = "512m") -> SecureNode:
    """A node with security, its CA and certificates made under `workdir`."""
    config = workdir / "config"
    config.mkdir(parents=True, exist_ok=True)
    authority = new_authority(config / "certs", "observer test Elasticsearch CA")
    server = authority.issue("elasticsearch", hosts=("127.0.0.1", "localhost"))
    users = {"admin": secrets.token_urlsafe(12), "observer": secrets.token_urlsafe(12)}
    # The file realm: the users file holds hashes in a format of x-pack-core's Hasher (PBKDF2
    # with HMAC-SHA512, 10,000 rounds), and roles.yml (JSON is YAML) the agent's role.
    (config / "users").write_text("".join(f"{user}:{_pbkdf2(pw)}\n" for user, pw in users.items()))
    (config / "users_roles").write_text(f"superuser:admin\n{AGENT_ROLE}:observer\n")
    (config / "roles.yml").write_text(json.dumps({AGENT_ROLE: AGENT_PRIVILEGES}) + "\n")
    tls = {
        "certificate": str(server.cert_file),
        "key": str(server.key_file),
        "certificate_authorities": str(authority.ca_file),
    }
    settings = {
        "xpack.security.enabled": "true",
        # Trial: the PKI realm and API keys need more than a basic license.
        "xpack.license.self_generated.type": "trial",
        "xpack.security.http.ssl.enabled": "true",
        **{f"xpack.security.http.ssl.{name}": value for name, value in tls.items()},
        # Asked for, not required: the PKI realm authenticates those who present one.
        "xpack.security.http.ssl.client_authentication": "optional",
        # Security refuses to start a node whose transport is plain text.
        "xpack.security.transport.ssl.enabled": "true",
        **{f"xpack.security.transport.ssl.{name}": value for name, value in tls.items()},
        "xpack.security.authc.realms.file.file.order": "0",
        "xpack.security.authc.realms.pki.pki.order": "1",
        "xpack.security.authc.api_key.enabled": "true",
    }
    port = free_port()
    node = SecureNode(
        f"https://127.0.0.1:{port}",
        _process(workdir, port, heap, settings, security=True),
        authority,
        "admin",
        users["admin"],
        "observer",
        users["observer"],
    )
    node.process.start()
    node.process.wait_ready(node.healthy, timeout=120)
    return node


def _pbkdf2(password: str) -> str:
    """`password` as x-pack-core's Hasher.PBKDF2 writes it: {PBKDF2}rounds$salt$hash."""
    salt = secrets.token_bytes(32)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 10_000, dklen=32)
    return f"{{PBKDF2}}10000${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"
