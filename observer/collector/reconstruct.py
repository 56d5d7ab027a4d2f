"""Reconstruction: an assembled trace made into a tree a person can read, and judged.

In order:

1. **Zipkin shared spans split.** Zipkin tracers and Envoy (`shared_span_context`, on by
   default) let the callee *join* the caller's span: the server half reuses the span id
   (and parent id) of the client half, marked `observer.zipkin.shared` by our Zipkin
   conversion. As Jaeger's `ZipkinSpanIDUniquifier` adjuster does, the shared half gets
   a span id of its own and becomes the child of the half that owns the id; spans below
   the shared id that belong to the shared half's service follow it. The new id is
   derived from the old id and the service, so every emission of the trace (late spans,
   a replay) gives it the same id and stores stay idempotent. A shared span whose owner
   has not arrived is split all the same: its parent is then missing, which is true.
2. **The tree**: children by parent id; roots (no parent) and orphans (a parent id that
   is not in the trace).
3. **Clock skew** (Jaeger's `ClockSkew` adjuster): a child from another host that starts
   before its parent or ends after it is moved to sit inside the parent, network latency
   assumed equal both ways; descendants from the same host move with it. A move larger
   than `max_skew_ns` is not made (a clock that wrong is a finding, not noise) and the
   span says so. Both are marked on the span: `skew_adjustment_ns` and the attributes
   `observer.clock_skew.adjusted_ns` / `observer.clock_skew.unadjusted_ns`. Messaging
   (producer → consumer) is asynchronous and never adjusted. Adjustments accumulate and
   a span that fits is left alone, so reconstructing a trace again changes nothing.
4. **The verdict**: complete, or partial with every reason and the span ids concerned —
   `missing_parent` (ids referenced as a parent but absent), `orphan` (spans cut off from
   the root by that), `client_without_server` (a client span with no server side below
   it and no peer attribute naming a callee that sends no spans), `duplicate_span_id`,
   `parent_cycle` (spans whose parent ids go round in a circle, so no root reaches them).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from observer.collector.model import Completeness, Span, SpanKind, Trace, Verdict
from observer.protocols import ZIPKIN_SHARED

ADJUSTED_ATTRIBUTE = "observer.clock_skew.adjusted_ns"
UNADJUSTED_ATTRIBUTE = "observer.clock_skew.unadjusted_ns"

MISSING_PARENT = "missing_parent"
ORPHAN = "orphan"
CLIENT_WITHOUT_SERVER = "client_without_server"
DUPLICATE_SPAN_ID = "duplicate_span_id"
PARENT_CYCLE = "parent_cycle"

REMOTE_KINDS = frozenset({SpanKind.CLIENT, SpanKind.SERVER, SpanKind.PRODUCER, SpanKind.CONSUMER})
CALLER_KINDS = frozenset({SpanKind.CLIENT, SpanKind.PRODUCER})
CALLEE_KINDS = frozenset({SpanKind.SERVER, SpanKind.CONSUMER})

# Attributes naming the callee of a client span when the callee sends no spans of its
# own, strongest first. `peer.service` is what the caller calls it (and what our Zipkin
# conversion makes of remoteEndpoint.serviceName); `server.address` is the host it
# dialled (`net.peer.name` before semantic conventions 1.21); `db.system` names at least
# the kind of database. Tempo's service graphs read the same attributes.
PEER_ATTRIBUTES = ("peer.service", "server.address", "net.peer.name", "db.system")

# Resource attributes that identify one clock: spans from the same host share it.
_HOST_ATTRIBUTES = ("k8s.node.name", "host.name", "host.id")


@dataclass(slots=True)
class SpanTree:
    """The trace's spans by id and by parent. Built once, read by later stages."""

    by_id: dict[str, Span]
    children: dict[str, list[Span]]
    roots: list[Span] = field(default_factory=list)
    orphans: list[Span] = field(default_factory=list)
    duplicates: list[Span] = field(default_factory=list)

    def parent(self, span: Span) -> Span | None:
        return self.by_id.get(span.parent_span_id) if span.parent_span_id else None


def reconstruct(trace: Trace, *, max_skew_ns: int) -> SpanTree:
    """Split shared spans, build the tree, adjust clock skew and judge the trace."""
    split_shared_spans(trace.spans)
    tree = build_tree(trace.spans)
    adjust_clock_skew(tree, max_skew_ns)
    trace.verdict = judge(tree)
    return tree


# --- 1. Zipkin shared spans --------------------------------------------------------------


def split_shared_spans(spans: list[Span]) -> None:
    shared = [span for span in spans if span.attributes.get(ZIPKIN_SHARED) is True]
    if not shared:
        return
    # Original id → [(service, id given to that service's shared half)].
    moved: dict[str, list[tuple[str, str]]] = {}
    for span in shared:
        parent = span.parent_span_id
        if parent and span.span_id == derived_span_id(parent, span.service):
            moved.setdefault(parent, []).append((span.service, span.span_id))  # split before
            continue
        original = span.span_id
        span.span_id = derived_span_id(original, span.service)
        span.parent_span_id = original
        moved.setdefault(original, []).append((span.service, span.span_id))
    new_ids = {new_id for halves in moved.values() for _, new_id in halves}
    for span in spans:
        halves = moved.get(span.parent_span_id)
        if halves is None or span.span_id in new_ids:
            continue
        for service, new_id in halves:
            if span.service == service:
                span.parent_span_id = new_id
                break


def derived_span_id(original: str, service: str) -> str:
    """The id of a shared span's own half: the same for the same original id and service."""
    digest = hashlib.blake2b(bytes.fromhex(original) + service.encode(), digest_size=8)
    return digest.hexdigest()


# --- 2. the tree ------------------------------------------------------------------------


def build_tree(spans: list[Span]) -> SpanTree:
    by_id: dict[str, Span] = {}
    duplicates: list[Span] = []
    for span in spans:
        if by_id.setdefault(span.span_id, span) is not span:
            duplicates.append(span)
    tree = SpanTree(by_id, {}, duplicates=duplicates)
    children = tree.children
    # A span whose id another span already has stays out of the tree (it is reported):
    # with one span per id, every span has one parent, and no walk from a root can loop.
    for span in by_id.values():
        parent = span.parent_span_id
        if not parent:
            tree.roots.append(span)
        elif parent in by_id:
            children.setdefault(parent, []).append(span)
        else:
            tree.orphans.append(span)
    return tree


# --- 3. clock skew ----------------------------------------------------------------------


def _host(span: Span) -> str:
    resource = span.resource
    for key in _HOST_ATTRIBUTES:
        value = resource.get(key)
        if isinstance(value, str) and value:
            return value
    # Without host facts, one service instance is the best guess at one clock.
    instance = resource.get("service.instance.id")
    return f"{span.service}/{instance}" if isinstance(instance, str) else span.service


def adjust_clock_skew(tree: SpanTree, max_skew_ns: int) -> None:
    # Iterative depth-first walk: a deep trace must not hit Python's recursion limit.
    # Each entry: (span, its parent, the parent's host, the delta applied to the parent).
    stack: list[tuple[Span, Span | None, str, int]] = [
        (span, None, "", 0) for span in (*tree.roots, *tree.orphans)
    ]
    children = tree.children
    # Spans of one resource share its dict (intake.py): one host lookup per resource.
    hosts: dict[int, str] = {}
    while stack:
        span, parent, parent_host, parent_delta = stack.pop()
        host = hosts.get(id(span.resource))
        if host is None:
            host = hosts[id(span.resource)] = _host(span)
        if parent is None:
            delta = 0
        elif host == parent_host:
            delta = parent_delta  # same clock as the parent: it moves as the parent moved
        else:
            delta = _skew(span, parent)
            if delta and abs(delta) > max_skew_ns:
                span.attributes[UNADJUSTED_ATTRIBUTE] = delta
                delta = 0
        if delta:
            _shift(span, delta)
        for child in children.get(span.span_id, ()):
            stack.append((child, span, host, delta))


def _skew(child: Span, parent: Span) -> int:
    """How far to move `child` to fit inside `parent` (0 when it fits or may not fit)."""
    if child.kind is SpanKind.CONSUMER or parent.kind is SpanKind.PRODUCER:
        return 0  # messaging is asynchronous: the consumer may well outlive the producer
    child_duration = child.end_ns - child.start_ns
    parent_duration = parent.end_ns - parent.start_ns
    if child_duration > parent_duration:
        # The child outlived its parent (async work, or the parent timed out): only make
        # sure it does not start before the parent.
        return max(parent.start_ns - child.start_ns, 0)
    if child.start_ns >= parent.start_ns and child.end_ns <= parent.end_ns:
        return 0
    # Network latency assumed equal on the way in and out: centre the child.
    return parent.start_ns + (parent_duration - child_duration) // 2 - child.start_ns


def _shift(span: Span, delta: int) -> None:
    span.start_ns += delta
    span.end_ns += delta
    for event in span.events:
        event.time_ns += delta
    span.skew_adjustment_ns += delta
    span.attributes[ADJUSTED_ATTRIBUTE] = span.skew_adjustment_ns


# --- 4. the verdict ---------------------------------------------------------------------


def peer_of(span: Span) -> str:
    """The callee a client span names for a peer that may send no spans, or ""."""
    attributes = span.attributes
    for key in PEER_ATTRIBUTES:
        value = attributes.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def remote_descendants(tree: SpanTree, span: Span) -> list[Span]:
    """The nearest spans below `span` that cross a process boundary, looking through
    internal spans (a client library may wrap the call in a span of its own)."""
    found: list[Span] = []
    pending = list(tree.children.get(span.span_id, ()))
    while pending:
        child = pending.pop()
        if child.kind in REMOTE_KINDS:
            found.append(child)
        else:
            pending.extend(tree.children.get(child.span_id, ()))
    return found


def first_remote_ancestor(tree: SpanTree, span: Span) -> Span | None:
    """The nearest span above `span` that crossed a process boundary (Zipkin's
    DependencyLinker looks through local spans the same way)."""
    seen = 0
    parent = tree.parent(span)
    while parent is not None and parent.kind not in REMOTE_KINDS:
        seen += 1
        if seen > len(tree.by_id):  # a cycle of parent ids: bad input, not a hang
            return None
        parent = tree.parent(parent)
    return parent


def judge(tree: SpanTree) -> Verdict:
    verdict = Verdict()
    missing: dict[str, None] = {}
    for span in tree.orphans:
        missing.setdefault(span.parent_span_id)
        verdict.add(ORPHAN, span.span_id)
    for parent_id in missing:
        verdict.add(MISSING_PARENT, parent_id)
    for span in tree.duplicates:
        verdict.add(DUPLICATE_SPAN_ID, span.span_id)
    for span in _unreachable(tree):
        verdict.add(PARENT_CYCLE, span.span_id)
    for span in tree.by_id.values():
        if span.kind is SpanKind.CLIENT and not peer_of(span) and not _has_callee_side(tree, span):
            verdict.add(CLIENT_WITHOUT_SERVER, span.span_id)
    if not verdict.reasons:
        verdict.completeness = Completeness.COMPLETE
    return verdict


def _unreachable(tree: SpanTree) -> list[Span]:
    reached = 0
    pending = [*tree.roots, *tree.orphans]
    children = tree.children
    while pending:
        span = pending.pop()
        reached += 1
        pending.extend(children.get(span.span_id, ()))
    if reached == len(tree.by_id):
        return []
    # Rare: find which ones, the slow way.
    reachable: set[str] = set()
    pending = [*tree.roots, *tree.orphans]
    while pending:
        span = pending.pop()
        reachable.add(span.span_id)
        pending.extend(children.get(span.span_id, ()))
    return [span for span in tree.by_id.values() if span.span_id not in reachable]


def _has_callee_side(tree: SpanTree, client: Span) -> bool:
    for below in remote_descendants(tree, client):
        if below.kind in CALLEE_KINDS:
            return True
        # A client below a client of the same service is a proxy hop (the app's call
        # through its sidecar): the server side, if any, is the inner client's to find.
        if below.kind is SpanKind.CLIENT and below.service == client.service:
            return True
    return False
