"""A real Prometheus scrapes real agent and collector processes, and PromQL answers what
happened: the log lines written, the shop's calls, the probe failures and restarts posted.

One run for the module: `observer collector` and two `observer agent` processes on
127.0.0.1, scraped every second as the jobs "observer-agent" and "observer-collector".
Agent A follows a kubelet-style pod log tree and the real kube-apiserver (pod metadata,
the kubelet's Events and pod status for its node); both agents take the shop's spans
(tests/services/shop.py: frontend and payments to A, checkout to B) and route them to the
collector. The test plays the kubelet for one pod of a Deployment: it writes known lines
at known levels to the pod's log, posts Unhealthy Events, and reports two container
restarts (one an OOM kill). Each test polls one PromQL query until the answer settles
(everything arrives asynchronously) and compares it with what was done.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from observer.config import KubernetesConfig
from observer.kube.client import KubeApi
from observer.testing import ContainerLog, PodLogTree
from tests.e2e.test_collector_process import (
    Process,
    agent_yaml,
    collector_yaml,
    start_observer,
    stop,
    wait_ready,
)
from tests.integration.test_kube_events import kubelet_event, repeat
from tests.integration.test_pod_metadata import MERGE_PATCH, create, deployment_pod
from tests.services import kubernetes
from tests.services.process import free_port
from tests.services.prometheus import Prometheus
from tests.services.shop import SPANS_PER_ORDER, start_shop

# Job names of this module's own: the session's Prometheus still holds other tests'
# `observer-agent` series for its 5-minute lookback, and these queries must not see them.
AGENT_JOB = "observer-agent-scrape-test"
COLLECTOR_JOB = "observer-collector-scrape-test"
WORKLOAD = "deployment/web"
"""The workload of the pod `deployment_pod` creates: web-5d8f7-x2b9q ← ReplicaSet ← web."""
ORDERS = 9
FAIL_EVERY = 3
"""Payments fails orders 0, 3 and 6 with a 500; checkout still answers the frontend 200."""
FAILED_ORDERS = len(range(0, ORDERS, FAIL_EVERY))
SETTLE_TIMEOUT = 30.0
STATE_TIMEOUT = 30.0

LOG_LINES: tuple[tuple[str, str | None, str, int], ...] = (
    # stream, the "level" the line carries (None: a plain-text line), the level counted, lines
    ("stdout", "info", "info", 7),
    ("stdout", "INFO", "info", 2),
    ("stdout", "warn", "warn", 2),
    ("stdout", "WARNING", "warn", 3),
    ("stdout", "debug", "debug", 1),
    ("stdout", None, "unknown", 4),
    ("stderr", "error", "error", 5),
    ("stderr", "fatal", "fatal", 1),
    ("stderr", "trace", "trace", 1),
    ("stderr", "audit", "other", 2),
    ("stderr", None, "unknown", 2),
)
TRACEBACK = (
    "Traceback (most recent call last):",
    '  File "/app/worker.py", line 12, in handle',
    "    payload = json.loads(body)",
    "ValueError: bad payload",
)
"""Written to stderr: four lines that the agent joins into one record without a level."""


def expected_records() -> Counter[tuple[str, str]]:
    """Records by (stream, level): the lines of `LOG_LINES`, and the traceback once."""
    records: Counter[tuple[str, str]] = Counter()
    for stream, _, counted, lines in LOG_LINES:
        records[(stream, counted)] += lines
    records[("stderr", "unknown")] += 1
    return records


READINESS_EVENTS = {"web-5d8f7-x2b9q.17f3a9c2b1d4e5f6": 3, "web-5d8f7-x2b9q.17f3a9c2b1d4e700": 1}
"""Unhealthy readiness Events by name, and the count each reaches (one occurrence each)."""
LIVENESS_EVENTS = {"web-5d8f7-x2b9q.17f3a9c2b1d4e800": 1}
LIVENESS_MESSAGE = "Liveness probe failed: Get http://10.244.1.17:8080/healthz: EOF"
RESTARTS = {"app": ("OOMKilled", 137), "sidecar": ("Error", 1)}
"""Each container's previous run, reported ended in the pod's status: reason, exit code."""

Answer = dict[tuple[str, ...], float]


@dataclass
class Scenario:
    prometheus: Prometheus
    namespace: str

    async def settled(
        self, promql: str, labels: tuple[str, ...], expected: Answer, within: float = SETTLE_TIMEOUT
    ) -> Answer:
        """Poll `promql` until its answer, keyed by `labels`, equals `expected` or `within`
        seconds pass; the last answer either way, for the test to compare."""
        deadline = time.monotonic() + within
        while True:
            result = await asyncio.to_thread(self.prometheus.query, promql)
            answer = {
                tuple(sample["metric"].get(label, "") for label in labels): float(
                    sample["value"][1]
                )
                for sample in result
            }
            if answer == expected or time.monotonic() > deadline:
                return answer
            await asyncio.sleep(0.5)


# --- playing the kubelet --------------------------------------------------------------------


def write_pod_logs(log: ContainerLog) -> None:
    """The lines of `LOG_LINES`, and the traceback amid the stderr ones."""
    numbers = itertools.count()
    for stream, level, _, lines in LOG_LINES:
        if stream == "stderr" and level == "fatal":
            log.write(TRACEBACK, "stderr")
        bodies = [
            f"plain {stream} line {next(numbers)}"
            if level is None
            else json.dumps({"level": level, "msg": f"{stream} line {next(numbers)}"})
            for _ in range(lines)
        ]
        log.write(bodies, stream)


async def post_probe_failures(api: KubeApi, namespace: str, pod: dict[str, Any], node: str) -> None:
    """Create each Event with count 1 and raise its count one by one, as the kubelet does."""
    events = f"/api/v1/namespaces/{namespace}/events"
    for name, count in READINESS_EVENTS.items():
        await create(api, events, kubelet_event(namespace, pod, node, name))
        for repeated in range(2, count + 1):
            await repeat(api, namespace, name, repeated)
    for name, count in LIVENESS_EVENTS.items():
        await create(
            api, events, {**kubelet_event(namespace, pod, node, name), "message": LIVENESS_MESSAGE}
        )
        for repeated in range(2, count + 1):
            await repeat(api, namespace, name, repeated)


async def report_restarts(api: KubeApi, namespace: str, pod: dict[str, Any]) -> None:
    """The status the kubelet writes after each container's run ended and it started again."""
    images = {container["name"]: container["image"] for container in pod["spec"]["containers"]}
    statuses = [
        {
            "name": name,
            "ready": True,
            "restartCount": 1,
            "image": images[name],
            "imageID": f"{images[name]}@sha256:{'0' * 64}",
            "containerID": f"containerd://{name}{'cd' * 20}",
            "state": {"running": {"startedAt": "2026-01-01T00:05:00Z"}},
            "lastState": {
                "terminated": {
                    "reason": reason,
                    "exitCode": exit_code,
                    "containerID": f"containerd://{name}{'ab' * 20}",
                    "startedAt": "2026-01-01T00:00:00Z",
                    "finishedAt": "2026-01-01T00:04:59Z",
                }
            },
        }
        for name, (reason, exit_code) in RESTARTS.items()
    ]
    await api.request(
        "patch",
        "PATCH",
        f"/api/v1/namespaces/{namespace}/pods/{pod['metadata']['name']}/status",
        body={"status": {"containerStatuses": statuses}},
        content_type=MERGE_PATCH,
    )


async def until_exists(path: Path, process: Process) -> None:
    deadline = time.monotonic() + STATE_TIMEOUT
    while not await asyncio.to_thread(path.exists):
        if time.monotonic() > deadline or process.process.returncode is not None:
            pytest.fail(f"{path.name} never appeared; {process.name}'s log:\n{process.log()}")
        await asyncio.sleep(0.1)


# --- the run --------------------------------------------------------------------------------


def kube_agent_yaml(
    directory: Path, node: str, kubeconfig: Path, ports: dict[str, int], collector: str
) -> str:
    """Agent A: pod logs, the API server's metadata and Events for `node`, and spans."""
    return f"""\
node_name: {node}
state_dir: {directory / "state"}
telemetry: {{listen: '127.0.0.1:{ports["telemetry"]}'}}
kubernetes: {{kubeconfig: {kubeconfig}}}
sources:
  pod_logs: {{root: {directory / "pods"}, poll_interval: 50ms}}
  spans:
    enabled: true
    otlp_grpc: {{listen: '127.0.0.1:{ports["otlp"]}'}}
    otlp_http: {{enabled: false}}
    zipkin: {{enabled: false}}
sinks:
  elasticsearch: null
  file: {{path: {directory / "records.jsonl"}}}
  collector:
    endpoints: ['{collector}']
    batch: {{flush_interval: 100ms}}
"""


@pytest.fixture(scope="module")
async def scenario(
    tmp_path_factory: pytest.TempPathFactory,
    kube_cluster: kubernetes.KubeCluster,
    prometheus_server: Prometheus,
) -> AsyncIterator[Scenario]:
    kube_cluster.ensure_running()
    prometheus_server.ensure_running()
    directory = tmp_path_factory.mktemp("prometheus-scrape")
    namespace = kubernetes.create_namespace(kube_cluster, "prometheus-scrape")
    node = f"node-{namespace}"
    api = KubeApi.connect(KubernetesConfig(kubeconfig=kube_cluster.kubeconfig))
    tree = PodLogTree(directory / "agent-a" / "pods")
    processes: list[Process] = []
    shop = None
    try:
        # The pod and its owners exist before the agent starts: its first sync names the workload.
        pod = await deployment_pod(api, namespace, node)

        ports = {name: free_port() for name in ("telemetry", "otlp_grpc", "otlp_http", "query")}
        (directory / "collector.yaml").write_text(collector_yaml(directory, ports))
        collector_otlp = f"127.0.0.1:{ports['otlp_grpc']}"
        agent_a = {"telemetry": free_port(), "otlp": free_port()}
        agent_b = {"telemetry": free_port(), "otlp": free_port()}
        (directory / "agent-a.yaml").write_text(
            kube_agent_yaml(
                directory / "agent-a", node, kube_cluster.kubeconfig, agent_a, collector_otlp
            )
        )
        (directory / "agent-b.yaml").write_text(
            agent_yaml(directory / "agent-b", agent_b["telemetry"], agent_b["otlp"], collector_otlp)
        )
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            collector = await start_observer(
                directory, "collector", "collector", "--config", str(directory / "collector.yaml")
            )
            processes.append(collector)
            await wait_ready(http, collector, f"http://127.0.0.1:{ports['telemetry']}/readyz")
            for name, agent in (("agent-a", agent_a), ("agent-b", agent_b)):
                config = directory / f"{name}.yaml"
                processes.append(
                    await start_observer(directory, name, "agent", "--config", str(config))
                )
                await wait_ready(
                    http, processes[-1], f"http://127.0.0.1:{agent['telemetry']}/readyz"
                )
            prometheus_server.configure(
                jobs={
                    AGENT_JOB: [
                        f"127.0.0.1:{agent_a['telemetry']}",
                        f"127.0.0.1:{agent_b['telemetry']}",
                    ],
                    COLLECTOR_JOB: [f"127.0.0.1:{ports['telemetry']}"],
                }
            )

            write_pod_logs(
                tree.container(namespace, pod["metadata"]["name"], "app", pod["metadata"]["uid"])
            )
            # Events that exist when the agent first lists them happened before it looked and
            # are not counted: post them once its Events watch has saved where it stands.
            await until_exists(directory / "agent-a" / "state" / "kube-events.json", processes[1])
            await post_probe_failures(api, namespace, pod, node)
            await report_restarts(api, namespace, pod)

            shop = await start_shop(
                directory,
                {
                    "frontend": f"127.0.0.1:{agent_a['otlp']}",
                    "checkout": f"127.0.0.1:{agent_b['otlp']}",
                    "payments": f"127.0.0.1:{agent_a['otlp']}",
                },
                FAIL_EVERY,
            )
            statuses = [await shop.order(http, order) for order in range(ORDERS)]
            assert statuses == [200] * ORDERS
            await shop.stop()  # every service exports what it holds as it stops

        yield Scenario(prometheus_server, namespace)
    finally:
        if shop is not None:
            await shop.stop()
        for process in reversed(processes):  # agents first: they deliver to the collector
            await stop(process)
        tree.close()
        await api.close()
        prometheus_server.configure()
        kubernetes.delete_namespace(kube_cluster, namespace)


# --- the tests ------------------------------------------------------------------------------


async def test_both_jobs_are_up(scenario: Scenario) -> None:
    """Prometheus scrapes both agents and the collector successfully: `up` is 1 for each target."""
    expected: Answer = {(AGENT_JOB,): 2, (COLLECTOR_JOB,): 1}
    answer = await scenario.settled(
        f'count by (job) (up{{job=~"{AGENT_JOB}|{COLLECTOR_JOB}"}} == 1)', ("job",), expected
    )
    assert answer == expected


async def test_build_info_names_each_deployable(scenario: Scenario) -> None:
    """observer_build_info says "agent" on every agent target and "collector" on the collector's."""
    expected: Answer = {(AGENT_JOB, "agent"): 2, (COLLECTOR_JOB, "collector"): 1}
    answer = await scenario.settled(
        f'count by (job, deployable) (observer_build_info{{job=~"{AGENT_JOB}|{COLLECTOR_JOB}"}} == 1)',
        ("job", "deployable"),
        expected,
    )
    assert answer == expected


async def test_log_records_by_level_are_the_lines_written(scenario: Scenario) -> None:
    """observer_log_records_total by namespace, workload, stream and level is exactly what was
    written to the Deployment's pod: JSON levels normalised, plain lines and the traceback "unknown"."""
    expected: Answer = {
        (scenario.namespace, WORKLOAD, stream, level): float(lines)
        for (stream, level), lines in expected_records().items()
    }
    answer = await scenario.settled(
        "sum by (namespace, workload, stream, level) "
        f'(observer_log_records_total{{job="{AGENT_JOB}"}})',
        ("namespace", "workload", "stream", "level"),
        expected,
    )
    assert answer == expected


async def test_lines_read_agree_with_the_records(scenario: Scenario) -> None:
    """observer_log_lines_read_total over the agents is the lines written, the traceback's four as one."""
    expected: Answer = {(): float(sum(expected_records().values()))}
    answer = await scenario.settled(
        f'sum(observer_log_lines_read_total{{job="{AGENT_JOB}"}})', (), expected
    )
    assert answer == expected


async def test_service_graph_counts_the_calls_made(scenario: Scenario) -> None:
    """traces_service_graph_request_total is one per order on each edge of the shop."""
    expected: Answer = {("frontend", "checkout"): ORDERS, ("checkout", "payments"): ORDERS}
    answer = await scenario.settled(
        f'sum by (client, server) (traces_service_graph_request_total{{job="{COLLECTOR_JOB}"}})',
        ("client", "server"),
        expected,
    )
    assert answer == expected


async def test_service_graph_counts_the_failed_calls(scenario: Scenario) -> None:
    """traces_service_graph_request_failed_total is the failed payments on checkout → payments, none elsewhere."""
    expected: Answer = {("checkout", "payments"): FAILED_ORDERS}
    answer = await scenario.settled(
        "sum by (client, server) "
        f'(traces_service_graph_request_failed_total{{job="{COLLECTOR_JOB}"}}) > 0',
        ("client", "server"),
        expected,
    )
    assert answer == expected


async def test_span_metrics_count_every_call_by_service_and_kind(scenario: Scenario) -> None:
    """traces_spanmetrics_calls_total: one server span per order in each service, one client span per outgoing call."""
    expected: Answer = {
        ("frontend", "SPAN_KIND_SERVER"): ORDERS,
        ("checkout", "SPAN_KIND_SERVER"): ORDERS,
        ("payments", "SPAN_KIND_SERVER"): ORDERS,
        ("frontend", "SPAN_KIND_CLIENT"): ORDERS,
        ("checkout", "SPAN_KIND_CLIENT"): ORDERS,
    }
    answer = await scenario.settled(
        f'sum by (service, span_kind) (traces_spanmetrics_calls_total{{job="{COLLECTOR_JOB}"}})',
        ("service", "span_kind"),
        expected,
    )
    assert answer == expected


async def test_span_metrics_count_the_failed_payments_as_errors(scenario: Scenario) -> None:
    """traces_spanmetrics_calls_total with STATUS_CODE_ERROR is the failed orders, on payments' server and checkout's client spans only."""
    expected: Answer = {
        ("payments", "SPAN_KIND_SERVER"): FAILED_ORDERS,
        ("checkout", "SPAN_KIND_CLIENT"): FAILED_ORDERS,
    }
    answer = await scenario.settled(
        "sum by (service, span_kind) (traces_spanmetrics_calls_total"
        f'{{job="{COLLECTOR_JOB}", status_code="STATUS_CODE_ERROR"}})',
        ("service", "span_kind"),
        expected,
    )
    assert answer == expected


async def test_spans_exported_by_the_agents_are_the_spans_the_collector_assembled(
    scenario: Scenario,
) -> None:
    """Spans the agents say the collector acknowledged, and spans the collector says it assembled, are both every span the shop sent."""
    sent: Answer = {(): float(ORDERS * SPANS_PER_ORDER)}
    exported = await scenario.settled(
        f'sum(observer_spans_exported_total{{job="{AGENT_JOB}"}})', (), sent
    )
    assembled = await scenario.settled(
        f'sum(observer_trace_spans_total{{job="{COLLECTOR_JOB}", outcome="assembled"}})',
        (),
        sent,
    )
    assert (exported, assembled) == (sent, sent)


async def test_probe_failures_count_every_occurrence_posted(scenario: Scenario) -> None:
    """observer_probe_failures_total is each Unhealthy Event's occurrences (a count raised to 3 is 3), by probe kind, for the Deployment."""
    expected: Answer = {
        (scenario.namespace, WORKLOAD, "readiness"): float(sum(READINESS_EVENTS.values())),
        (scenario.namespace, WORKLOAD, "liveness"): float(sum(LIVENESS_EVENTS.values())),
    }
    answer = await scenario.settled(
        f'sum by (namespace, workload, probe) (observer_probe_failures_total{{job="{AGENT_JOB}"}})',
        ("namespace", "workload", "probe"),
        expected,
    )
    assert answer == expected


async def test_container_restarts_are_counted_by_reason(scenario: Scenario) -> None:
    """observer_container_restarts_total counts each container restart reported in pod status under the reason its run ended."""
    expected: Answer = {
        (scenario.namespace, WORKLOAD, reason): 1.0 for reason, _ in RESTARTS.values()
    }
    answer = await scenario.settled(
        "sum by (namespace, workload, reason) "
        f'(observer_container_restarts_total{{job="{AGENT_JOB}"}})',
        ("namespace", "workload", "reason"),
        expected,
    )
    assert answer == expected


async def test_oom_kills_count_only_the_oom_killed_run(scenario: Scenario) -> None:
    """observer_container_oom_kills_total is 1: the app's run that ended OOMKilled, not the sidecar's error exit."""
    expected: Answer = {(scenario.namespace, WORKLOAD): 1.0}
    answer = await scenario.settled(
        f'sum by (namespace, workload) (observer_container_oom_kills_total{{job="{AGENT_JOB}"}})',
        ("namespace", "workload"),
        expected,
    )
    assert answer == expected
