//! Reconstruction (port of observer/collector/reconstruct.py): shared Zipkin spans split,
//! the tree, clock skew, the verdict. reconstruct.py's docstring says why each step is
//! done; this port keeps its steps, their order and their results, working on indexes
//! into `Trace::spans` instead of span objects.

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::collections::hash_map::Entry;
use std::sync::Arc;

use blake2::digest::{Update, VariableOutput};
use blake2::Blake2bVar;

use crate::model::{hex, Attributes, Span, SpanId, SpanKind, Trace, Value, Verdict};

/// Set (to `true`) by the Zipkin conversion on the callee half of a shared span id
/// (`observer.protocols.ZIPKIN_SHARED`).
pub const ZIPKIN_SHARED: &str = "observer.zipkin.shared";
pub const UNADJUSTED_ATTRIBUTE: &str = "observer.clock_skew.unadjusted_ns";

pub const MISSING_PARENT: &str = "missing_parent";
pub const ORPHAN: &str = "orphan";
pub const CLIENT_WITHOUT_SERVER: &str = "client_without_server";
pub const DUPLICATE_SPAN_ID: &str = "duplicate_span_id";
pub const PARENT_CYCLE: &str = "parent_cycle";

/// Attributes naming the callee of a client span when the callee sends no spans of its
/// own, strongest first (reconstruct.py says why these).
pub const PEER_ATTRIBUTES: [&str; 4] = [
    "peer.service",
    "server.address",
    "net.peer.name",
    "db.system",
];

/// The trace's spans by id and by parent, as indexes into `Trace::spans`. Built once,
/// read by later stages.
#[derive(Debug, Default)]
pub struct SpanTree {
    /// Span id → index of the first span with that id.
    pub by_id: HashMap<SpanId, usize>,
    /// Indexes of the spans in `by_id`, in the order of `Trace::spans` (Python's dict order).
    pub unique: Vec<usize>,
    /// Parent span id → indexes of its children, in span order.
    pub children: HashMap<SpanId, Vec<usize>>,
    pub roots: Vec<usize>,
    pub orphans: Vec<usize>,
    /// Spans whose id an earlier span already has: left out of the tree.
    pub duplicates: Vec<usize>,
}

impl SpanTree {
    /// The span's parent in the tree (the first span with its parent id); None for a root
    /// or an orphan.
    pub fn parent(&self, spans: &[Span], index: usize) -> Option<usize> {
        spans[index]
            .parent_span_id
            .and_then(|parent| self.by_id.get(&parent).copied())
    }

    fn children_of(&self, span: &Span) -> &[usize] {
        self.children.get(&span.span_id).map_or(&[], Vec::as_slice)
    }
}

/// Split shared spans, build the tree, adjust clock skew and judge the trace
/// (`trace.verdict` is set).
pub fn reconstruct(trace: &mut Trace, max_skew_ns: i64) -> SpanTree {
    split_shared_spans(&mut trace.spans);
    let tree = build_tree(&trace.spans);
    // The skew walk visits exactly the spans a root or an orphan reaches, which is what
    // the verdict's cycle check counts: counted once here instead of walked again.
    let reached = adjust_clock_skew(&tree, &mut trace.spans, max_skew_ns);
    trace.verdict = judge(&tree, &trace.spans, reached);
    tree
}

// --- 1. Zipkin shared spans --------------------------------------------------------------

fn is_shared(span: &Span) -> bool {
    matches!(span.attributes.get(ZIPKIN_SHARED), Some(Value::Bool(true)))
}

fn split_shared_spans(spans: &mut [Span]) {
    // Nearly every trace has no shared span: find that out without allocating.
    let Some(first) = spans.iter().position(is_shared) else {
        return;
    };
    // Original id → [(service, id given to that service's shared half)], in the order the
    // halves were found: the first half of a span's service wins below.
    let mut moved: HashMap<SpanId, Vec<(Arc<str>, SpanId)>> = HashMap::new();
    let mut new_ids: HashSet<SpanId> = HashSet::new();
    for span in spans[first..].iter_mut().filter(|span| is_shared(span)) {
        let service = span.resource.service.clone();
        if let Some(parent) = span.parent_span_id {
            if span.span_id == derived_span_id(&parent, &service) {
                // Split before (an earlier emission of this trace): keep it, but let spans
                // below the original id that arrived since still follow it.
                new_ids.insert(span.span_id);
                moved
                    .entry(parent)
                    .or_default()
                    .push((service, span.span_id));
                continue;
            }
        }
        let original = span.span_id;
        span.span_id = derived_span_id(&original, &service);
        span.parent_span_id = Some(original);
        new_ids.insert(span.span_id);
        moved
            .entry(original)
            .or_default()
            .push((service, span.span_id));
    }
    for span in spans.iter_mut() {
        let Some(halves) = span.parent_span_id.and_then(|parent| moved.get(&parent)) else {
            continue;
        };
        if new_ids.contains(&span.span_id) {
            continue; // a shared half itself stays below the half that owns the id
        }
        if let Some((_, new_id)) = halves
            .iter()
            .find(|(service, _)| **service == *span.service())
        {
            span.parent_span_id = Some(*new_id);
        }
    }
}

/// The id of a shared span's own half: the same for the same original id and service,
/// so every emission of a trace derives the same id (reconstruct.py `derived_span_id`).
pub fn derived_span_id(original: &SpanId, service: &str) -> SpanId {
    let mut hasher = Blake2bVar::new(8).expect("8 is a valid BLAKE2b digest size");
    hasher.update(original);
    hasher.update(service.as_bytes());
    let mut id = SpanId::default();
    hasher
        .finalize_variable(&mut id)
        .expect("the buffer is the digest size");
    id
}

// --- 2. the tree ------------------------------------------------------------------------

fn build_tree(spans: &[Span]) -> SpanTree {
    let mut by_id = HashMap::with_capacity(spans.len());
    let mut unique = Vec::with_capacity(spans.len());
    let mut duplicates = Vec::new();
    for (index, span) in spans.iter().enumerate() {
        match by_id.entry(span.span_id) {
            Entry::Vacant(slot) => {
                slot.insert(index);
                unique.push(index);
            }
            Entry::Occupied(_) => duplicates.push(index),
        }
    }
    // A span whose id another span already has stays out of the tree (it is reported):
    // with one span per id, every span has one parent, and no walk from a root can loop.
    let mut children: HashMap<SpanId, Vec<usize>> = HashMap::with_capacity(unique.len());
    let mut roots = Vec::new();
    let mut orphans = Vec::new();
    for &index in &unique {
        match spans[index].parent_span_id {
            None => roots.push(index),
            Some(parent) if by_id.contains_key(&parent) => {
                children.entry(parent).or_default().push(index)
            }
            Some(_) => orphans.push(index),
        }
    }
    SpanTree {
        by_id,
        unique,
        children,
        roots,
        orphans,
        duplicates,
    }
}

// --- 3. clock skew ----------------------------------------------------------------------

/// Moves spans from other clocks inside their parents; returns how many spans the walk
/// reached (every span below a root or an orphan, each once).
fn adjust_clock_skew(tree: &SpanTree, spans: &mut [Span], max_skew_ns: i64) -> usize {
    // Iterative depth-first walk, in Python's order: a deep trace must not overflow the
    // stack. Each entry: (span, its parent, the delta applied to the parent). The parent's
    // clock is read from the parent itself; resources are never changed here.
    let mut stack: Vec<(usize, Option<usize>, i64)> = tree
        .roots
        .iter()
        .chain(&tree.orphans)
        .map(|&index| (index, None, 0))
        .collect();
    let mut reached = 0;
    while let Some((index, parent, parent_delta)) = stack.pop() {
        reached += 1;
        let delta = match parent {
            None => 0,
            // Same clock as the parent: it moves as the parent moved.
            Some(parent) if same_clock(&spans[index], &spans[parent]) => parent_delta,
            Some(parent) => {
                let delta = skew(&spans[index], &spans[parent]);
                if delta != 0 && i128::from(delta).abs() > i128::from(max_skew_ns) {
                    // A clock that wrong is a finding, not noise: say so, move nothing.
                    set_int(&mut spans[index].attributes, UNADJUSTED_ATTRIBUTE, delta);
                    0
                } else {
                    delta
                }
            }
        };
        if delta != 0 {
            shift(&mut spans[index], delta);
        }
        stack.extend(
            tree.children_of(&spans[index])
                .iter()
                .map(|&child| (child, Some(index), delta)),
        );
    }
    reached
}

fn same_clock(span: &Span, parent: &Span) -> bool {
    // Spans of one resource share its Arc: the pointer settles most comparisons.
    let (clock, parent_clock) = (&span.resource.clock, &parent.resource.clock);
    Arc::ptr_eq(clock, parent_clock) || clock == parent_clock
}

/// How far to move `child` to fit inside `parent` (0 when it fits or may not fit).
fn skew(child: &Span, parent: &Span) -> i64 {
    if child.kind == SpanKind::Consumer || parent.kind == SpanKind::Producer {
        return 0; // messaging is asynchronous: the consumer may well outlive the producer
    }
    // Python's integers do not overflow; i128 keeps nonsense timestamps from wrapping.
    let (child_start, child_end) = (i128::from(child.start_ns), i128::from(child.end_ns));
    let (parent_start, parent_end) = (i128::from(parent.start_ns), i128::from(parent.end_ns));
    let child_duration = child_end - child_start;
    let parent_duration = parent_end - parent_start;
    let delta = if child_duration > parent_duration {
        // The child outlived its parent (async work, or the parent timed out): only make
        // sure it does not start before the parent.
        (parent_start - child_start).max(0)
    } else if child_start >= parent_start && child_end <= parent_end {
        0
    } else {
        // Network latency assumed equal on the way in and out: centre the child
        // (`div_euclid` is Python's floor division).
        parent_start + (parent_duration - child_duration).div_euclid(2) - child_start
    };
    delta.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

fn shift(span: &mut Span, delta: i64) {
    span.start_ns = span.start_ns.saturating_add(delta);
    span.end_ns = span.end_ns.saturating_add(delta);
    for event in &mut span.events {
        event.time_ns = event.time_ns.saturating_add(delta);
    }
    // The mark is the field itself: stores keep it and the query API shows it as the
    // `observer.clock_skew.adjustment_us` tag, so no attribute repeats it.
    span.skew_adjustment_ns = span.skew_adjustment_ns.saturating_add(delta);
}

/// `Attributes::set`, without allocating the key when it is there already (as it is when
/// an adjusted trace is emitted again).
fn set_int(attributes: &mut Attributes, key: &'static str, value: i64) {
    match attributes.0.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = Value::Int(value),
        None => attributes.0.push((key.to_owned(), Value::Int(value))),
    }
}

// --- 4. the verdict ---------------------------------------------------------------------

/// The callee a client span names for a peer that may send no spans (`PEER_ATTRIBUTES`).
pub fn peer_of(span: &Span) -> Option<&str> {
    PEER_ATTRIBUTES
        .iter()
        .find_map(|key| span.attributes.text(key))
}

/// The nearest spans below `index` that cross a process boundary, through internal spans.
pub fn remote_descendants(tree: &SpanTree, spans: &[Span], index: usize) -> Vec<usize> {
    let mut found = Vec::new();
    walk_remote_descendants(tree, spans, index, &mut Vec::new(), |below| {
        found.push(below);
        false
    });
    found
}

/// Calls `visit` with each of `remote_descendants`, in its order, until `visit` returns
/// true (then returns true). `pending` is scratch space, so a caller asking for many spans
/// allocates it once.
fn walk_remote_descendants(
    tree: &SpanTree,
    spans: &[Span],
    index: usize,
    pending: &mut Vec<usize>,
    mut visit: impl FnMut(usize) -> bool,
) -> bool {
    pending.clear();
    pending.extend_from_slice(tree.children_of(&spans[index]));
    // Without a cycle of parent ids each span is taken at most once; Python loops forever
    // below a span in a cycle of internal spans, which no caller asks about. Stop there.
    let mut taken = 0;
    while let Some(child) = pending.pop() {
        taken += 1;
        if taken > tree.by_id.len() {
            break;
        }
        if spans[child].kind.is_remote() {
            if visit(child) {
                return true;
            }
        } else {
            pending.extend_from_slice(tree.children_of(&spans[child]));
        }
    }
    false
}

/// The nearest span above `index` that crossed a process boundary.
pub fn first_remote_ancestor(tree: &SpanTree, spans: &[Span], index: usize) -> Option<usize> {
    let mut seen = 0;
    let mut parent = tree.parent(spans, index);
    while let Some(above) = parent {
        if spans[above].kind.is_remote() {
            break;
        }
        seen += 1;
        if seen > tree.by_id.len() {
            return None; // a cycle of parent ids: bad input, not a hang
        }
        parent = tree.parent(spans, above);
    }
    parent
}

/// `reached`: how many spans the walk from the roots and orphans reached.
fn judge(tree: &SpanTree, spans: &[Span], reached: usize) -> Verdict {
    let mut verdict = Verdict::default();
    if !tree.orphans.is_empty() {
        // Missing parent ids, each once, in the order first seen.
        let mut missing: Vec<SpanId> = Vec::new();
        let mut seen: HashSet<SpanId> = HashSet::new();
        for &index in &tree.orphans {
            let span = &spans[index];
            if let Some(parent) = span.parent_span_id {
                if seen.insert(parent) {
                    missing.push(parent);
                }
            }
            verdict.add(ORPHAN, hex(&span.span_id));
        }
        for parent in &missing {
            verdict.add(MISSING_PARENT, hex(parent));
        }
    }
    for &index in &tree.duplicates {
        verdict.add(DUPLICATE_SPAN_ID, hex(&spans[index].span_id));
    }
    for index in unreachable(tree, spans, reached) {
        verdict.add(PARENT_CYCLE, hex(&spans[index].span_id));
    }
    let mut pending = Vec::new();
    for &index in &tree.unique {
        let span = &spans[index];
        if span.kind == SpanKind::Client
            && peer_of(span).is_none()
            && !has_callee_side(tree, spans, index, &mut pending)
        {
            verdict.add(CLIENT_WITHOUT_SERVER, hex(&span.span_id));
        }
    }
    verdict
}

/// Spans no root or orphan reaches (their parent ids go round in a circle), in span order.
fn unreachable(tree: &SpanTree, spans: &[Span], reached: usize) -> Vec<usize> {
    if reached == tree.by_id.len() {
        return Vec::new();
    }
    // Rare: find which ones, the slow way.
    let mut reachable = vec![false; spans.len()];
    let mut pending: Vec<usize> = tree.roots.iter().chain(&tree.orphans).copied().collect();
    while let Some(index) = pending.pop() {
        reachable[index] = true;
        pending.extend_from_slice(tree.children_of(&spans[index]));
    }
    tree.unique
        .iter()
        .copied()
        .filter(|&index| !reachable[index])
        .collect()
}

fn has_callee_side(
    tree: &SpanTree,
    spans: &[Span],
    index: usize,
    pending: &mut Vec<usize>,
) -> bool {
    let client = &spans[index];
    walk_remote_descendants(tree, spans, index, pending, |below| {
        let below = &spans[below];
        // A client below a client of the same service is a proxy hop (the app's call
        // through its sidecar): the server side, if any, is the inner client's to find.
        below.kind.is_callee()
            || (below.kind == SpanKind::Client && below.service() == client.service())
    })
}

#[cfg(test)]
mod tests {
    //! tests/unit/test_collector_reconstruct.py, test for test.
    use super::*;
    use crate::model::{Event, Resource, SpanKind::*, Status};

    const MS: i64 = 1_000_000;
    const T0: i64 = 1_700_000_000_000_000_000;
    const SKEW_BOUND: i64 = 60_000 * MS;
    const TRACE: [u8; 16] = [
        0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47,
        0x36,
    ];

    /// A short hex id padded to 16 characters, as collector_spans.py `sid`.
    fn sid(short: &str) -> SpanId {
        u64::from_str_radix(short, 16).unwrap().to_be_bytes()
    }

    /// collector_spans.py `span`: chained setters stand in for its keyword arguments.
    struct Builder {
        span: Span,
        service: String,
        resource: Vec<(&'static str, &'static str)>,
    }

    fn span(id: &str, parent: &str) -> Builder {
        Builder {
            span: Span {
                trace_id: TRACE,
                span_id: sid(id),
                parent_span_id: (!parent.is_empty()).then(|| sid(parent)),
                name: "op".into(),
                kind: Internal,
                start_ns: T0,
                end_ns: T0 + 10 * MS,
                status: Status::Unset,
                status_message: String::new(),
                attributes: Attributes::default(),
                resource: Arc::new(Resource {
                    attributes: Attributes::default(),
                    service: "".into(),
                    clock: "".into(),
                }),
                events: Vec::new(),
                links: Vec::new(),
                skew_adjustment_ns: 0,
            },
            service: "svc".into(),
            resource: Vec::new(),
        }
    }

    impl Builder {
        fn service(mut self, service: &str) -> Self {
            self.service = service.into();
            self
        }
        fn kind(mut self, kind: SpanKind) -> Self {
            self.span.kind = kind;
            self
        }
        fn name(mut self, name: &str) -> Self {
            self.span.name = name.into();
            self
        }
        fn start_ms(mut self, ms: i64) -> Self {
            self.span.start_ns = T0 + ms * MS;
            self
        }
        fn end_ms(mut self, ms: i64) -> Self {
            self.span.end_ns = T0 + ms * MS;
            self
        }
        fn attribute(mut self, key: &str, value: Value) -> Self {
            self.span.attributes.set(key, value);
            self
        }
        fn shared(self) -> Self {
            self.attribute(ZIPKIN_SHARED, Value::Bool(true))
        }
        fn resource(mut self, key: &'static str, value: &'static str) -> Self {
            self.resource.push((key, value));
            self
        }
        fn build(mut self) -> Span {
            let mut attributes = Attributes::default();
            attributes.set("service.name", Value::Str(self.service.clone()));
            for (key, value) in &self.resource {
                attributes.set(*key, Value::Str((*value).into()));
            }
            // Intake's clock (reconstruct.py `_host`), without the instance case.
            let clock = ["k8s.node.name", "host.name", "host.id"]
                .iter()
                .find_map(|key| attributes.text(key))
                .unwrap_or(&self.service)
                .into();
            self.span.resource = Arc::new(Resource {
                attributes,
                service: self.service.as_str().into(),
                clock,
            });
            self.span
        }
    }

    fn trace_of(spans: Vec<Span>) -> Trace {
        Trace {
            trace_id: TRACE,
            spans,
            ..Trace::default()
        }
    }

    fn rebuilt(spans: Vec<Span>) -> Trace {
        let mut trace = trace_of(spans);
        reconstruct(&mut trace, SKEW_BOUND);
        trace
    }

    fn by_name<'a>(trace: &'a Trace, name: &str) -> &'a Span {
        trace
            .spans
            .iter()
            .rev()
            .find(|span| span.name == name)
            .unwrap()
    }

    fn reasons(trace: &Trace) -> Vec<(&'static str, Vec<String>)> {
        trace.verdict.reasons.clone()
    }

    fn hexes(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|id| hex(&sid(id))).collect()
    }

    #[test]
    fn derived_ids_are_pythons() {
        // python3 -c "import hashlib;print(hashlib.blake2b(bytes.fromhex('00f067aa0ba902b7')
        //   +b'svc',digest_size=8).hexdigest())"
        let original = [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7];
        assert_eq!(hex(&derived_span_id(&original, "svc")), "325b49b68c32c3fa");
    }

    // --- Zipkin shared span ids -----------------------------------------------------------

    /// web's client and app's server share span id 2; app's own work hangs below id 2.
    fn shared_rpc() -> Vec<Span> {
        vec![
            span("1", "")
                .service("web")
                .kind(Server)
                .name("web-in")
                .end_ms(100)
                .build(),
            span("2", "1")
                .service("web")
                .kind(Client)
                .name("web-out")
                .start_ms(10)
                .end_ms(90)
                .build(),
            span("2", "1")
                .service("app")
                .kind(Server)
                .name("app-in")
                .start_ms(15)
                .end_ms(85)
                .shared()
                .build(),
            span("3", "2")
                .service("app")
                .name("app-work")
                .start_ms(20)
                .end_ms(80)
                .build(),
        ]
    }

    #[test]
    fn a_shared_server_half_gets_its_own_id_under_its_client_half() {
        let trace = rebuilt(shared_rpc());
        let server = by_name(&trace, "app-in");
        assert_eq!(server.parent_span_id, Some(sid("2")));
        assert_eq!(server.span_id, derived_span_id(&sid("2"), "app"));
        assert_eq!(by_name(&trace, "web-out").span_id, sid("2"));
    }

    #[test]
    fn spans_below_a_shared_id_follow_the_half_of_their_own_service() {
        let trace = rebuilt(shared_rpc());
        assert_eq!(
            by_name(&trace, "app-work").parent_span_id,
            Some(by_name(&trace, "app-in").span_id)
        );
        assert!(trace.verdict.is_complete());
    }

    #[test]
    fn reconstructing_a_trace_again_leaves_the_split_as_it_was() {
        let mut trace = rebuilt(shared_rpc());
        let ids = |trace: &Trace| {
            trace
                .spans
                .iter()
                .map(|s| (s.span_id, s.parent_span_id))
                .collect::<Vec<_>>()
        };
        let before = ids(&trace);
        reconstruct(&mut trace, SKEW_BOUND);
        assert_eq!(ids(&trace), before);
    }

    #[test]
    fn a_late_child_of_a_shared_id_follows_the_half_split_earlier() {
        let mut trace = rebuilt(shared_rpc());
        trace.spans.push(
            span("4", "2")
                .service("app")
                .name("late-work")
                .start_ms(30)
                .end_ms(40)
                .build(),
        );
        reconstruct(&mut trace, SKEW_BOUND);
        assert_eq!(
            by_name(&trace, "late-work").parent_span_id,
            Some(by_name(&trace, "app-in").span_id)
        );
    }

    #[test]
    fn a_shared_server_half_whose_client_never_came_is_split_and_partial() {
        let trace = rebuilt(vec![span("2", "")
            .service("app")
            .kind(Server)
            .name("app-in")
            .shared()
            .build()]);
        assert_eq!(trace.spans[0].span_id, derived_span_id(&sid("2"), "app"));
        let missing = reasons(&trace)
            .into_iter()
            .find(|(reason, _)| *reason == MISSING_PARENT);
        assert_eq!(missing, Some((MISSING_PARENT, hexes(&["2"]))));
    }

    #[test]
    fn only_a_true_shared_mark_splits() {
        // Python tests `is True`: a string "true" or an integer 1 is no mark.
        let trace = rebuilt(vec![
            span("2", "")
                .service("app")
                .attribute(ZIPKIN_SHARED, Value::Str("true".into()))
                .build(),
            span("3", "")
                .service("app")
                .attribute(ZIPKIN_SHARED, Value::Int(1))
                .build(),
        ]);
        assert_eq!(trace.spans[0].span_id, sid("2"));
        assert_eq!(trace.spans[1].span_id, sid("3"));
    }

    // --- the tree -------------------------------------------------------------------------

    #[test]
    fn the_tree_holds_indexes_in_span_order() {
        let spans = vec![
            span("1", "").build(),
            span("3", "1").build(),
            span("2", "1").build(),
            span("3", "1").build(),
            span("4", "9").build(),
        ];
        let mut trace = trace_of(spans);
        let tree = reconstruct(&mut trace, SKEW_BOUND);
        assert_eq!(tree.unique, [0, 1, 2, 4]);
        assert_eq!(tree.duplicates, [3]);
        assert_eq!(tree.roots, [0]);
        assert_eq!(tree.orphans, [4]);
        assert_eq!(tree.children[&sid("1")], [1, 2]);
        assert_eq!(tree.parent(&trace.spans, 2), Some(0));
        assert_eq!(tree.parent(&trace.spans, 3), Some(0));
        assert_eq!(tree.parent(&trace.spans, 4), None);
        assert_eq!(tree.parent(&trace.spans, 0), None);
    }

    #[test]
    fn remote_spans_are_found_through_internal_ones() {
        let mut trace = trace_of(vec![
            span("1", "").kind(Server).build(),
            span("2", "1").build(),
            span("3", "2").kind(Client).build(),
            span("4", "1").kind(Producer).build(),
            span("5", "3").kind(Server).build(),
            span("6", "5").build(),
        ]);
        let tree = reconstruct(&mut trace, SKEW_BOUND);
        // Python's order: a stack, the last child first.
        assert_eq!(remote_descendants(&tree, &trace.spans, 0), [3, 2]);
        assert_eq!(
            remote_descendants(&tree, &trace.spans, 5),
            Vec::<usize>::new()
        );
        assert_eq!(first_remote_ancestor(&tree, &trace.spans, 5), Some(4));
        assert_eq!(first_remote_ancestor(&tree, &trace.spans, 2), Some(0));
        assert_eq!(first_remote_ancestor(&tree, &trace.spans, 0), None);
    }

    #[test]
    fn a_cycle_of_parents_ends_the_climb() {
        let mut trace = trace_of(vec![span("2", "3").build(), span("3", "2").build()]);
        let tree = reconstruct(&mut trace, SKEW_BOUND);
        assert_eq!(first_remote_ancestor(&tree, &trace.spans, 0), None);
    }

    #[test]
    fn the_first_non_empty_peer_attribute_names_the_peer() {
        let client = span("1", "")
            .kind(Client)
            .attribute("peer.service", Value::Str(String::new()))
            .attribute("net.peer.name", Value::Str("db-host".into()))
            .attribute("server.address", Value::Int(5))
            .attribute("db.system", Value::Str("postgresql".into()))
            .build();
        assert_eq!(peer_of(&client), Some("db-host"));
        assert_eq!(peer_of(&span("1", "").build()), None);
    }

    // --- the verdict ----------------------------------------------------------------------

    #[test]
    fn a_whole_trace_is_complete() {
        let trace = rebuilt(vec![
            span("1", "")
                .service("web")
                .kind(Server)
                .end_ms(100)
                .build(),
            span("2", "1")
                .service("web")
                .kind(Client)
                .start_ms(10)
                .end_ms(90)
                .build(),
            span("3", "2")
                .service("app")
                .kind(Server)
                .start_ms(20)
                .end_ms(80)
                .build(),
        ]);
        assert!(trace.verdict.is_complete());
        assert_eq!(reasons(&trace), []);
    }

    #[test]
    fn a_missing_middle_span_makes_the_trace_partial_naming_it_and_the_cut_off_span() {
        let trace = rebuilt(vec![
            span("1", "")
                .service("web")
                .kind(Server)
                .end_ms(100)
                .build(),
            span("3", "2")
                .service("db")
                .kind(Server)
                .start_ms(20)
                .end_ms(80)
                .build(),
        ]);
        assert_eq!(trace.verdict.completeness(), "partial");
        assert_eq!(
            reasons(&trace),
            [(ORPHAN, hexes(&["3"])), (MISSING_PARENT, hexes(&["2"]))]
        );
    }

    #[test]
    fn a_missing_parent_is_named_once_in_the_order_first_seen() {
        let trace = rebuilt(vec![
            span("3", "9").build(),
            span("4", "8").build(),
            span("5", "9").build(),
        ]);
        assert_eq!(
            reasons(&trace),
            [
                (ORPHAN, hexes(&["3", "4", "5"])),
                (MISSING_PARENT, hexes(&["9", "8"]))
            ]
        );
    }

    #[test]
    fn a_client_span_without_its_server_side_makes_the_trace_partial() {
        let trace = rebuilt(vec![
            span("1", "")
                .service("web")
                .kind(Server)
                .end_ms(100)
                .build(),
            span("2", "1")
                .service("web")
                .kind(Client)
                .start_ms(10)
                .end_ms(90)
                .build(),
        ]);
        assert_eq!(reasons(&trace), [(CLIENT_WITHOUT_SERVER, hexes(&["2"]))]);
    }

    #[test]
    fn a_client_span_naming_a_peer_that_sends_no_spans_is_complete() {
        let trace = rebuilt(vec![
            span("1", "")
                .service("web")
                .kind(Server)
                .end_ms(100)
                .build(),
            span("2", "1")
                .service("web")
                .kind(Client)
                .attribute("db.system", Value::Str("postgresql".into()))
                .build(),
        ]);
        assert!(trace.verdict.is_complete());
    }

    #[test]
    fn an_app_client_calling_through_its_sidecar_client_is_complete() {
        let trace = rebuilt(vec![
            span("1", "")
                .service("web")
                .kind(Server)
                .end_ms(100)
                .build(),
            span("2", "1")
                .service("web")
                .kind(Client)
                .start_ms(5)
                .end_ms(95)
                .build(),
            span("3", "2")
                .service("web")
                .kind(Client)
                .start_ms(6)
                .end_ms(94)
                .build(),
            span("4", "3")
                .service("app")
                .kind(Server)
                .start_ms(10)
                .end_ms(90)
                .build(),
        ]);
        assert!(trace.verdict.is_complete());
    }

    #[test]
    fn spans_whose_parents_form_a_cycle_are_reported() {
        let trace = rebuilt(vec![
            span("1", "").build(),
            span("2", "3").build(),
            span("3", "2").build(),
        ]);
        let mut cycle = reasons(&trace)
            .into_iter()
            .find(|(reason, _)| *reason == PARENT_CYCLE)
            .unwrap()
            .1;
        cycle.sort();
        assert_eq!(cycle, hexes(&["2", "3"]));
    }

    #[test]
    fn two_spans_with_one_id_are_reported() {
        let trace = rebuilt(vec![
            span("1", "").service("a").build(),
            span("1", "").service("b").build(),
        ]);
        assert_eq!(reasons(&trace), [(DUPLICATE_SPAN_ID, hexes(&["1"]))]);
    }

    // --- clock skew -----------------------------------------------------------------------

    fn skewed_pair(child_start_ms: i64, child_end_ms: i64) -> (Span, Span) {
        let parent = span("1", "")
            .service("web")
            .kind(Client)
            .end_ms(100)
            .resource("host.name", "node-a")
            .build();
        let child = span("2", "1")
            .service("app")
            .kind(Server)
            .start_ms(child_start_ms)
            .end_ms(child_end_ms)
            .resource("host.name", "node-b")
            .build();
        (parent, child)
    }

    #[test]
    fn a_child_from_a_skewed_host_is_moved_inside_its_parent_and_marked() {
        let (parent, mut child) = skewed_pair(-30, 50); // 80 ms long, 30 ms too early
        child.events.push(Event {
            time_ns: child.start_ns + 5 * MS,
            name: "received".into(),
            attributes: Attributes::default(),
        });
        let original_start = child.start_ns;
        let trace = rebuilt(vec![parent, child]);
        let (parent, child) = (&trace.spans[0], &trace.spans[1]);
        let delta = parent.start_ns + (100 - 80) / 2 * MS - original_start;
        assert_eq!(child.start_ns, parent.start_ns + 10 * MS);
        assert_eq!(child.end_ns - child.start_ns, 80 * MS);
        assert_eq!(child.skew_adjustment_ns, delta);
        assert_eq!(child.events[0].time_ns, child.start_ns + 5 * MS);
    }

    #[test]
    fn spans_on_the_same_host_as_an_adjusted_span_move_with_it() {
        let (parent, child) = skewed_pair(-30, 50);
        let grandchild = span("3", "2")
            .service("app")
            .start_ms(-20)
            .end_ms(40)
            .resource("host.name", "node-b")
            .build();
        let trace = rebuilt(vec![parent, child, grandchild]);
        assert_ne!(trace.spans[1].skew_adjustment_ns, 0);
        assert_eq!(
            trace.spans[2].skew_adjustment_ns,
            trace.spans[1].skew_adjustment_ns
        );
    }

    #[test]
    fn a_skew_beyond_the_bound_is_left_and_marked() {
        let (parent, child) = skewed_pair(-30, 50);
        let original = (child.start_ns, child.end_ns);
        let mut trace = trace_of(vec![parent, child]);
        reconstruct(&mut trace, 10 * MS);
        let child = &trace.spans[1];
        assert_eq!((child.start_ns, child.end_ns), original);
        assert_eq!(child.skew_adjustment_ns, 0);
        assert_eq!(
            child.attributes.get(UNADJUSTED_ATTRIBUTE),
            Some(&Value::Int(40 * MS))
        );
    }

    #[test]
    fn a_child_that_fits_inside_its_parent_is_not_moved() {
        let (parent, child) = skewed_pair(10, 90);
        let trace = rebuilt(vec![parent, child]);
        assert_eq!(trace.spans[1].skew_adjustment_ns, 0);
    }

    #[test]
    fn a_child_that_outlives_its_parent_is_only_moved_to_start_in_it() {
        let (parent, child) = skewed_pair(-5, 200);
        let trace = rebuilt(vec![parent, child]);
        assert_eq!(trace.spans[1].skew_adjustment_ns, 5 * MS);
        assert_eq!(trace.spans[1].start_ns, trace.spans[0].start_ns);
    }

    #[test]
    fn a_consumer_outliving_its_producer_is_not_moved() {
        let trace = rebuilt(vec![
            span("1", "")
                .service("web")
                .kind(Producer)
                .end_ms(10)
                .build(),
            span("2", "1")
                .service("worker")
                .kind(Consumer)
                .start_ms(50)
                .end_ms(55)
                .build(),
        ]);
        assert_eq!(trace.spans[1].skew_adjustment_ns, 0);
    }

    #[test]
    fn reconstructing_an_adjusted_trace_again_moves_nothing() {
        let (parent, child) = skewed_pair(-30, 50);
        let mut trace = rebuilt(vec![parent, child]);
        let before = trace.spans.clone();
        reconstruct(&mut trace, SKEW_BOUND);
        assert_eq!(trace.spans, before);
    }
}
