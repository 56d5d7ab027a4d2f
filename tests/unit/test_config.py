"""Configuration loading: defaults, strictness, interpolation, and error messages with paths."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from observer import config
from observer.config import AgentConfig, CollectorConfig, ConfigError, parse

REPO = Path(__file__).resolve().parents[2]


def problems(text: str, env: dict[str, str] | None = None, model: type = AgentConfig) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        parse(model, text, env=env or {})
    return raised.value.problems


@pytest.mark.parametrize(
    ("deployable", "path"),
    [
        ("agent", REPO / "agent" / "agent.yaml"),
        ("collector", REPO / "collector" / "collector.yaml"),
    ],
)
def test_shipped_defaults_load_and_equal_the_model_defaults(
    deployable: config.Deployable, path: Path
) -> None:
    """The shipped default files are valid and restate exactly the defaults of the model."""
    loaded = config.load(deployable, path, env={})
    assert loaded == config.MODELS[deployable]()


def test_empty_file_gives_every_default() -> None:
    """An empty file is a valid configuration made of defaults."""
    assert parse(AgentConfig, "", env={}) == AgentConfig()


def test_every_mistake_is_reported_at_once_with_its_path() -> None:
    """Three different mistakes come back as three lines, each naming its key path."""
    found = problems(
        textwrap.dedent(
            """
            sinks:
              elasticsearch:
                hosts: ["localhost:92OO"]
                request_timeout: soon
            telemetry:
              log_levl: debug
            """
        )
    )
    assert found == [
        "telemetry.log_levl: unknown key; allowed here: listen, log_level",
        "sinks.elasticsearch.hosts[0]: not a URL: 'localhost:92OO'",
        "sinks.elasticsearch.request_timeout: not a duration like 500ms, 5s, 2m, 7d: 'soon'",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("telemetry: {listen: nine}", "telemetry.listen: not a listen address host:port: 'nine'"),
        (
            "telemetry: {log_level: loud}",
            "telemetry.log_level: input should be 'debug', 'info', 'warning' or 'error', got 'loud'",
        ),
        (
            "sinks: {elasticsearch: {hosts: []}}",
            "sinks.elasticsearch.hosts: List should have at least 1 item after validation, not 0",
        ),
        (
            "sinks: {elasticsearch: {username: u}}",
            "sinks.elasticsearch: username and password must be given together",
        ),
        (
            "sinks: {elasticsearch: {api_key: k, username: u, password: p}}",
            "sinks.elasticsearch: give either api_key or username/password, not both",
        ),
        (
            "sinks: {elasticsearch: {tls: {cert_file: /c}}}",
            "sinks.elasticsearch.tls: cert_file and key_file must be given together",
        ),
        (
            "nodes: 3",
            "nodes: unknown key; allowed here: kubernetes, node_name, shutdown_timeout, sinks, sources, state_dir, telemetry",
        ),
        ("- a list", "<root>: expected a mapping of keys, got list"),
        (
            "a: [unclosed",
            "line 1, column 13: not valid YAML: expected ',' or ']', but got '<stream end>'",
        ),
    ],
)
def test_error_messages_say_what_was_expected(text: str, expected: str) -> None:
    """Each kind of mistake has a message that names the path and the expectation."""
    assert problems(text) == [expected]


def test_interpolation_reads_environment_defaults_and_files() -> None:
    """${VAR}, ${VAR:-default} and ${file:...} resolve; $${ stays a literal."""
    loaded = parse(
        AgentConfig,
        """
node_name: ${NODE_NAME}
state_dir: ${STATE_DIR:-/var/lib/observer-test}
sinks:
  elasticsearch:
    username: elastic
    password: ${file:/run/secret}
    hosts: ["http://es-${ZONE:-a}:9200"]
kubernetes:
  context: "$${literal}"
""",
        env={"NODE_NAME": "node-7"},
        read_file=lambda path: {"/run/secret": "s3cret\n"}[path],
    )
    assert loaded.node_name == "node-7"
    assert loaded.state_dir == Path("/var/lib/observer-test")
    assert loaded.sinks.elasticsearch.password == "s3cret"
    assert loaded.sinks.elasticsearch.hosts == ["http://es-a:9200"]
    assert loaded.kubernetes.context == "${literal}"


def test_missing_variables_and_files_are_errors_with_paths() -> None:
    """An unset variable without default, or an unreadable file, is reported where it is used."""
    found = problems(
        "node_name: ${NODE_NAME}\nsinks: {elasticsearch: {api_key: '${file:/nope}'}}\n"
    )
    assert found == [
        "node_name: environment variable NODE_NAME is not set",
        "sinks.elasticsearch.api_key: cannot read /nope: No such file or directory",
    ]


@pytest.mark.parametrize(
    ("written", "seconds"), [("500ms", 0.5), ("5s", 5.0), ("2m", 120.0), ("1h", 3600.0), (7, 7.0)]
)
def test_durations_are_read_in_the_units_people_write(written: object, seconds: float) -> None:
    """Durations accept ms, s, m and h suffixes, or plain seconds."""
    loaded = parse(AgentConfig, f"sinks: {{elasticsearch: {{request_timeout: {written}}}}}", env={})
    assert loaded.sinks.elasticsearch.request_timeout == seconds


def test_collector_storage_validates_its_elasticsearch_section() -> None:
    """The collector's optional Elasticsearch storage is validated like the agent's sink."""
    found = problems("storage: {elasticsearch: {hosts: [ftp://x]}}", model=CollectorConfig)
    assert found == ["storage.elasticsearch.hosts[0]: not a URL: 'ftp://x'"]
