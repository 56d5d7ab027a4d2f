"""The agent's Elasticsearch connection against a real node with security: HTTPS, basic
auth, API keys, client certificates (PKI realm), and what wrong credentials or a wrong CA do.

The agent authenticates with the least privileges its sink needs (`AGENT_ROLE`). The node
starts once for the module: security makes it slower to start than the suite's own node.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from observer.agent import app
from observer.agent.checkpoint import STATE_FILE
from observer.config import AgentConfig
from observer.sinks.elasticsearch import connect
from observer.testing import PodLogTree
from tests.integration.polling import until
from tests.integration.test_elasticsearch_resilience import count
from tests.integration.test_elasticsearch_sink import LOGS, agent_config, stored
from tests.services import elasticsearch
from tests.services.elasticsearch import SecureNode
from tests.services.process import free_port
from tests.services.tls import new_authority

LINES = [f"line {i}" for i in range(300)]


@pytest.fixture(scope="module")
def secure_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureNode]:
    node = elasticsearch.start_secure(tmp_path_factory.mktemp("elasticsearch-secure"))
    yield node
    node.stop()


@pytest.fixture
def secure(secure_node: SecureNode) -> Iterator[SecureNode]:
    """The node with security, emptied of what the test wrote, its API keys and mappings."""
    secure_node.ensure_running()
    yield secure_node
    secure_node.ensure_running()
    secure_node.clean()


def basic_auth(node: SecureNode, password: str | None = None) -> dict[str, Any]:
    """The agent user's settings, over HTTPS checked against the node's CA."""
    return {
        "username": node.agent_username,
        "password": password or node.agent_password,
        "tls": {"ca_file": str(node.ca_file)},
    }


def assert_delivered_once(node: SecureNode, tmp_path: Path, log_file: Path) -> None:
    """Every line stored once, and the file's checkpoint at its end."""
    hits = stored(node, LOGS)
    assert sorted(hit["_source"]["message"] for hit in hits) == sorted(LINES)
    assert len({hit["_id"] for hit in hits}) == len(LINES)
    assert checkpoints(tmp_path) == [log_file.stat().st_size]


def checkpoints(tmp_path: Path) -> list[int]:
    state = json.loads((tmp_path / "state" / STATE_FILE).read_text())
    return [checkpoint["offset"] for checkpoint in state["files"].values()]


async def run_once(config: AgentConfig) -> None:
    """`agent --once`, failing the test rather than retrying for ever if delivery never works."""
    try:
        async with asyncio.timeout(30):
            await app.run(config, once=True)
    except TimeoutError:
        pytest.fail("the agent delivered nothing in 30 s; it retries for ever: see its log")


async def run_until_logged(
    config: AgentConfig, caplog: pytest.LogCaptureFixture, pattern: str
) -> list[logging.LogRecord]:
    """Run the agent until the sink logs a record (warning or worse) whose message or fields
    match `pattern`, then stop it as SIGTERM would; return those records."""

    def matching() -> list[logging.LogRecord]:
        return [
            record
            for record in caplog.records
            if record.name.startswith("observer.sinks.elasticsearch")
            and record.levelno >= logging.WARNING
            and re.search(pattern, logged(record), re.IGNORECASE | re.DOTALL)
        ]

    stop = asyncio.Event()
    quick_stop = config.model_copy(update={"shutdown_timeout": 0.5})
    agent = asyncio.create_task(app.run(quick_stop, once=True, stop=stop))
    deadline = asyncio.get_running_loop().time() + 15
    try:
        while not matching() and not agent.done():
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(agent, 15)
    return matching()


def logged(record: logging.LogRecord) -> str:
    """A record's message and structured fields, as a JSON log line would show them."""
    return f"{record.getMessage()} {record.__dict__}"


async def test_basic_auth_over_https_stores_every_line_once(
    tmp_path: Path, secure: SecureNode, tree: PodLogTree
) -> None:
    """A user and password over HTTPS with the CA as tls.ca_file: each line stored once, a replay adds nothing."""
    web = tree.container("shop", "web-1", "app")
    web.write(LINES)
    config = agent_config(tmp_path, secure, **basic_auth(secure))
    await run_once(config)
    assert_delivered_once(secure, tmp_path, web.path)

    # A lost state directory: everything is sent again, and each answered "already there".
    (tmp_path / "state" / STATE_FILE).unlink()
    await run_once(config)
    assert count(secure) == len(LINES)


async def test_an_api_key_stores_every_line(
    tmp_path: Path, secure: SecureNode, tree: PodLogTree
) -> None:
    """An API key (and no user) authenticates the agent: every line stored."""
    web = tree.container("shop", "web-1", "app")
    web.write(LINES)
    key = secure.create_api_key("observer-agent")
    config = agent_config(tmp_path, secure, api_key=key.encoded, tls={"ca_file": secure.ca_file})
    await run_once(config)
    assert_delivered_once(secure, tmp_path, web.path)


async def test_a_client_certificate_authenticates_through_the_pki_realm(
    tmp_path: Path, secure: SecureNode, tree: PodLogTree
) -> None:
    """tls.cert_file/key_file and no password: the PKI realm knows the agent by its subject, every line stored."""
    web = tree.container("shop", "web-1", "app")
    web.write(LINES)
    certificate = secure.client_certificate("observer-agent")
    tls = {
        "ca_file": secure.ca_file,
        "cert_file": certificate.cert_file,
        "key_file": certificate.key_file,
    }
    config = agent_config(tmp_path, secure, tls=tls)
    await run_once(config)
    assert_delivered_once(secure, tmp_path, web.path)

    assert config.sinks.elasticsearch is not None
    client = connect(config.sinks.elasticsearch)
    try:
        who = await client.security.authenticate()
    finally:
        await client.close()
    assert who["username"] == "observer-agent"
    assert who["authentication_realm"]["type"] == "pki"
    assert who["roles"] == [elasticsearch.AGENT_ROLE]


@pytest.mark.parametrize("setup", [True, False], ids=["setup", "no-setup"])
@pytest.mark.parametrize("credentials", ["wrong password", "revoked API key"])
async def test_refused_credentials_lose_nothing_and_say_401(
    tmp_path: Path,
    secure: SecureNode,
    tree: PodLogTree,
    caplog: pytest.LogCaptureFixture,
    credentials: str,
    setup: bool,
) -> None:
    """Credentials answered 401 (at setup, or at _bulk without setup): logged with the status and
    reason, nothing stored, the checkpoint stays; the right credentials then deliver every line."""
    web = tree.container("shop", "web-1", "app")
    web.write(LINES)
    if credentials == "wrong password":
        wrong = basic_auth(secure, password="not-the-password")
        reason = "unable to authenticate user [observer]"
    else:
        key = secure.create_api_key("revoked")
        secure.invalidate_api_key(key)
        wrong = {"api_key": key.encoded, "tls": {"ca_file": secure.ca_file}}
        reason = "unable to authenticate with provided credentials"
    refused = agent_config(tmp_path, secure, setup={"enabled": setup}, **wrong)

    records = await run_until_logged(refused, caplog, rf"^(?=.*\b401\b)(?=.*{re.escape(reason)})")

    assert records, f"no warning or error names the 401; the sink logged:\n{caplog.text}"
    # At setup (the templates) or at _bulk: an error that sends the user to the credentials
    assert any(
        record.levelno == logging.ERROR and "credentials" in record.getMessage()
        for record in records
    )
    assert count(secure) == 0
    assert checkpoints(tmp_path) == [0]
    await run_once(agent_config(tmp_path, secure, **basic_auth(secure)))
    assert_delivered_once(secure, tmp_path, web.path)


async def test_a_ca_that_did_not_sign_the_server_certificate_stores_nothing_and_loses_nothing(
    tmp_path: Path, secure: SecureNode, tree: PodLogTree, caplog: pytest.LogCaptureFixture
) -> None:
    """tls.ca_file of another CA: a TLS error naming the failed verification is logged,
    nothing is stored, the checkpoint stays; the right CA then delivers every line."""
    web = tree.container("shop", "web-1", "app")
    web.write(LINES)
    other = new_authority(tmp_path / "other-ca", "some other CA")
    settings = basic_auth(secure)
    refused = agent_config(tmp_path, secure, **{**settings, "tls": {"ca_file": other.ca_file}})

    records = await run_until_logged(refused, caplog, r"\btls\b|ssl|certificate")

    assert records, f"no warning or error names TLS:\n{caplog.text}"
    assert count(secure) == 0
    assert checkpoints(tmp_path) == [0]
    await run_once(agent_config(tmp_path, secure, **settings))
    assert_delivered_once(secure, tmp_path, web.path)
    assert any("certificate verify failed" in logged(record).lower() for record in records)


async def test_a_closed_https_port_first_in_the_hosts_fails_over_to_the_node(
    tmp_path: Path, secure: SecureNode, tree: PodLogTree
) -> None:
    """hosts: an https URL nothing listens on, then the node: every line stored once."""
    web = tree.container("shop", "web-1", "app")
    web.write(LINES)
    config = agent_config(
        tmp_path,
        secure,
        hosts=[f"https://127.0.0.1:{free_port()}", secure.url],
        retry={"initial_backoff": "10ms", "max_backoff": "200ms"},
        bulk={"max_documents": 20},
        **basic_auth(secure),
    )
    await run_once(config)
    assert_delivered_once(secure, tmp_path, web.path)


async def test_documents_refused_403_wait_for_the_privilege_and_are_not_dead_lettered(
    tmp_path: Path, secure: SecureNode, tree: PodLogTree, caplog: pytest.LogCaptureFixture
) -> None:
    """A key that may not write to one namespace's data stream: the other's lines are stored,
    the refused ones are held (an error names the stream), not dead-lettered; once the key is
    given the privilege, the running agent stores them, each once."""
    shop = tree.container("shop", "web-1", "app")
    shop.write(LINES)
    payments = tree.container("payments", "pay-1", "app")
    payments.write(LINES)
    shop_only = {
        **elasticsearch.AGENT_PRIVILEGES,
        "indices": [
            {
                "names": [f"{STREAM}-shop", "logs-observer.dead_letter-*"],
                "privileges": ["create_doc", "auto_configure"],
            }
        ],
    }
    key = secure.create_api_key("shop-only", shop_only)
    config = agent_config(
        tmp_path,
        secure,
        api_key=key.encoded,
        tls={"ca_file": secure.ca_file},
        data_stream={"namespace_from": "kubernetes.namespace"},
        retry={"initial_backoff": "50ms", "max_backoff": "500ms"},
    )

    def refused_for_payments() -> bool:
        return any(
            record.levelno == logging.ERROR
            and getattr(record, "data_stream", None) == f"{STREAM}-payments"
            and getattr(record, "status", None) == 403
            for record in caplog.records
        )

    agent = asyncio.create_task(app.run(config, once=True))
    try:
        try:
            await until(lambda: refused_for_payments() and documents(secure, "shop") == 300, 30)
        except TimeoutError:
            pytest.fail(f"no error named the refused data stream; the agent logged:\n{caplog.text}")
        await asyncio.sleep(1)  # several retries refused meanwhile
        assert documents(secure, "payments") == 0
        assert not agent.done()
        secure.update_api_key(key, elasticsearch.AGENT_PRIVILEGES)
        await asyncio.wait_for(asyncio.shield(agent), 30)
    finally:
        agent.cancel()
        await asyncio.wait({agent})

    for namespace in ("shop", "payments"):
        hits = stored(secure, f"{STREAM}-{namespace}")
        assert sorted(hit["_source"]["message"] for hit in hits) == sorted(LINES)
        assert len({hit["_id"] for hit in hits}) == len(LINES)
    assert documents(secure, "observer.dead_letter-default", dataset="logs") == 0
    assert not (tmp_path / "state" / "dead-letter.jsonl").exists()
    assert sorted(checkpoints(tmp_path)) == sorted([shop.path.stat().st_size] * 2)


STREAM = "logs-kubernetes.container"


def documents(node: SecureNode, namespace: str, dataset: str = STREAM) -> int:
    """How many documents `dataset-namespace` holds (0 when it does not exist)."""
    index = f"{dataset}-{namespace}"
    try:
        node.request("POST", f"/{index}/_refresh")
        return int(node.request("GET", f"/{index}/_count")["count"])
    except OSError:
        return 0
