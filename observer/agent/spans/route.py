"""Routing: which encoded spans go to which collector replica.

`route` splits a batch by the replica each span's trace id hashes to (`HashRing`) and
returns, per replica, request pieces: serialized `ExportTraceServiceRequest`s holding the
resources, and only the spans, that replica owns. Joined, pieces are one request
(`otlp.frame_resource_spans`).

Nothing is unpacked that is only passed on. Per span the trace id is read from the
decoded message (where the protobuf rules on repeated fields have already been applied)
for a CRC-32 and a table index. Then:

- a batch that still has the bytes it was decoded from (`otlp.EncodedBatch`, what the
  OTLP protobuf receivers hand on) is cut from those bytes: a scope whose spans all go to
  one replica is passed on whole, a mixed one as its header (scope, schema url) followed by
  the owner's span fields, sliced as they arrived. Only each resource is encoded again,
  because pod identity was added to it. Profiled under the span benchmark, the
  message path below spent more CPU copying span messages into per-replica parts than
  decoding them;
- any other batch (Zipkin, OTLP/JSON, one whose invalid spans were removed, or bytes
  that do not walk) goes the message way: a resource whose spans all go to one replica is
  serialized as it is, a mixed one copied span message by span message into one part per
  replica.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Sequence

from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span

from observer.agent.spans.ring import SLOT_SHIFT, HashRing
from observer.protocols.otlp import (
    EncodedBatch,
    WireError,
    fields,
    frame_field,
    frame_resource_spans,
    read_varint,
    skip_field,
)

Pieces = dict[int, tuple[list[bytes], int]]
"""By index in the ring's endpoints: the encoded request pieces and their span count."""

# Field numbers and tag bytes (opentelemetry-proto trace/v1/trace.proto).
_RESOURCE = 1
_SCOPE_SPANS = 2
_SPANS = 2
_SPAN_TAG = (_SPANS << 3) | 2


def route(resource_spans: Sequence[ResourceSpans], ring: HashRing) -> Pieces:
    """Split a batch by the replica each span's trace id hashes to (module docstring)."""
    if isinstance(resource_spans, EncodedBatch):
        try:
            return route_encoded(resource_spans, ring)
        except (WireError, IndexError):
            pass  # bytes that do not walk as expected: the message way is always right
    return route_messages(resource_spans, ring)


def route_encoded(batch: EncodedBatch, ring: HashRing) -> Pieces:
    """Cut from the batch's bytes; WireError when they do not match its messages."""
    data = batch.encoded
    table = ring.table
    crc32 = zlib.crc32
    regions = [(start, end) for number, _, start, end in fields(data, 0, len(data)) if number == 1]
    if len(regions) != len(batch):
        raise WireError("resource_spans fields do not match the decoded batch")
    out: Pieces = {}
    for resource, (start, end) in zip(batch, regions, strict=True):
        scope_fields: list[tuple[int, int, int]] = []
        trailer: list[bytes] = []  # schema_url and unknown fields, kept in every part
        for number, field_start, value_start, field_end in fields(data, start, end):
            if number == _SCOPE_SPANS:
                scope_fields.append((field_start, value_start, field_end))
            elif number != _RESOURCE:
                trailer.append(data[field_start:field_end])
        scopes = resource.scope_spans
        if len(scope_fields) != len(scopes):
            raise WireError("scope_spans fields do not match the decoded batch")
        parts: dict[int, list[bytes]] = {}
        counts: Counter[int] = Counter()
        for scope, (field_start, value_start, field_end) in zip(scopes, scope_fields, strict=True):
            owners = [table[crc32(span.trace_id) >> SLOT_SHIFT] for span in scope.spans]
            if not owners:
                continue
            first = owners[0]
            if owners.count(first) == len(owners):
                parts.setdefault(first, []).append(data[field_start:field_end])
                counts[first] += len(owners)
                continue
            for owner, spans in _split_scope(data, value_start, field_end, owners).items():
                parts.setdefault(owner, []).append(frame_field(_SCOPE_SPANS, spans))
            counts.update(owners)
        if not parts:
            continue
        head = (
            frame_field(_RESOURCE, resource.resource.SerializeToString())
            if resource.HasField("resource")
            else b""
        )
        tail = b"".join(trailer)
        for owner, scope_parts in parts.items():
            encoded = head + b"".join(scope_parts) + tail
            _add(out, owner, frame_resource_spans(encoded), counts[owner])
    return out


def _split_scope(data: bytes, start: int, end: int, owners: list[int]) -> dict[int, bytes]:
    """The `ScopeSpans` in `data[start:end]` as one ScopeSpans payload per owner: the
    scope's other fields, then the owner's span fields in their order."""
    header: list[bytes] = []
    groups: dict[int, list[bytes]] = {}
    index = 0
    pos = start
    while pos < end:
        field_start = pos
        if data[pos] == _SPAN_TAG:
            # Inline for the common case, one field per span: tag, a length of one or two
            # varint bytes (spans under 16 KiB), message.
            length = data[pos + 1]
            if length < 0x80:
                pos += 2 + length
            elif data[pos + 2] < 0x80:
                pos += 3 + (length & 0x7F) + (data[pos + 2] << 7)
            else:
                length, pos = read_varint(data, pos + 1)
                pos += length
            if pos > end or index >= len(owners):
                raise WireError("spans do not match the decoded scope")
            owner = owners[index]
            group = groups.get(owner)
            if group is None:
                group = groups[owner] = list(header)
            group.append(data[field_start:pos])
            index += 1
        else:
            _, _, _, pos = skip_field(data, pos, end)
            piece = data[field_start:pos]
            header.append(piece)
            for group in groups.values():
                group.append(piece)
    if index != len(owners):
        raise WireError("spans do not match the decoded scope")
    return {owner: b"".join(group) for owner, group in groups.items()}


def route_messages(resource_spans: Sequence[ResourceSpans], ring: HashRing) -> Pieces:
    """Serialize whole resources, or copy span messages into one part per replica."""
    table = ring.table
    crc32 = zlib.crc32
    out: Pieces = {}
    for resource in resource_spans:
        scopes = resource.scope_spans
        owners_by_scope: list[list[int]] = []
        single = -1
        mixed = False
        for scope in scopes:
            owners = [table[crc32(span.trace_id) >> SLOT_SHIFT] for span in scope.spans]
            owners_by_scope.append(owners)
            if owners and not mixed:
                first = owners[0]
                if single == -1:
                    single = first
                mixed = first != single or owners.count(first) != len(owners)
        if not mixed:
            if single != -1:
                spans = sum(len(owners) for owners in owners_by_scope)
                _add(out, single, frame_resource_spans(resource.SerializeToString()), spans)
            continue
        parts: dict[int, ResourceSpans] = {}
        counts: Counter[int] = Counter()
        for scope, owners in zip(scopes, owners_by_scope, strict=True):
            groups: dict[int, list[Span]] = {}
            for span, owner in zip(scope.spans, owners, strict=True):
                groups.setdefault(owner, []).append(span)
            for owner, spans_of_owner in groups.items():
                part = parts.get(owner)
                if part is None:
                    part = parts[owner] = ResourceSpans(schema_url=resource.schema_url)
                    part.resource.CopyFrom(resource.resource)
                target = part.scope_spans.add(schema_url=scope.schema_url)
                target.scope.CopyFrom(scope.scope)
                target.spans.extend(spans_of_owner)
                counts[owner] += len(spans_of_owner)
        for owner, part in parts.items():
            _add(out, owner, frame_resource_spans(part.SerializeToString()), counts[owner])
    return out


def _add(out: Pieces, owner: int, piece: bytes, spans: int) -> None:
    found = out.get(owner)
    if found is None:
        out[owner] = ([piece], spans)
    else:
        found[0].append(piece)
        out[owner] = (found[0], found[1] + spans)
