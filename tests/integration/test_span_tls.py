"""TLS on the span path: real SDK clients to the receivers, the agent's exporter to the
collector's receiver with mutual TLS, and what a wrong certificate or file does."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans
from opentelemetry.sdk.trace.export import SpanExportResult

from observer.agent.spans.exporter import CollectorExporter
from observer.agent.spans.resolver import EndpointResolver
from observer.config import CollectorSinkConfig, ServerTlsConfig
from observer.receivers import IntakeCounts
from observer.receivers.http import HttpSpanReceiver
from observer.receivers.otlp_grpc import OtlpGrpcReceiver
from observer.tls import TlsFileError
from tests.integration.polling import until
from tests.integration.span_support import Recorder, assert_same_span, sdk_spans
from tests.services.tls import Authority, Certificate, new_authority

SERVICE_NAME = "observer-collector-headless"
"""The replicas' certificate names the Service only; the exporter dials them by IP."""


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return new_authority(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def server(authority: Authority) -> Certificate:
    return authority.issue("receiver", ("localhost", "127.0.0.1"))


@pytest.fixture(scope="module")
def collector_certificate(authority: Authority) -> Certificate:
    return authority.issue("collector", (SERVICE_NAME,))


@pytest.fixture(scope="module")
def agent_certificate(authority: Authority) -> Certificate:
    return authority.issue("agent")


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def counts() -> IntakeCounts:
    return IntakeCounts()


@asynccontextmanager
async def started(receiver: Any) -> AsyncIterator[Any]:
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()


def sink_settings(endpoint: str, **tls: Any) -> CollectorSinkConfig:
    return CollectorSinkConfig.model_validate(
        {
            "endpoint": endpoint,
            "compression": "gzip",
            "batch": {"flush_interval": "10ms"},
            "retry": {"initial_backoff": "10ms", "max_backoff": "100ms", "max_elapsed": "1s"},
            "timeout": "2s",
            "tls": {"enabled": True, **{key: str(value) for key, value in tls.items()}},
        }
    )


def batch(spans: int) -> list[ResourceSpans]:
    resource = ResourceSpans()
    scope = resource.scope_spans.add()
    for _ in range(spans):
        scope.spans.add(trace_id=os.urandom(16), span_id=os.urandom(8), name="op")
    return [resource]


@asynccontextmanager
async def exporter_for(settings: CollectorSinkConfig) -> AsyncIterator[CollectorExporter]:
    """The agent's exporter with its replicas resolved the way the agent does, from a
    lookup that answers loopback for the Service's name."""

    async def lookup(host: str, port: int) -> list[str]:
        assert host == SERVICE_NAME
        return ["127.0.0.1"]

    exporter = CollectorExporter(settings)
    resolver = EndpointResolver(
        settings.endpoint, settings.endpoints, 60.0, exporter.set_endpoints, lookup
    )
    resolving = asyncio.create_task(resolver.run())
    try:
        await asyncio.wait_for(resolver.resolved.wait(), 5)
        yield exporter
    finally:
        resolving.cancel()
        await exporter.drain(0)


async def test_sdk_clients_send_over_tls_to_both_receivers(
    authority: Authority,
    server: Certificate,
    recorder: Recorder,
    counts: IntakeCounts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The SDK's OTLP/gRPC exporter with the CA as its root, and its OTLP/HTTP exporter
    to an https URL with the CA as `certificate_file`, deliver every span unchanged."""
    # requests lets these variables override the exporter's own CA (psf/requests#3829)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    tls = ServerTlsConfig(cert_file=server.cert_file, key_file=server.key_file)
    grpc_receiver = OtlpGrpcReceiver("127.0.0.1:0", recorder, counts, tls=tls)
    http_receiver = HttpSpanReceiver(
        "127.0.0.1:0", recorder, counts, otlp_routes=True, zipkin_routes=False, tls=tls
    )
    await grpc_receiver.start()
    await http_receiver.start()
    try:
        credentials = grpc.ssl_channel_credentials(authority.ca_file.read_bytes())
        sent = [*sdk_spans(5, "over-grpc"), *sdk_spans(5, "over-http")]
        exporters = [
            GrpcSpanExporter(endpoint=f"localhost:{grpc_receiver.port}", credentials=credentials),
            HttpSpanExporter(
                endpoint=f"https://localhost:{http_receiver.port}/v1/traces",
                certificate_file=str(authority.ca_file),
            ),
        ]
        for exporter, spans in zip(exporters, (sent[:5], sent[5:]), strict=True):
            assert await asyncio.to_thread(exporter.export, spans) is SpanExportResult.SUCCESS
            exporter.shutdown()
    finally:
        await grpc_receiver.stop()
        await http_receiver.stop()
    received = {span.span_id: span for _, span in recorder.spans()}
    for span in sent:
        assert span.context is not None
        assert_same_span(span, received[span.context.span_id.to_bytes(8, "big")])
    assert counts.spans_accepted == {"otlp_grpc": 5, "otlp_http": 5}


async def test_plaintext_sender_gets_nothing_through_a_tls_port(
    server: Certificate, recorder: Recorder, counts: IntakeCounts
) -> None:
    tls = ServerTlsConfig(cert_file=server.cert_file, key_file=server.key_file)
    async with started(OtlpGrpcReceiver("127.0.0.1:0", recorder, counts, tls=tls)) as receiver:
        exporter = GrpcSpanExporter(endpoint=f"127.0.0.1:{receiver.port}", insecure=True, timeout=2)
        result = await asyncio.to_thread(exporter.export, sdk_spans(2))
        exporter.shutdown()
        assert result is SpanExportResult.FAILURE
    assert recorder.spans() == []


async def test_agent_exports_to_the_collector_over_mutual_tls(
    authority: Authority,
    collector_certificate: Certificate,
    agent_certificate: Certificate,
    recorder: Recorder,
    counts: IntakeCounts,
) -> None:
    """The collector's receiver requires a client certificate; the agent presents its
    own, dials the replica by IP and checks the certificate against the Service's name."""
    tls = ServerTlsConfig(
        cert_file=collector_certificate.cert_file,
        key_file=collector_certificate.key_file,
        client_ca_file=authority.ca_file,
    )
    async with started(OtlpGrpcReceiver("127.0.0.1:0", recorder, counts, tls=tls)) as receiver:
        settings = sink_settings(
            f"{SERVICE_NAME}:{receiver.port}",
            ca_file=authority.ca_file,
            cert_file=agent_certificate.cert_file,
            key_file=agent_certificate.key_file,
        )
        async with exporter_for(settings) as exporter:
            assert exporter.replicas.keys() == {f"127.0.0.1:{receiver.port}"}
            assert exporter.submit(batch(30))
            await until(lambda: exporter.counts.exported == 30)
            assert not exporter.counts.dropped
    assert len(recorder.spans()) == 30
    assert counts.spans_accepted["otlp_grpc"] == 30


@pytest.mark.parametrize("wrong", ["no client certificate", "another CA"])
async def test_a_refused_handshake_is_logged_at_once_and_nothing_arrives(
    tmp_path: Path,
    authority: Authority,
    collector_certificate: Certificate,
    agent_certificate: Certificate,
    recorder: Recorder,
    counts: IntakeCounts,
    caplog: pytest.LogCaptureFixture,
    wrong: str,
) -> None:
    """Without the client certificate the collector requires, or trusting a CA that did
    not sign the collector's: nothing is delivered, a warning names the replica and the
    TLS failure while retrying, and the spans are counted when retries run out."""
    tls = ServerTlsConfig(
        cert_file=collector_certificate.cert_file,
        key_file=collector_certificate.key_file,
        client_ca_file=authority.ca_file,
    )
    client: dict[str, Any] = {"ca_file": authority.ca_file}
    if wrong == "another CA":
        client = {
            "ca_file": new_authority(tmp_path / "other").ca_file,
            "cert_file": agent_certificate.cert_file,
            "key_file": agent_certificate.key_file,
        }
    caplog.set_level(logging.WARNING, "observer.agent.spans.exporter")
    async with (
        started(OtlpGrpcReceiver("127.0.0.1:0", recorder, counts, tls=tls)) as receiver,
        exporter_for(sink_settings(f"{SERVICE_NAME}:{receiver.port}", **client)) as exporter,
    ):
        assert exporter.submit(batch(4))
        await until(lambda: exporter.counts.dropped["retries_exhausted"] == 4)
    assert recorder.spans() == []
    [retrying] = [r for r in caplog.records if r.getMessage().startswith("Export to a collector")]
    assert retrying.replica == f"127.0.0.1:{receiver.port}"  # type: ignore[attr-defined]
    assert "UNAVAILABLE" in retrying.detail  # type: ignore[attr-defined]
    if wrong == "another CA":  # without a client certificate, TLS 1.3 shows "Socket closed"
        assert "CERTIFICATE_VERIFY_FAILED" in retrying.detail  # type: ignore[attr-defined]


def test_unusable_tls_files_stop_the_start_with_the_setting_named(
    tmp_path: Path, authority: Authority, server: Certificate, agent_certificate: Certificate
) -> None:
    missing = tmp_path / "missing.crt"
    with pytest.raises(
        TlsFileError, match=r"sinks\.collector\.tls\.ca_file .*missing\.crt: cannot be read"
    ):
        CollectorExporter(sink_settings("collector:4317", ca_file=missing))
    with pytest.raises(TlsFileError, match=r"sinks\.collector\.tls\.cert_file .* and key_file .*"):
        CollectorExporter(
            sink_settings(
                "collector:4317",
                cert_file=agent_certificate.cert_file,
                key_file=server.key_file,  # another certificate's key
            )
        )
    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("not a certificate\n")
    with pytest.raises(TlsFileError, match=r"ca_file .*ca\.txt: no PEM CA certificate"):
        CollectorExporter(sink_settings("collector:4317", ca_file=not_pem))
