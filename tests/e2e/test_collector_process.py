"""The collector as a process, fed through agents: `observer collector` and two `observer
agent` processes on 127.0.0.1, and the shop's three real services (tests/services/shop.py)
sending OpenTelemetry SDK spans over OTLP/gRPC to the agents, frontend and payments to
one agent, checkout to the other. The agents route the spans by trace id to the collector,
which assembles, counts and stores them in its embedded store. Everything is checked the
way a user sees it: the Jaeger query API and /metrics over HTTP.

The scenario runs once (module fixture): orders are placed, the services stop (flushing
their spans), the collector is waited for until it has stored every span, its answers are
recorded, and every process is stopped with SIGTERM. The tests read the recording."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.services.process import free_port
from tests.services.shop import SPANS_PER_ORDER, start_shop

ORDERS = 9
FAIL_EVERY = 3  # payments fails orders 0, 3, 6
FAILED_ORDERS = {order for order in range(ORDERS) if order % FAIL_EVERY == 0}
STARTUP_TIMEOUT = 60.0
STORED_TIMEOUT = 60.0
ORDER_IN_URL = re.compile(r"[?&]order=(\d+)")


@dataclass
class Process:
    name: str
    process: asyncio.subprocess.Process
    log_path: Path
    returncode: int | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


async def start_observer(directory: Path, name: str, *args: str) -> Process:
    """An `observer` command as a process, its JSON logs going to a file (never a pipe
    nobody reads, which would stall it once full)."""
    log_path = directory / f"{name}.log"
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "observer", *args, stdout=log_file, stderr=log_file
        )
    return Process(name, process, log_path)


async def wait_ready(http: aiohttp.ClientSession, process: Process, url: str) -> None:
    """Until `url` (a /readyz) answers 200; fails with the process's log if it exits."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.process.returncode is not None:
            pytest.fail(f"{process.name} exited {process.process.returncode}:\n{process.log()}")
        try:
            async with http.get(url) as answer:
                if answer.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    pytest.fail(f"{process.name} was not ready within {STARTUP_TIMEOUT} s:\n{process.log()}")


async def stop(process: Process) -> None:
    if process.process.returncode is None:
        process.process.send_signal(signal.SIGTERM)
    try:
        process.returncode = await asyncio.wait_for(process.process.wait(), 30)
    except TimeoutError:
        process.process.kill()
        process.returncode = await process.process.wait()


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(http: aiohttp.ClientSession, url: str) -> Samples:
    async with http.get(url) as answer:
        text = await answer.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def collector_yaml(directory: Path, ports: dict[str, int]) -> str:
    return f"""\
shutdown_timeout: 10s
telemetry: {{listen: '127.0.0.1:{ports["telemetry"]}'}}
receivers:
  otlp_grpc: {{listen: '127.0.0.1:{ports["otlp_grpc"]}'}}
  otlp_http: {{listen: '127.0.0.1:{ports["otlp_http"]}'}}
storage: {{embedded: {{path: {directory / "traces.sqlite"}}}}}
query: {{listen: '127.0.0.1:{ports["query"]}'}}
assembly: {{idle_timeout: 1s}}
sampling: {{probabilistic_share: 1.0}}
"""


def agent_yaml(directory: Path, telemetry_port: int, otlp_port: int, collector: str) -> str:
    (directory / "pods").mkdir(parents=True)
    return f"""\
state_dir: {directory / "state"}
telemetry: {{listen: '127.0.0.1:{telemetry_port}'}}
kubernetes: {{enabled: false}}
sources:
  pod_logs: {{root: {directory / "pods"}}}
  spans:
    enabled: true
    otlp_grpc: {{listen: '127.0.0.1:{otlp_port}'}}
    otlp_http: {{enabled: false}}
    zipkin: {{enabled: false}}
sinks:
  elasticsearch: null
  file: {{path: {directory / "logs.jsonl"}}}
  collector:
    endpoints: ['{collector}']
    batch: {{flush_interval: 100ms}}
"""


@dataclass
class Outcome:
    statuses: list[int]
    search_frontend: dict[str, Any]
    traces_by_id: dict[str, dict[str, Any]]
    search_payments_errors: dict[str, Any]
    search_checkout_500: dict[str, Any]
    dependencies: dict[str, Any]
    collector_metrics: Samples
    agent_metrics: dict[str, Samples]
    processes: list[Process] = field(default_factory=list)


@pytest.fixture(scope="module")
async def outcome(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    directory = tmp_path_factory.mktemp("collector-process")
    ports = {name: free_port() for name in ("telemetry", "otlp_grpc", "otlp_http", "query")}
    (directory / "collector.yaml").write_text(collector_yaml(directory, ports))
    collector_otlp = f"127.0.0.1:{ports['otlp_grpc']}"
    agents = {name: (free_port(), free_port()) for name in ("agent-a", "agent-b")}
    processes: list[Process] = []
    shop = None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        try:
            collector = await start_observer(
                directory, "collector", "collector", "--config", str(directory / "collector.yaml")
            )
            processes.append(collector)
            telemetry = f"http://127.0.0.1:{ports['telemetry']}"
            await wait_ready(http, collector, f"{telemetry}/readyz")
            for name, (telemetry_port, otlp_port) in agents.items():
                config = directory / f"{name}.yaml"
                config.write_text(
                    agent_yaml(directory / name, telemetry_port, otlp_port, collector_otlp)
                )
                processes.append(
                    await start_observer(directory, name, "agent", "--config", str(config))
                )
                await wait_ready(http, processes[-1], f"http://127.0.0.1:{telemetry_port}/readyz")
            agent_a = f"127.0.0.1:{agents['agent-a'][1]}"
            agent_b = f"127.0.0.1:{agents['agent-b'][1]}"
            shop = await start_shop(
                directory,
                {"frontend": agent_a, "checkout": agent_b, "payments": agent_a},
                FAIL_EVERY,
            )
            statuses = [await shop.order(http, order) for order in range(ORDERS)]
            await shop.stop()  # every service exports what it holds as it stops

            stored = (
                "observer_trace_store_spans_total",
                {"store": "embedded", "outcome": "stored"},
            )
            deadline = time.monotonic() + STORED_TIMEOUT
            metrics: Samples = {}
            while time.monotonic() < deadline:
                metrics = await scrape(http, f"{telemetry}/metrics")
                if sample(metrics, stored[0], **stored[1]) == ORDERS * SPANS_PER_ORDER:
                    break
                await asyncio.sleep(0.2)

            query = f"http://127.0.0.1:{ports['query']}"

            async def get(path: str, **params: str) -> dict[str, Any]:
                async with http.get(f"{query}{path}", params=params) as answer:
                    body: dict[str, Any] = await answer.json()
                    assert answer.status == 200, body
                    return body

            window = {"lookback": "1h", "limit": "100"}
            search_frontend = await get("/api/traces", service="frontend", **window)
            traces_by_id = {
                trace["traceID"]: await get(f"/api/traces/{trace['traceID']}")
                for trace in search_frontend["data"]
            }
            search_payments_errors = await get(
                "/api/traces", service="payments", tags=json.dumps({"error": "true"}), **window
            )
            search_checkout_500 = await get(
                "/api/traces",
                service="checkout",
                tags=json.dumps({"http.status_code": "500"}),
                **window,
            )
            dependencies = await get(
                "/api/dependencies", endTs=str(int(time.time() * 1000)), lookback="3600000"
            )
            agent_metrics = {
                name: await scrape(http, f"http://127.0.0.1:{telemetry_port}/metrics")
                for name, (telemetry_port, _) in agents.items()
            }
        finally:
            if shop is not None:
                await shop.stop()
            for process in reversed(processes):  # agents first: they deliver to the collector
                await stop(process)
    return Outcome(
        statuses,
        search_frontend,
        traces_by_id,
        search_payments_errors,
        search_checkout_500,
        dependencies,
        metrics,
        agent_metrics,
        processes,
    )


# --- reading Jaeger's JSON ----------------------------------------------------------------


def tags(span: dict[str, Any]) -> dict[str, Any]:
    return {tag["key"]: tag["value"] for tag in span["tags"]}


def roles(trace: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """Each span by (service, span.kind): the shop's traces have one span per role."""
    by_role = {}
    for span in trace["spans"]:
        service = trace["processes"][span["processID"]]["serviceName"]
        by_role[(service, tags(span).get("span.kind", ""))] = span
    return by_role


def order_of(trace: dict[str, Any]) -> int:
    """The order number, from the URL the frontend's server span recorded."""
    server = roles(trace)[("frontend", "server")]
    for value in tags(server).values():
        found = ORDER_IN_URL.search(str(value))
        if found:
            return int(found[1])
    raise AssertionError(f"no order in the frontend span's tags: {tags(server)}")


def only_trace(answer: dict[str, Any]) -> dict[str, Any]:
    (trace,) = answer["data"]
    return trace


def trace_ids(answer: dict[str, Any]) -> set[str]:
    return {trace["traceID"] for trace in answer["data"]}


def failed_trace_ids(outcome: Outcome) -> set[str]:
    return {
        trace_id
        for trace_id, answer in outcome.traces_by_id.items()
        if order_of(only_trace(answer)) in FAILED_ORDERS
    }


# --- the tests ----------------------------------------------------------------------------


def test_every_order_was_served(outcome: Outcome) -> None:
    """The frontend answered every order 200 (checkout hides payment failures from it)."""
    assert outcome.statuses == [200] * ORDERS


def test_each_agent_carried_the_spans_of_its_services(outcome: Outcome) -> None:
    """Agent A received frontend's and payments' spans, agent B checkout's: the spans came through both agents."""
    received = "observer_spans_received_total"
    assert sample(outcome.agent_metrics["agent-a"], received, receiver="otlp_grpc") == ORDERS * 3
    assert sample(outcome.agent_metrics["agent-b"], received, receiver="otlp_grpc") == ORDERS * 2


def test_search_by_service_finds_one_trace_per_order(outcome: Outcome) -> None:
    """Searching the frontend's traces finds one trace for each order placed, each with its five spans."""
    traces = outcome.search_frontend["data"]
    assert sorted(order_of(trace) for trace in traces) == list(range(ORDERS))
    assert [len(trace["spans"]) for trace in traces] == [SPANS_PER_ORDER] * ORDERS


def test_trace_by_id_is_the_call_tree_frontend_checkout_payments(outcome: Outcome) -> None:
    """Each trace fetched by id is server → client → server → client → server, each span the child of the one before."""
    assert len(outcome.traces_by_id) == ORDERS
    for trace_id, answer in outcome.traces_by_id.items():
        trace = only_trace(answer)
        assert trace["traceID"] == trace_id
        by_role = roles(trace)
        chain = [
            by_role[("frontend", "server")],
            by_role[("frontend", "client")],
            by_role[("checkout", "server")],
            by_role[("checkout", "client")],
            by_role[("payments", "server")],
        ]
        assert chain[0]["references"] == []
        parents = [[ref["spanID"] for ref in span["references"]] for span in chain[1:]]
        assert parents == [[span["spanID"]] for span in chain[:-1]]
        assert tags(chain[0])["observer.trace.completeness"] == "complete"


def test_trace_by_id_marks_errors_on_failed_payments_only(outcome: Outcome) -> None:
    """A failed payment marks payments' server span and checkout's client span with error, and no other span; other orders have none."""
    for answer in outcome.traces_by_id.values():
        trace = only_trace(answer)
        marked = {role for role, span in roles(trace).items() if tags(span).get("error") is True}
        if order_of(trace) in FAILED_ORDERS:
            assert marked == {("payments", "server"), ("checkout", "client")}
        else:
            assert marked == set()


def test_search_by_error_tag_finds_the_failed_payments(outcome: Outcome) -> None:
    """Searching payments for error=true finds exactly the traces of the orders that failed."""
    assert len(failed_trace_ids(outcome)) == len(FAILED_ORDERS)
    assert trace_ids(outcome.search_payments_errors) == failed_trace_ids(outcome)


def test_search_by_status_code_tag_finds_the_failed_payments(outcome: Outcome) -> None:
    """Searching checkout for http.status_code=500 (its calls that payments failed) finds exactly those traces."""
    assert trace_ids(outcome.search_checkout_500) == failed_trace_ids(outcome)


def test_dependencies_count_every_call_and_the_failed_ones(outcome: Outcome) -> None:
    """/api/dependencies: every order on both edges, the failed payments on checkout → payments."""
    links = sorted(outcome.dependencies["data"], key=lambda link: link["parent"])
    assert links == [
        {
            "parent": "checkout",
            "child": "payments",
            "callCount": ORDERS,
            "errorCount": len(FAILED_ORDERS),
        },
        {"parent": "frontend", "child": "checkout", "callCount": ORDERS, "errorCount": 0},
    ]


def test_service_graph_metrics_count_the_calls_made(outcome: Outcome) -> None:
    """The collector's /metrics: traces_service_graph_request_total is the calls made on each edge, failed ones counted apart."""
    metrics = outcome.collector_metrics
    checkout = {"client": "frontend", "server": "checkout", "connection_type": ""}
    payments = {"client": "checkout", "server": "payments", "connection_type": ""}
    total = "traces_service_graph_request_total"
    failed = "traces_service_graph_request_failed_total"
    assert sample(metrics, total, **checkout) == ORDERS
    assert sample(metrics, total, **payments) == ORDERS
    assert sample(metrics, failed, **checkout) in (None, 0)
    assert sample(metrics, failed, **payments) == len(FAILED_ORDERS)


def test_every_process_stops_cleanly_on_sigterm(outcome: Outcome) -> None:
    """SIGTERM: the agents and the collector exit 0, the collector saying it stopped."""
    assert {process.name: process.returncode for process in outcome.processes} == {
        "collector": 0,
        "agent-a": 0,
        "agent-b": 0,
    }
    assert "The collector stopped." in outcome.processes[0].log()


def test_a_collector_that_cannot_listen_exits_3_and_says_why(tmp_path: Path) -> None:
    """A query port already taken: the collector logs that it cannot listen and exits 3."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "collector.yaml"
        config.write_text(
            f"telemetry: {{listen: '127.0.0.1:{free_port()}'}}\n"
            f"receivers: {{otlp_grpc: {{listen: '127.0.0.1:{free_port()}'}}, "
            f"otlp_http: {{listen: '127.0.0.1:{free_port()}'}}}}\n"
            f"storage: {{embedded: {{path: {tmp_path / 'traces.sqlite'}}}}}\n"
            f"query: {{listen: '127.0.0.1:{port}'}}\n"
        )
        result = subprocess.run(
            [sys.executable, "-m", "observer", "collector", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 3, result.stderr
    messages = [json.loads(line)["message"] for line in result.stderr.splitlines()]
    assert "The collector cannot listen." in messages
