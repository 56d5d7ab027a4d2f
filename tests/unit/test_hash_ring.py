"""The consistent hash ring that sends each trace id to one collector replica."""

from __future__ import annotations

import random

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans

from observer.agent.spans.exporter import route
from observer.agent.spans.ring import HashRing
from observer.protocols.otlp import decode_protobuf

REPLICAS = ["10.0.0.1:4317", "10.0.0.2:4317", "10.0.0.3:4317"]


def trace_ids(count: int, seed: int = 7) -> list[bytes]:
    generator = random.Random(seed)
    return [generator.randbytes(16) for _ in range(count)]


def test_order_of_endpoints_does_not_change_the_owner() -> None:
    """Two agents that list the replicas in different orders agree on every trace."""
    first = HashRing(REPLICAS)
    second = HashRing(list(reversed(REPLICAS)))
    assert all(first.owner(t) == second.owner(t) for t in trace_ids(2000))


def test_removing_a_replica_moves_only_its_traces() -> None:
    """Traces of the replicas that stay keep their owner; only the removed one's move."""
    ids = trace_ids(30_000)
    before = HashRing(REPLICAS)
    after = HashRing(REPLICAS[:2])
    moved = [t for t in ids if before.owner(t) != after.owner(t)]
    assert all(before.owner(t) == REPLICAS[2] for t in moved)
    assert 0.25 < len(moved) / len(ids) < 0.42


def test_adding_a_replica_takes_only_its_share() -> None:
    """A fourth replica takes about a quarter of the traces, and every moved trace goes to it."""
    ids = trace_ids(30_000)
    before = HashRing(REPLICAS)
    after = HashRing([*REPLICAS, "10.0.0.4:4317"])
    moved = [t for t in ids if before.owner(t) != after.owner(t)]
    assert all(after.owner(t) == "10.0.0.4:4317" for t in moved)
    assert 0.18 < len(moved) / len(ids) < 0.32


def test_load_is_spread_evenly() -> None:
    """Each of three replicas owns between 27% and 40% of random trace ids."""
    ring = HashRing(REPLICAS)
    ids = trace_ids(30_000)
    for replica in REPLICAS:
        share = sum(ring.owner(t) == replica for t in ids) / len(ids)
        assert 0.27 < share < 0.40, (replica, share)


def test_64_bit_trace_ids_padded_with_zeros_still_spread() -> None:
    """Zipkin's 64-bit ids, left-padded with eight zero bytes, reach every replica."""
    ring = HashRing(REPLICAS)
    owners = {ring.owner(bytes(8) + t[:8]) for t in trace_ids(3000)}
    assert owners == set(REPLICAS)


def batch(spans_per_trace: int, traces: int) -> list[ResourceSpans]:
    resource = ResourceSpans()
    resource.resource.attributes.add(key="service.name").value.string_value = "web"
    scope = resource.scope_spans.add()
    scope.scope.name = "lib"
    for trace_id in trace_ids(traces):
        for number in range(spans_per_trace):
            scope.spans.add(trace_id=trace_id, span_id=bytes([number + 1]) * 8, name=f"s{number}")
    return [resource]


@pytest.mark.parametrize("replicas", [1, 3])
def test_route_gives_each_replica_exactly_its_traces_with_the_resource(replicas: int) -> None:
    """Routed pieces decode to requests that hold every span once, each on its trace's
    owner, under a copy of the original resource and scope."""
    ring = HashRing(REPLICAS[:replicas])
    original = batch(spans_per_trace=3, traces=200)
    pieces = route(original, ring)
    seen = 0
    for index, (parts, count) in pieces.items():
        request = decode_protobuf(b"".join(parts))
        spans = [
            (resource, scope, span)
            for resource in request.resource_spans
            for scope in resource.scope_spans
            for span in scope.spans
        ]
        assert len(spans) == count
        for resource, scope, span in spans:
            assert ring.index(span.trace_id) == index
            assert resource.resource == original[0].resource
            assert scope.scope.name == "lib"
        seen += count
    assert seen == 600
