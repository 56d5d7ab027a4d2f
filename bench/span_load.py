"""The span benchmark's helper processes: the collector replicas and the load (not measured).

bench/spans.py starts them beside the tool it measures; each is this file's command (or
the same command of spans.py, which hands it here):

    python bench/span_load.py sink --ports P1,P2,P3 --status sinks.json [--rate SPANS_PER_S]
    python bench/span_load.py load --target 127.0.0.1:4317 --spans N --result load.json \\
        [--rate SPANS_PER_S --seconds S] [--workers W] [--seed K]

- ``sink``: one OTLP/gRPC server per port, playing the collector replicas. They count the
  spans they answered, check that every trace id reached exactly one of them and that its
  resource carries the pod's identity, and write what they saw to ``--status`` (JSON)
  every 0.1 s. ``--rate`` makes them slow: together they take that many spans per second,
  each replica a third, one Export at a time (a request of n spans holds its replica for
  n / (rate / 3) seconds, later ones wait their turn), as a collector at its capacity
  answers later instead of failing. A call the client gives up on while it waits (its
  deadline) is counted as cancelled and its spans are not counted.
- ``load``: pre-encoded ExportTraceServiceRequests of 512 SDK-shaped spans (resource with
  service.name and telemetry.sdk.*, 8 attributes per span, 4 spans per trace), `--workers`
  requests in flight. Unpaced (no ``--rate``) it sends ``--spans`` spans as fast as they
  are answered, and resends a refused request (retryable code) after 50 ms, as an SDK
  would. Paced (``--rate``, for ``--seconds``) a refusal is the answer being measured and
  is not resent. Every answer's status code is counted, whether a refusal carried
  RetryInfo (the OTLP spec's throttling hint), and when the first refusal came.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

SPANS_PER_REQUEST = 512
SPANS_PER_TRACE = 4
SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
EXPORT = f"/{SERVICE}/Export"
RETRY_PAUSE_S = 0.05
"""Unpaced load: the wait before a refused request is sent again."""


def write_json(path: Path, value: dict[str, Any]) -> None:
    """Write `value` so that a reader never sees half of it (a rename)."""
    path.with_suffix(".tmp").write_text(json.dumps(value))
    path.with_suffix(".tmp").replace(path)


def read_json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


# --- the collector replicas ----------------------------------------------------------------


class Replicas:
    """What the replicas saw, over all of them."""

    def __init__(self, count: int) -> None:
        self.counts = [0] * count
        self.owner: dict[bytes, int] = {}
        self.conflicts = 0
        self.enriched = 0
        self.resource_keys: set[str] = set()
        self.answered = 0
        self.cancelled = 0
        self.longest_answer_s = 0.0

    def tally(self, index: int, request: Any) -> None:
        """Count an answered request's spans for replica `index`."""
        for resource in request.resource_spans:
            keys = {a.key for a in resource.resource.attributes}
            spans = 0
            for scope in resource.scope_spans:
                spans += len(scope.spans)
                for span in scope.spans:
                    if self.owner.setdefault(span.trace_id, index) != index:
                        self.conflicts += 1
            self.counts[index] += spans
            if "k8s.namespace.name" in keys and "k8s.pod.uid" in keys:
                self.enriched += spans
            self.resource_keys.update(keys)

    def report(self) -> dict[str, Any]:
        return {
            "spans": sum(self.counts),
            "per_sink": self.counts,
            "traces": len(self.owner),
            "traces_on_two_sinks": self.conflicts,
            "enriched": self.enriched,
            "resource_keys": sorted(self.resource_keys),
            "exports_answered": self.answered,
            "exports_cancelled": self.cancelled,
            "longest_answer_s": round(self.longest_answer_s, 3),
        }


async def serve_sinks(ports: list[int], status: Path, rate: float = 0.0) -> None:
    """Serve until killed; `rate` > 0: the replicas take that many spans/s together."""
    import grpc
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
    )

    seen = Replicas(len(ports))
    empty = ExportTraceServiceResponse().SerializeToString()
    per_replica = rate / len(ports) if rate > 0 else 0.0

    def handler(index: int) -> Any:
        turn = asyncio.Lock()  # one Export at a time per slow replica

        async def export(body: bytes, context: Any) -> bytes:
            arrived = time.monotonic()
            request = ExportTraceServiceRequest.FromString(body)
            if per_replica:
                spans = sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
                try:
                    async with turn:
                        await asyncio.sleep(spans / per_replica)
                except asyncio.CancelledError:  # the client's deadline passed while waiting
                    seen.cancelled += 1
                    raise
            seen.tally(index, request)
            seen.answered += 1
            seen.longest_answer_s = max(seen.longest_answer_s, time.monotonic() - arrived)
            return empty

        return export

    servers = []
    for index, port in enumerate(ports):
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    SERVICE, {"Export": grpc.unary_unary_rpc_method_handler(handler(index))}
                ),
            )
        )
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        servers.append(server)
    while True:
        write_json(status, seen.report())
        await asyncio.sleep(0.1)


# --- the load ------------------------------------------------------------------------------


def build_requests(count: int, seed: int) -> list[bytes]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    generator = random.Random(seed)
    bodies = []
    for _ in range(count):
        request = ExportTraceServiceRequest()
        resource = request.resource_spans.add()
        for key, value in (
            ("service.name", "checkout"),
            ("telemetry.sdk.language", "python"),
            ("telemetry.sdk.name", "opentelemetry"),
            ("telemetry.sdk.version", "1.45.1"),
        ):
            resource.resource.attributes.add(key=key).value.string_value = value
        scope = resource.scope_spans.add()
        scope.scope.name = "opentelemetry.instrumentation.aiohttp_server"
        start = 1_763_700_000_000_000_000
        for number in range(SPANS_PER_REQUEST):
            if number % SPANS_PER_TRACE == 0:
                trace_id = generator.randbytes(16)
                parent = b""
            span = scope.spans.add(
                trace_id=trace_id, span_id=generator.randbytes(8), name="GET /api/cart/{id}"
            )
            span.parent_span_id = parent
            parent = span.span_id
            span.kind = 2
            span.start_time_unix_nano = start + number * 1000
            span.end_time_unix_nano = start + number * 1000 + 250_000
            for key, value in (
                ("http.request.method", "GET"),
                ("url.path", f"/api/cart/{number}"),
                ("url.scheme", "http"),
                ("server.address", "checkout.shop.svc.cluster.local"),
                ("network.peer.address", "10.244.1.17"),
                ("user_agent.original", "python-requests/2.32.3"),
            ):
                span.attributes.add(key=key).value.string_value = value
            span.attributes.add(key="http.response.status_code").value.int_value = 200
            span.attributes.add(key="server.port").value.int_value = 8080
            span.status.code = 0
        bodies.append(request.SerializeToString())
    return bodies


def _has_retry_info(error: Any) -> bool:
    return any(key == "grpc-status-details-bin" for key, _ in error.trailing_metadata() or ())


async def send_load(
    target: str, spans: int, rate: float | None, seconds: float | None, seed: int, workers: int
) -> dict[str, Any]:
    """Send the load; returns spans sent, accepted and refused, the answers' codes (per
    request) and how many refusals carried RetryInfo. Paced runs end after `seconds`."""
    import grpc

    bodies = build_requests(max(1, min(400, spans // SPANS_PER_REQUEST)), seed)
    retryable = {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE}
    codes: Counter[str] = Counter()
    sent = refused = accepted = with_retry_info = 0
    first_refusal_s: float | None = None
    started = time.monotonic()
    async with grpc.aio.insecure_channel(target) as channel:
        export = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
        next_index = 0

        async def worker() -> None:
            nonlocal next_index, sent, refused, accepted, with_retry_info, first_refusal_s
            while True:
                if rate is None and sent >= spans:
                    return
                if seconds is not None and time.monotonic() - started >= seconds:
                    return
                if rate is not None:
                    delay = started + sent / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                body = bodies[next_index % len(bodies)]
                next_index += 1
                sent += SPANS_PER_REQUEST
                while True:
                    try:
                        await export(body, timeout=30)
                        codes["OK"] += 1
                        accepted += SPANS_PER_REQUEST
                        break
                    except grpc.aio.AioRpcError as error:
                        codes[error.code().name] += 1
                        if error.code() in retryable:
                            refused += SPANS_PER_REQUEST
                            with_retry_info += _has_retry_info(error)
                            if first_refusal_s is None:
                                first_refusal_s = time.monotonic() - started
                        elif rate is None:
                            raise  # unpaced runs must deliver every span
                        if rate is not None:
                            break  # paced: the answer is what is measured, not resent
                        await asyncio.sleep(RETRY_PAUSE_S)

        await asyncio.gather(*(worker() for _ in range(workers)))
    return {
        "sent": sent,
        "accepted": accepted,
        "refused": refused,
        "codes": dict(codes),
        "refusals_with_retry_info": with_retry_info,
        "first_refusal_s": first_refusal_s,
        "seconds": time.monotonic() - started,
    }


# --- the commands ----------------------------------------------------------------------------


def add_commands(sub: Any) -> None:
    """The `sink` and `load` commands, on this file's parser and on spans.py's."""
    sink = sub.add_parser("sink", help="the three collector replicas (a helper process)")
    sink.add_argument("--ports", required=True)
    sink.add_argument("--status", type=Path, required=True)
    sink.add_argument(
        "--rate", type=float, default=0.0, help="spans/s the replicas take together (0: all)"
    )
    load = sub.add_parser("load", help="send the load (a helper process)")
    load.add_argument("--target", required=True)
    load.add_argument("--spans", type=int, required=True)
    load.add_argument("--rate", type=float)
    load.add_argument("--seconds", type=float)
    load.add_argument("--result", type=Path, required=True)
    load.add_argument("--seed", type=int, default=1)
    load.add_argument("--workers", type=int, default=4)


def run_command(args: argparse.Namespace) -> int:
    if args.command == "sink":
        ports = [int(p) for p in args.ports.split(",")]
        asyncio.run(serve_sinks(ports, args.status, args.rate))
        return 0
    outcome = asyncio.run(
        send_load(args.target, args.spans, args.rate, args.seconds, args.seed, args.workers)
    )
    write_json(args.result, outcome)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_commands(parser.add_subparsers(dest="command", required=True))
    return run_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
