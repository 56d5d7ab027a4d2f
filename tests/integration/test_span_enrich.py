"""The agent's span path as wired in `observer agent`: real SDK clients send to it, pod
identity comes from the real kube-apiserver, and a collector stand-in records what arrives."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export import SpanExportResult
from prometheus_client import CollectorRegistry

from observer.agent import app
from observer.config import AgentConfig
from observer.kube.client import KubeApi
from observer.receivers import IntakeCounts
from observer.receivers.otlp_grpc import OtlpGrpcReceiver
from tests.integration.polling import until
from tests.integration.span_support import Recorder, assert_same_span, attributes, sdk_spans
from tests.integration.test_pod_metadata import deployment_pod, set_running
from tests.services.kubernetes import KubeCluster
from tests.services.process import free_port

K8S_KEYS = ("k8s.namespace.name", "k8s.pod.name", "k8s.pod.uid", "k8s.node.name")


@pytest.fixture
async def collector() -> AsyncIterator[tuple[OtlpGrpcReceiver, Recorder]]:
    recorder = Recorder()
    receiver = OtlpGrpcReceiver("127.0.0.1:0", recorder, IntakeCounts())
    await receiver.start()
    yield receiver, recorder
    await receiver.stop()


def agent_config(
    tmp_path: Path, node_name: str, collector_port: int, kubernetes: dict[str, Any]
) -> tuple[AgentConfig, int, int]:
    grpc_port, http_port = free_port(), free_port()
    config = AgentConfig.model_validate(
        {
            "node_name": node_name,
            "state_dir": str(tmp_path / "state"),
            "telemetry": {"listen": "127.0.0.1:0"},
            "kubernetes": kubernetes,
            "sources": {
                "pod_logs": {"root": str(tmp_path / "pods")},
                "kube_events": {"enabled": False},
                "spans": {
                    "enabled": True,
                    "otlp_grpc": {"listen": f"127.0.0.1:{grpc_port}"},
                    "otlp_http": {"listen": f"127.0.0.1:{http_port}"},
                    "zipkin": {"enabled": False},
                },
            },
            "sinks": {
                "elasticsearch": None,
                "file": {"path": str(tmp_path / "out.jsonl")},
                "collector": {
                    "endpoints": [f"127.0.0.1:{collector_port}"],
                    "batch": {"flush_interval": "20ms"},
                },
            },
        }
    )
    return config, grpc_port, http_port


@contextlib.asynccontextmanager
async def running(config: AgentConfig, registry: CollectorRegistry) -> AsyncIterator[None]:
    stop = asyncio.Event()
    agent = asyncio.create_task(app.run(config, once=False, stop=stop, registry=registry))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(agent, 30)


async def test_sdk_spans_arrive_unchanged_with_the_senders_pod_identity(
    tmp_path: Path,
    api: KubeApi,
    kube: KubeCluster,
    kube_namespace: str,
    node: str,
    collector: tuple[OtlpGrpcReceiver, Recorder],
) -> None:
    """Spans from the SDK's gRPC and HTTP exporters, sent from the address of a Deployment's
    pod, reach the collector unchanged, their resource given the pod's namespace, name, uid,
    node, ReplicaSet and Deployment."""
    pod = await deployment_pod(api, kube_namespace, node)
    await set_running(api, kube_namespace, "web-5d8f7-x2b9q", "127.0.0.1")
    receiver, recorder = collector
    registry = CollectorRegistry()
    config, grpc_port, http_port = agent_config(
        tmp_path, node, receiver.port, {"kubeconfig": str(kube.kubeconfig)}
    )
    sent = [*sdk_spans(10, "checkout"), *sdk_spans(10, "checkout")]
    async with running(config, registry):
        await until(
            lambda: registry.get_sample_value(
                "observer_kubernetes_cache_objects", {"resource": "owners"}
            ),
            within=20,
        )
        grpc_exporter = GrpcSpanExporter(endpoint=f"127.0.0.1:{grpc_port}", insecure=True)
        http_exporter = HttpSpanExporter(endpoint=f"http://127.0.0.1:{http_port}/v1/traces")
        assert await asyncio.to_thread(grpc_exporter.export, sent[:10]) is SpanExportResult.SUCCESS
        assert await asyncio.to_thread(http_exporter.export, sent[10:]) is SpanExportResult.SUCCESS
        grpc_exporter.shutdown()
        http_exporter.shutdown()
        await recorder.wait_for(20)
        assert registry.get_sample_value("observer_spans_enriched_total") == 20
    received = {span.span_id: (resource, span) for resource, span in recorder.spans()}
    for span in sent:
        assert span.context is not None
        resource, arrived = received[span.context.span_id.to_bytes(8, "big")]
        assert_same_span(span, arrived)
        resource_attributes = attributes(resource.resource.attributes)
        sdk_resource = dict(span.resource.attributes)
        assert {k: resource_attributes[k] for k in sdk_resource} == sdk_resource
        assert {k: v for k, v in resource_attributes.items() if k not in sdk_resource} == {
            "k8s.namespace.name": kube_namespace,
            "k8s.pod.name": "web-5d8f7-x2b9q",
            "k8s.pod.uid": pod["metadata"]["uid"],
            "k8s.node.name": node,
            "k8s.replicaset.name": "web-5d8f7",
            "k8s.deployment.name": "web",
        }


async def test_forwarded_spans_take_the_pod_named_by_their_k8s_pod_uid(
    tmp_path: Path,
    api: KubeApi,
    kube: KubeCluster,
    kube_namespace: str,
    node: str,
    collector: tuple[OtlpGrpcReceiver, Recorder],
) -> None:
    """A resource that names its pod by `k8s.pod.uid` (a gateway forwarding) gets that pod's
    identity, not the sender's, and keeps what it already said."""
    pod = await deployment_pod(api, kube_namespace, node)
    receiver, recorder = collector
    registry = CollectorRegistry()
    config, grpc_port, _ = agent_config(
        tmp_path, node, receiver.port, {"kubeconfig": str(kube.kubeconfig)}
    )
    request = ExportTraceServiceRequest()
    resource = request.resource_spans.add()
    for key, value in (("k8s.pod.uid", pod["metadata"]["uid"]), ("k8s.pod.name", "as-sent")):
        resource.resource.attributes.add(key=key).value.string_value = value
    resource.scope_spans.add().spans.add(
        trace_id=os.urandom(16), span_id=os.urandom(8), name="forwarded"
    )
    async with running(config, registry):
        await until(
            lambda: registry.get_sample_value(
                "observer_kubernetes_cache_objects", {"resource": "owners"}
            ),
            within=20,
        )
        from tests.integration.test_span_receivers import grpc_call

        await grpc_call(grpc_port, request.SerializeToString())
        await recorder.wait_for(1)
    [(arrived, _)] = recorder.spans()
    found = attributes(arrived.resource.attributes)
    assert found["k8s.pod.name"] == "as-sent"
    assert found["k8s.namespace.name"] == kube_namespace
    assert found["k8s.deployment.name"] == "web"


async def test_without_the_api_server_spans_pass_unenriched_and_counted(
    tmp_path: Path, collector: tuple[OtlpGrpcReceiver, Recorder]
) -> None:
    """With Kubernetes metadata off, spans still reach the collector, counted as unenriched."""
    receiver, recorder = collector
    registry = CollectorRegistry()
    config, grpc_port, _ = agent_config(tmp_path, "node-x", receiver.port, {"enabled": False})
    sent = sdk_spans(5)
    async with running(config, registry):
        exporter = GrpcSpanExporter(endpoint=f"127.0.0.1:{grpc_port}", insecure=True)
        assert await asyncio.to_thread(exporter.export, sent) is SpanExportResult.SUCCESS
        exporter.shutdown()
        await recorder.wait_for(5)
        assert (
            registry.get_sample_value("observer_spans_unenriched_total", {"reason": "no_metadata"})
            == 5
        )
    for resource, _ in recorder.spans():
        assert not set(attributes(resource.resource.attributes)) & set(K8S_KEYS)
