"""One real fault per important alert, end to end: `observer agent` as a process, a real
Prometheus scraping it and evaluating dashboards/alerts/observer.rules.yaml, a real
Alertmanager delivering to a webhook served by the test.

- Elasticsearch (a node of the test's own) stops while lines keep coming:
  ObserverShippingStalled fires and reaches the webhook; Elasticsearch starts again: it
  resolves, and every line written is stored once.
- The kubelet's readiness-probe Events for a Deployment's pod (posted through the real
  kube-apiserver, the count growing as client-go's correlator does): ObserverReadinessProbeFailing
  fires with that namespace and workload; the Events stop: it resolves.

Time is compressed: the rules are rendered into tmp_path with every duration divided by
60 (`for: 5m` → `for: 5s`, `[10m]` → `[10s]`, `offset 10m` → `offset 10s`). The rules'
timing is what `promtool test rules` covers (dashboards/alerts/tests/); these tests prove
the expressions fire, and stop firing, over the real metrics of real processes, which
synthetic promtool series cannot. Compression leaves numbers alone: thresholds on counts
(`increase(...) > 0`) keep their meaning, and per-second rates are faster by the factor,
which the faults here produce anyway. A number compared with a `*_seconds` gauge would
stay at production scale: that is ObserverElasticsearchUnavailable (`> 300`),
ObserverCheckpointLagGrowing (`> 300`) and ObserverKubernetesMetadataStale (`> 600`), which
are not tested here; `compress_rules` refuses such a rule, and neither rule tested here
is one.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import time
import urllib.error
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from observer.agent.events import STATE_FILE
from observer.config import KubernetesConfig
from observer.kube.client import KubeApi
from observer.testing import ContainerLog, PodLogTree
from tests.e2e.alert_support import (
    RULES,
    AgentProcess,
    Webhook,
    compares_seconds,
    compress_expr,
    compress_rules,
    prometheus_alerts,
    situation,
)
from tests.integration.test_elasticsearch_resilience import stored_messages
from tests.integration.test_kube_events import kubelet_event
from tests.integration.test_pod_metadata import MERGE_PATCH, create, deployment_pod
from tests.services import elasticsearch
from tests.services.elasticsearch import Node
from tests.services.kubernetes import KubeCluster
from tests.services.process import free_port
from tests.services.prometheus import Alertmanager, Prometheus

FACTOR = 60  # a production minute is a test second
JOB = "observer-agent"
LOGS = "logs-kubernetes.container-default"
STALLED = "ObserverShippingStalled"
PROBE = "ObserverReadinessProbeFailing"
ALERT_WITHIN = 60.0


# --- the compression itself (pure) --------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "compressed"),
    [
        ("increase(x_total[10m]) > 0", "increase(x_total[10s]) > 0"),
        ("rate(x_total[1h]) / rate(y_total[5m])", "rate(x_total[1m]) / rate(y_total[5s])"),
        ("x > 0 unless x offset 15m", "x > 0 unless x offset 15s"),
        ("max_over_time(rate(x[5m])[1h:1m])", "max_over_time(rate(x[5s])[1m:1s])"),
        ("max_over_time(x[1h30m:])", "max_over_time(x[90s:])"),
        ("increase(x[30s]) > 300", "increase(x[500ms]) > 300"),
        ('up{job=~".*observer-agent.*"} == 0', 'up{job=~".*observer-agent.*"} == 0'),
    ],
)
def test_compress_expr_divides_every_duration_and_nothing_else(expr: str, compressed: str) -> None:
    """Range selectors, subquery ranges and steps, and offsets are divided by the factor; numbers are not."""
    assert compress_expr(expr, FACTOR) == compressed


@pytest.mark.parametrize(
    ("expr", "compares"),
    [
        ("observer_elasticsearch_unavailable_seconds > 300", True),
        ('max by (job) (observer_checkpoint_lag_seconds{job="a"}) > 600', True),
        ("600 < observer_checkpoint_lag_seconds", True),
        ("rate(observer_sink_blocked_seconds_total[5m]) > 0.5", False),
        ("and on (job, instance) observer_elasticsearch_unavailable_seconds", False),
    ],
)
def test_compares_seconds_finds_thresholds_that_are_durations(expr: str, compares: bool) -> None:
    """A number compared with a *_seconds gauge is found; a *_seconds_total rate or a bare join is not."""
    assert compares_seconds(expr) is compares


def test_compress_rules_keeps_the_named_alerts_with_scaled_for() -> None:
    """Only the named alerts are kept, their `for` divided; labels and annotations unchanged."""
    rules = {
        "groups": [
            {
                "name": "g",
                "rules": [
                    {
                        "alert": "A",
                        "expr": "increase(x[10m]) > 0",
                        "for": "5m",
                        "labels": {"s": "1"},
                    },
                    {"alert": "B", "expr": "y == 0", "for": "5m"},
                ],
            }
        ]
    }

    assert compress_rules(rules, FACTOR, {"A"}) == {
        "groups": [
            {
                "name": "g",
                "rules": [
                    {
                        "alert": "A",
                        "expr": "increase(x[10s]) > 0",
                        "for": "5s",
                        "labels": {"s": "1"},
                    }
                ],
            }
        ]
    }


def test_compress_rules_refuses_a_seconds_threshold_and_a_missing_alert() -> None:
    """A rule comparing a *_seconds gauge with a number, or an alert not in the file, is an error."""
    rules = {"groups": [{"name": "g", "rules": [{"alert": "U", "expr": "x_seconds > 300"}]}]}

    with pytest.raises(ValueError, match="U compares"):
        compress_rules(rules, FACTOR, {"U"})
    with pytest.raises(KeyError, match="Absent"):
        compress_rules(rules, FACTOR, {"Absent"})


# --- the real stack ----------------------------------------------------------------------


def render_rules(directory: Path, alert: str) -> Path:
    """The shipped rules file, reduced to `alert` and compressed, written for Prometheus."""
    try:
        rules = compress_rules(yaml.safe_load(RULES.read_text()), FACTOR, {alert})
    except KeyError:
        pytest.fail(f"{alert} is not in {RULES} (see issue 8's contract)", pytrace=False)
    path = directory / "compressed.rules.yaml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


@pytest.fixture
async def webhook(alertmanager: Alertmanager) -> AsyncIterator[Webhook]:
    """A webhook receiver that Alertmanager sends every alert to."""
    receiver = Webhook()
    await receiver.start()
    alertmanager.route_to_webhook(receiver.url)
    yield receiver
    await receiver.stop()


@pytest.fixture
def own_elasticsearch(tmp_path: Path) -> Iterator[Node]:
    """An Elasticsearch node of this test's own, since the test stops it."""
    node = elasticsearch.start(tmp_path / "elasticsearch")
    yield node
    node.stop()


async def notified(
    webhook: Webhook,
    alertname: str,
    status: str,
    labels: dict[str, str],
    describe: Callable[[], str],
    within: float = ALERT_WITHIN,
) -> dict[str, Any]:
    """The first alert notified to the webhook with that name, status and labels."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for alert in webhook.alerts(alertname, status):
            if labels.items() <= alert["labels"].items():
                return alert
        await asyncio.sleep(0.25)
    pytest.fail(
        f"no {status} {alertname} {labels} reached the webhook within {within:.0f} s:{describe()}",
        pytrace=False,
    )


def alerts_of(prometheus: Prometheus, alertname: str, agent: AgentProcess) -> list[dict[str, Any]]:
    """Prometheus' pending or firing `alertname` alerts about `agent`."""
    return [
        alert
        for alert in prometheus_alerts(prometheus)
        if alert["labels"]["alertname"] == alertname
        and alert["labels"].get("instance") == agent.instance
    ]


def stored_count(node: Node) -> int:
    try:
        node.request("POST", f"/{LOGS}/_refresh")
        return int(node.request("GET", f"/{LOGS}/_count")["count"])
    except (urllib.error.URLError, OSError):
        return 0


async def keep_writing(container: ContainerLog, written: list[str], stop: asyncio.Event) -> None:
    """Ten lines every 100 ms until `stop`, like a steadily logging workload."""
    while not stop.is_set():
        lines = [f"line {len(written) + i}" for i in range(10)]
        container.write(lines)
        written.extend(lines)
        await asyncio.sleep(0.1)


async def test_elasticsearch_stopped_fires_shipping_stalled_and_resolves_when_it_returns(
    tmp_path: Path,
    own_elasticsearch: Node,
    prometheus_instance: Prometheus,
    alertmanager: Alertmanager,
    webhook: Webhook,
) -> None:
    """Elasticsearch stopped under a logging workload: ObserverShippingStalled reaches the
    webhook firing, then resolved once Elasticsearch is back, and every line is stored once."""
    rules = render_rules(tmp_path, STALLED)
    tree = PodLogTree(tmp_path / "pods")
    container = tree.container("shop", "web-1", "app")
    agent = AgentProcess(tmp_path / "agent.yaml", free_port(), tmp_path / "agent.log")
    agent.config.write_text(
        "node_name: node-a\n"
        f"state_dir: {tmp_path / 'state'}\n"
        f"telemetry: {{listen: '{agent.instance}'}}\n"
        "kubernetes: {enabled: false}\n"
        f"sources: {{pod_logs: {{root: {tree.root}, poll_interval: 50ms}}, "
        "kube_events: {enabled: false}}\n"
        "sinks:\n"
        "  elasticsearch:\n"
        f"    hosts: ['{own_elasticsearch.url}']\n"
        "    request_timeout: 2s\n"
        "    retry: {initial_backoff: 50ms, max_backoff: 1s}\n"
        "    bulk: {flush_interval: 50ms}\n"
        "    setup: {number_of_replicas: 0}\n"
    )
    written: list[str] = []
    stop_writing = asyncio.Event()
    writer = asyncio.create_task(keep_writing(container, written, stop_writing))
    instance = {"job": JOB, "instance": agent.instance}
    try:
        await agent.start()
        prometheus_instance.configure(
            jobs={JOB: [agent.instance]}, rule_files=[rules], alertmanager=alertmanager.address
        )
        shipping = await prometheus_instance.wait_for(
            f'sum(increase(observer_elasticsearch_items_total{{instance="{agent.instance}",'
            'outcome!="retried"}[10s])) > 0'
        )

        def describe() -> str:
            return situation(prometheus_instance, agent, webhook)

        assert shipping, f"Prometheus never saw the agent ship:{describe()}"
        await asyncio.sleep(2)  # two evaluations over a healthy agent
        assert alerts_of(prometheus_instance, STALLED, agent) == [], describe()

        await asyncio.to_thread(own_elasticsearch.stop)
        firing = await notified(webhook, STALLED, "firing", instance, describe)
        await asyncio.to_thread(own_elasticsearch.restart)
        resolved = await notified(webhook, STALLED, "resolved", instance, describe)

        stop_writing.set()
        await writer
        deadline = time.monotonic() + 30
        while await asyncio.to_thread(stored_count, own_elasticsearch) < len(written):
            assert time.monotonic() < deadline, (
                f"{stored_count(own_elasticsearch)} of {len(written)} lines stored:{describe()}"
            )
            await asyncio.sleep(0.5)
        await asyncio.sleep(1)  # time for anything that would be a duplicate
    finally:
        stop_writing.set()
        await writer
        exit_code = await agent.stop()
        tree.close()

    assert firing["labels"]["severity"] == "critical"
    assert resolved["startsAt"] == firing["startsAt"]  # the same alert, ended
    messages = await asyncio.to_thread(stored_messages, own_elasticsearch)
    assert collections.Counter(messages) == collections.Counter(written)
    assert exit_code == 0, agent.log_tail()


async def post_readiness_failures(
    api: KubeApi, namespace: str, pod: dict[str, Any], node: str, stop: asyncio.Event
) -> int:
    """Play the kubelet failing a readiness probe every 250 ms until `stop`: one Unhealthy
    Event, then its count raised by one each time, as client-go's EventCorrelator does.
    Returns the number of failures posted."""
    name = f"{pod['metadata']['name']}.17f3a9c2b1d4e5f6"
    await create(
        api, f"/api/v1/namespaces/{namespace}/events", kubelet_event(namespace, pod, node, name)
    )
    first = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    count = 1
    while not stop.is_set():
        await asyncio.sleep(0.25)
        count += 1
        last = first + datetime.timedelta(seconds=10 * count)
        await api.request(
            "patch",
            "PATCH",
            f"/api/v1/namespaces/{namespace}/events/{name}",
            body={"count": count, "lastTimestamp": last.strftime("%Y-%m-%dT%H:%M:%SZ")},
            content_type=MERGE_PATCH,
        )
    return count


async def test_readiness_probe_failing_fires_the_probe_alert_and_resolves_when_it_stops(
    tmp_path: Path,
    kube: KubeCluster,
    kube_namespace: str,
    prometheus_instance: Prometheus,
    alertmanager: Alertmanager,
    webhook: Webhook,
) -> None:
    """The kubelet's readiness-probe failures for a Deployment's pod: ObserverReadinessProbeFailing
    reaches the webhook firing with that namespace and workload, then resolved when they stop."""
    rules = render_rules(tmp_path, PROBE)
    node = f"node-{kube_namespace}"
    api = KubeApi.connect(KubernetesConfig(kubeconfig=kube.kubeconfig))
    agent = AgentProcess(tmp_path / "agent.yaml", free_port(), tmp_path / "agent.log")
    agent.config.write_text(
        f"node_name: {node}\n"
        f"state_dir: {tmp_path / 'state'}\n"
        f"telemetry: {{listen: '{agent.instance}'}}\n"
        f"kubernetes: {{kubeconfig: {kube.kubeconfig}}}\n"
        f"sources: {{pod_logs: {{root: {tmp_path / 'pods'}}}}}\n"
        f"sinks: {{elasticsearch: null, file: {{path: {tmp_path / 'out.jsonl'}}}}}\n"
    )
    stop_posting = asyncio.Event()
    poster: asyncio.Task[int] | None = None
    labels = {"namespace": kube_namespace, "workload": "deployment/web"}
    try:
        pod = await deployment_pod(api, kube_namespace, node)
        await agent.start()
        # The Events watch is up once its resume point is saved: only Events that come
        # after it are occurrences (those listed first happened before the agent looked).
        deadline = time.monotonic() + 30
        while not (tmp_path / "state" / STATE_FILE).exists():
            assert time.monotonic() < deadline, f"no Events watch:\n{agent.log_tail()}"
            await asyncio.sleep(0.1)
        prometheus_instance.configure(
            jobs={JOB: [agent.instance]}, rule_files=[rules], alertmanager=alertmanager.address
        )

        def describe() -> str:
            return situation(prometheus_instance, agent, webhook)

        poster = asyncio.create_task(
            post_readiness_failures(api, kube_namespace, pod, node, stop_posting)
        )
        firing = await notified(webhook, PROBE, "firing", labels, describe)
        stop_posting.set()
        await poster
        resolved = await notified(webhook, PROBE, "resolved", labels, describe)
    finally:
        stop_posting.set()
        if poster is not None:
            await asyncio.gather(poster, return_exceptions=True)
        exit_code = await agent.stop()
        await api.close()

    assert firing["labels"]["severity"] in {"warning", "critical"}
    assert resolved["startsAt"] == firing["startsAt"]  # the same alert, ended
    assert exit_code == 0, agent.log_tail()
