//! The service graph and RED figures (port of observer/collector/graph.py, whose module
//! docstring says how calls are read from the tree and which Tempo metrics they feed).
//!
//! Calls are found by walking the reconstructed tree: from every server (or consumer)
//! span up through local spans to the nearest span that crossed a process boundary, and
//! from every client (or producer) span that has no server side below it to the virtual
//! node its peer attributes name. The metrics are aggregated here and exported by the
//! caller at scrape time from a [`GraphSnapshot`].

use foldhash::{HashMap, HashMapExt};
use std::borrow::Borrow;
use std::hash::{Hash, Hasher};

use crate::model::{Edge, Span, SpanKind, Status, Trace};
use crate::reconstruct::{first_remote_ancestor, peer_of, remote_descendants, SpanTree};

const NS_PER_S: f64 = 1e9;

// Tempo's connection_type values (modules/generator/processor/servicegraphs/store/edge.go).
pub const UNKNOWN: &str = "";
pub const DATABASE: &str = "database";
pub const MESSAGING_SYSTEM: &str = "messaging_system";
pub const VIRTUAL_NODE: &str = "virtual_node";

/// The metric families whose label sets are bounded, as the overflow counter names them.
pub const GRAPH_METRIC: &str = "traces_service_graph";
pub const RED_METRIC: &str = "traces_spanmetrics";
pub const UNPAIRED_METRIC: &str = "traces_service_graph_unpaired";

pub const DEFAULT_MAX_SERIES: usize = 10_000;

/// Tempo's service-graph default: prometheus.ExponentialBuckets(0.1, 2, 8).
pub fn default_request_buckets() -> Vec<f64> {
    (0..8).map(|i| 0.1 * f64::from(1u32 << i)).collect()
}

/// Tempo's span-metrics default: prometheus.ExponentialBuckets(0.002, 2, 14).
pub fn default_latency_buckets() -> Vec<f64> {
    (0..14).map(|i| 0.002 * f64::from(1u32 << i)).collect()
}

/// One request from a caller service to a callee, as one trace shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    pub caller: String,
    pub callee: String,
    pub connection_type: &'static str,
    pub failed: bool,
    pub client_seconds: f64,
    pub server_seconds: f64,
    pub is_virtual: bool,
    /// Indexes into the `trace.spans` it was read from: a late re-emission counts a call
    /// again only when one of them is new.
    pub spans: CallSpans,
}

/// The spans a call was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallSpans {
    /// Both sides were seen: the caller's span and the callee's.
    Pair { caller: usize, callee: usize },
    /// A call to or from a virtual node: only the known side's span.
    One(usize),
}

impl CallSpans {
    fn any(self, mut test: impl FnMut(usize) -> bool) -> bool {
        match self {
            CallSpans::Pair { caller, callee } => test(caller) || test(callee),
            CallSpans::One(index) => test(index),
        }
    }
}

/// A span that should be one side of a call whose other side is unknown.
#[derive(Clone, Debug, PartialEq)]
pub struct Unpaired {
    pub client: String,
    pub server: String,
    pub connection_type: &'static str,
    /// Index into `trace.spans`.
    pub span: usize,
}

/// Every call in a reconstructed trace, and the spans that could not be paired, in the
/// order of the tree's unique spans. `spans` is the trace's spans the tree was built from.
pub fn find_calls(tree: &SpanTree, spans: &[Span]) -> (Vec<Call>, Vec<Unpaired>) {
    let mut calls = Vec::new();
    let mut unpaired = Vec::new();
    for &index in &tree.unique {
        let kind = spans[index].kind;
        if kind.is_callee() {
            callee_side(tree, spans, index, &mut calls, &mut unpaired);
        } else if kind.is_caller() {
            caller_side(tree, spans, index, &mut calls, &mut unpaired);
        }
    }
    (calls, unpaired)
}

/// A span's duration in seconds, never negative. Subtracting in i128 keeps the result
/// Python's (arbitrary-precision ints) even for timestamps that would overflow i64.
fn seconds(span: &Span) -> f64 {
    let nanos = (i128::from(span.end_ns) - i128::from(span.start_ns)).max(0);
    nanos as f64 / NS_PER_S
}

fn callee_side(
    tree: &SpanTree,
    spans: &[Span],
    index: usize,
    calls: &mut Vec<Call>,
    unpaired: &mut Vec<Unpaired>,
) {
    let span = &spans[index];
    let service = span.service();
    let messaging = span.kind == SpanKind::Consumer;
    if let Some(above) = first_remote_ancestor(tree, spans, index) {
        let caller = &spans[above];
        if caller.service() == service {
            return; // a hop inside one service (sidecar → app): the graph has no self-loops
        }
        let connection_type = if messaging || caller.kind == SpanKind::Producer {
            MESSAGING_SYSTEM
        } else {
            UNKNOWN
        };
        calls.push(Call {
            caller: caller.service().to_owned(),
            callee: service.to_owned(),
            connection_type,
            failed: caller.is_error() || span.is_error(),
            client_seconds: seconds(caller),
            server_seconds: seconds(span),
            is_virtual: false,
            spans: CallSpans::Pair {
                caller: above,
                callee: index,
            },
        });
        return;
    }
    match span.attributes.text("peer.service") {
        // The server span names its uninstrumented caller (Zipkin's remoteEndpoint).
        Some(peer) if peer != service => {
            let seconds = seconds(span);
            calls.push(Call {
                caller: peer.to_owned(),
                callee: service.to_owned(),
                connection_type: if messaging {
                    MESSAGING_SYSTEM
                } else {
                    VIRTUAL_NODE
                },
                failed: span.is_error(),
                client_seconds: seconds,
                server_seconds: seconds,
                is_virtual: true,
                spans: CallSpans::One(index),
            });
        }
        // A parent id that never arrived: the caller is unknown. (A root is an entry
        // point, where the request came from outside; not a finding.)
        _ if span.parent_span_id.is_some() => unpaired.push(Unpaired {
            client: String::new(),
            server: service.to_owned(),
            connection_type: if messaging { MESSAGING_SYSTEM } else { UNKNOWN },
            span: index,
        }),
        _ => {}
    }
}

fn caller_side(
    tree: &SpanTree,
    spans: &[Span],
    index: usize,
    calls: &mut Vec<Call>,
    unpaired: &mut Vec<Unpaired>,
) {
    let span = &spans[index];
    let service = span.service();
    let paired_below = remote_descendants(tree, spans, index)
        .into_iter()
        .any(|below| {
            let below = &spans[below];
            // The callee's side records the call; or this is a hop through the service's own
            // proxy (the app's client above its sidecar's), and the inner client pairs.
            below.kind.is_callee() || (below.kind.is_caller() && below.service() == service)
        });
    if paired_below {
        return;
    }
    let messaging = span.kind == SpanKind::Producer;
    let Some(peer) = peer_of(span) else {
        unpaired.push(Unpaired {
            client: service.to_owned(),
            server: String::new(),
            connection_type: if messaging { MESSAGING_SYSTEM } else { UNKNOWN },
            span: index,
        });
        return;
    };
    if peer == service {
        return;
    }
    // Any db.system, even one that is not the name used: the peer is a database.
    let connection_type = if messaging {
        MESSAGING_SYSTEM
    } else if span.attributes.contains("db.system") {
        DATABASE
    } else {
        VIRTUAL_NODE
    };
    let seconds = seconds(span);
    calls.push(Call {
        caller: service.to_owned(),
        callee: peer.to_owned(),
        connection_type,
        failed: span.is_error(),
        client_seconds: seconds,
        server_seconds: seconds,
        is_virtual: true,
        spans: CallSpans::One(index),
    });
}

/// Calls summed per caller → callee pair (virtual or not), in the order first seen.
pub fn edges_of(calls: &[Call]) -> Vec<Edge> {
    let mut edges: Vec<Edge> = Vec::new();
    let mut slots: HashMap<(&str, &str, bool), usize> = HashMap::new();
    for call in calls {
        let slot = *slots
            .entry((&call.caller, &call.callee, call.is_virtual))
            .or_insert_with(|| {
                edges.push(Edge {
                    caller: call.caller.clone(),
                    callee: call.callee.clone(),
                    calls: 0,
                    errors: 0,
                    is_virtual: call.is_virtual,
                });
                edges.len() - 1
            });
        let edge = &mut edges[slot];
        edge.calls += 1;
        if call.failed {
            edge.errors += 1;
        }
    }
    edges
}

/// A late span paired an already-emitted span that had, alone, been counted as a call to
/// or from a virtual node (a client naming its peer, a server naming its caller): that
/// request is counted already, under the name the known side gave its peer. Counters
/// cannot be taken back; counting it again would count one request twice.
fn counted_as_virtual_before(call: &Call, spans: &[Span], already_emitted: usize) -> bool {
    if call.is_virtual {
        return false;
    }
    let CallSpans::Pair { caller, callee } = call.spans else {
        return false;
    };
    match (caller >= already_emitted, callee >= already_emitted) {
        (false, true) => {
            let caller = &spans[caller];
            peer_of(caller).is_some_and(|peer| peer != caller.service())
        }
        (true, false) => {
            let callee = &spans[callee];
            callee
                .attributes
                .text("peer.service")
                .is_some_and(|named| named != callee.service())
        }
        _ => false,
    }
}

// --- metrics ----------------------------------------------------------------------------

/// Label values seen as strs, so a table keyed by owned labels can be searched with the
/// strs at hand: a label set costs Strings only the first time it is seen. (std's HashMap
/// looks up by any `Q` the key borrows as; `[String; N]` cannot borrow as `[&str; N]`, but
/// it can as this trait object.)
trait LabelView<const N: usize> {
    fn labels(&self) -> [&str; N];
}

impl<const N: usize> LabelView<N> for [String; N] {
    fn labels(&self) -> [&str; N] {
        self.each_ref().map(String::as_str)
    }
}

impl<const N: usize> LabelView<N> for [&str; N] {
    fn labels(&self) -> [&str; N] {
        *self
    }
}

// `Borrow` requires the view to hash as the owned key does: `[&str; N]` and `[String; N]`
// both hash as a slice of strs.
impl<const N: usize> Hash for dyn LabelView<N> + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.labels().hash(state);
    }
}

impl<const N: usize> PartialEq for dyn LabelView<N> + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.labels() == other.labels()
    }
}

impl<const N: usize> Eq for dyn LabelView<N> + '_ {}

impl<'a, const N: usize> Borrow<dyn LabelView<N> + 'a> for [String; N] {
    fn borrow(&self) -> &(dyn LabelView<N> + 'a) {
        self
    }
}

/// Rows by label set, kept in the order first seen (the order a Python dict keeps and the
/// snapshot shows), holding at most `max_series` label sets; what falls beyond is counted.
#[derive(Debug)]
struct Table<const N: usize, R> {
    metric: &'static str,
    max_series: usize,
    /// Label set → index into `rows`.
    index: HashMap<[String; N], usize>,
    rows: Vec<R>,
    /// Observations left out because the table was full.
    overflow: u64,
}

impl<const N: usize, R> Table<N, R> {
    fn new(metric: &'static str, max_series: usize) -> Self {
        Table {
            metric,
            max_series,
            index: HashMap::new(),
            rows: Vec::new(),
            overflow: 0,
        }
    }

    /// The row of `labels`, made by `new_row` when the label set is new and the table has
    /// room; None (counted as overflow) when it has not. The first overflow of the table
    /// is reported in `warnings`, so the caller logs it once.
    fn row(
        &mut self,
        labels: [&str; N],
        warnings: &mut Vec<&'static str>,
        new_row: impl FnOnce() -> R,
    ) -> Option<&mut R> {
        if let Some(&slot) = self.index.get(&labels as &dyn LabelView<N>) {
            return Some(&mut self.rows[slot]);
        }
        if self.rows.len() >= self.max_series {
            if self.overflow == 0 {
                warnings.push(self.metric);
            }
            self.overflow += 1;
            return None;
        }
        self.index
            .insert(labels.map(str::to_owned), self.rows.len());
        self.rows.push(new_row());
        self.rows.last_mut()
    }

    /// Every label set with its row, in the order first seen.
    fn in_order(&self) -> Vec<(&[String; N], &R)> {
        let mut keys: Vec<Option<&[String; N]>> = vec![None; self.rows.len()];
        for (labels, &slot) in &self.index {
            keys[slot] = Some(labels);
        }
        keys.into_iter()
            .zip(&self.rows)
            .map(|(labels, row)| (labels.expect("every row has its label set"), row))
            .collect()
    }
}

/// One Prometheus histogram series with the buckets counted here: one bisection per value.
#[derive(Debug)]
struct Histogram {
    /// Per bucket, not cumulative; the last counts values above the last bound.
    counts: Box<[u64]>,
    sum: f64,
}

impl Histogram {
    fn new(bounds: &[f64]) -> Self {
        Histogram {
            counts: vec![0; bounds.len() + 1].into_boxed_slice(),
            sum: 0.0,
        }
    }

    fn observe(&mut self, bounds: &[f64], value: f64) {
        self.counts[bisect_left(bounds, value)] += 1;
        self.sum += value;
    }
}

/// Python's `bisect.bisect_left`, step for step, so a value lands in the bucket Python
/// chose even for bounds that are not ascending: a value equal to a bound goes in that
/// bound's bucket (Prometheus' `le`).
fn bisect_left(bounds: &[f64], value: f64) -> usize {
    let (mut low, mut high) = (0, bounds.len());
    while low < high {
        let middle = (low + high) / 2;
        if bounds[middle] < value {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    low
}

/// A service-graph series: requests and failures, and the latency as either side saw it.
/// The histograms share the request counter's label set and bound, so they live in its row.
#[derive(Debug)]
struct RequestRow {
    total: u64,
    failed: u64,
    server_seconds: Histogram,
    client_seconds: Histogram,
}

/// A span-metrics series: spans counted and their durations.
#[derive(Debug)]
struct RedRow {
    calls: u64,
    latency: Histogram,
}

fn kind_label(kind: SpanKind) -> &'static str {
    match kind {
        SpanKind::Unspecified => "SPAN_KIND_UNSPECIFIED",
        SpanKind::Internal => "SPAN_KIND_INTERNAL",
        SpanKind::Server => "SPAN_KIND_SERVER",
        SpanKind::Client => "SPAN_KIND_CLIENT",
        SpanKind::Producer => "SPAN_KIND_PRODUCER",
        SpanKind::Consumer => "SPAN_KIND_CONSUMER",
    }
}

fn status_label(status: Status) -> &'static str {
    match status {
        Status::Unset => "STATUS_CODE_UNSET",
        Status::Ok => "STATUS_CODE_OK",
        Status::Error => "STATUS_CODE_ERROR",
    }
}

/// A histogram's series at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    pub bounds: Vec<f64>,
    /// Per label set: labels, per-bucket counts (NOT cumulative; len = bounds.len() + 1,
    /// the last being above the last bound), sum.
    pub series: Vec<(Vec<String>, Vec<u64>, f64)>,
}

/// Everything `GraphMetrics` holds, series in the order first seen, for the exporter.
/// Graph labels are (client, server, connection_type); span-metric labels are (service,
/// span_name, span_kind, status_code).
#[derive(Clone, Debug, PartialEq)]
pub struct GraphSnapshot {
    /// Labels, total requests, failed requests.
    pub requests: Vec<([String; 3], u64, u64)>,
    pub server_seconds: HistogramSnapshot,
    pub client_seconds: HistogramSnapshot,
    pub unpaired: Vec<([String; 3], u64)>,
    pub calls: Vec<([String; 4], u64)>,
    pub latency: HistogramSnapshot,
    /// Per bounded metric family (`GRAPH_METRIC`, `RED_METRIC`, `UNPAIRED_METRIC`), the
    /// observations left out because it had reached `max_series` label sets.
    pub overflow: Vec<(&'static str, u64)>,
}

/// Service-graph and RED metrics under Tempo's metrics-generator names and labels,
/// aggregated here and exported at scrape time.
#[derive(Debug)]
pub struct GraphMetrics {
    request_buckets: Vec<f64>,
    latency_buckets: Vec<f64>,
    requests: Table<3, RequestRow>,
    unpaired: Table<3, u64>,
    red: Table<4, RedRow>,
    /// Metrics whose first overflow happened since `take_overflow_warnings` last ran.
    warnings: Vec<&'static str>,
}

impl Default for GraphMetrics {
    fn default() -> Self {
        GraphMetrics::new(
            default_request_buckets(),
            default_latency_buckets(),
            DEFAULT_MAX_SERIES,
        )
    }
}

impl GraphMetrics {
    /// Buckets are upper bounds, ascending; `max_series` bounds each metric family's
    /// label sets.
    pub fn new(request_buckets: Vec<f64>, latency_buckets: Vec<f64>, max_series: usize) -> Self {
        GraphMetrics {
            request_buckets,
            latency_buckets,
            requests: Table::new(GRAPH_METRIC, max_series),
            unpaired: Table::new(UNPAIRED_METRIC, max_series),
            red: Table::new(RED_METRIC, max_series),
            warnings: Vec::new(),
        }
    }

    /// Count a reconstructed trace: its calls and unpaired spans (from `find_calls` over
    /// `trace.spans`) and every span's RED. A trace emitted again with late spans adds only
    /// what its new spans (`trace.spans[trace.already_emitted..]`) bring.
    pub fn observe(&mut self, trace: &Trace, calls: &[Call], unpaired: &[Unpaired]) {
        let spans = &trace.spans;
        let already_emitted = trace.already_emitted;
        // On a first emission every span is new: nothing can have been counted before.
        let late = already_emitted > 0;
        let is_new = |index: usize| index >= already_emitted;

        for call in calls {
            if late
                && (!call.spans.any(is_new)
                    || counted_as_virtual_before(call, spans, already_emitted))
            {
                continue;
            }
            let labels = [
                call.caller.as_str(),
                call.callee.as_str(),
                call.connection_type,
            ];
            let buckets = &self.request_buckets;
            let Some(row) = self
                .requests
                .row(labels, &mut self.warnings, || RequestRow {
                    total: 0,
                    failed: 0,
                    server_seconds: Histogram::new(buckets),
                    client_seconds: Histogram::new(buckets),
                })
            else {
                continue;
            };
            row.total += 1;
            if call.failed {
                row.failed += 1;
            }
            row.server_seconds.observe(buckets, call.server_seconds);
            row.client_seconds.observe(buckets, call.client_seconds);
        }

        for side in unpaired {
            if late && !is_new(side.span) {
                continue;
            }
            let labels = [
                side.client.as_str(),
                side.server.as_str(),
                side.connection_type,
            ];
            if let Some(count) = self.unpaired.row(labels, &mut self.warnings, || 0) {
                *count += 1;
            }
        }

        let buckets = &self.latency_buckets;
        for span in spans.get(already_emitted..).unwrap_or_default() {
            let labels = [
                span.service(),
                span.name.as_str(),
                kind_label(span.kind),
                status_label(span.status),
            ];
            let new_row = || RedRow {
                calls: 0,
                latency: Histogram::new(buckets),
            };
            let Some(row) = self.red.row(labels, &mut self.warnings, new_row) else {
                continue;
            };
            row.calls += 1;
            row.latency.observe(buckets, seconds(span));
        }
    }

    /// Every series, in the order first seen, and the overflow counts.
    pub fn snapshot(&self) -> GraphSnapshot {
        let requests = self.requests.in_order();
        let red = self.red.in_order();
        GraphSnapshot {
            requests: requests
                .iter()
                .map(|(labels, row)| ((*labels).clone(), row.total, row.failed))
                .collect(),
            server_seconds: histogram_snapshot(&self.request_buckets, &requests, |row| {
                &row.server_seconds
            }),
            client_seconds: histogram_snapshot(&self.request_buckets, &requests, |row| {
                &row.client_seconds
            }),
            unpaired: self
                .unpaired
                .in_order()
                .into_iter()
                .map(|(labels, &count)| (labels.clone(), count))
                .collect(),
            calls: red
                .iter()
                .map(|(labels, row)| ((*labels).clone(), row.calls))
                .collect(),
            latency: histogram_snapshot(&self.latency_buckets, &red, |row| &row.latency),
            // In the order graph.py's overflow dict has them.
            overflow: vec![
                (GRAPH_METRIC, self.requests.overflow),
                (RED_METRIC, self.red.overflow),
                (UNPAIRED_METRIC, self.unpaired.overflow),
            ],
        }
    }

    /// Metrics that reached max_series since the last call (the first overflow of each,
    /// in the order it happened), for the caller to log once.
    pub fn take_overflow_warnings(&mut self) -> Vec<&'static str> {
        std::mem::take(&mut self.warnings)
    }
}

/// The histogram each row of a table holds, as a snapshot.
fn histogram_snapshot<const N: usize, R>(
    bounds: &[f64],
    rows: &[(&[String; N], &R)],
    histogram: impl Fn(&R) -> &Histogram,
) -> HistogramSnapshot {
    let series = rows
        .iter()
        .map(|&(labels, row)| {
            let histogram = histogram(row);
            (labels.to_vec(), histogram.counts.to_vec(), histogram.sum)
        })
        .collect();
    HistogramSnapshot {
        bounds: bounds.to_vec(),
        series,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use super::*;
    use crate::model::{Attributes, Resource, SpanId, TraceId, Value};
    use crate::reconstruct::reconstruct;

    const SERVER: SpanKind = SpanKind::Server;
    const CLIENT: SpanKind = SpanKind::Client;
    const MS: i64 = 1_000_000;
    const T0: i64 = 1_700_000_000_000_000_000;
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const MAX_SKEW_NS: i64 = 60_000 * MS;

    fn trace_id(text: &str) -> TraceId {
        u128::from_str_radix(text, 16).unwrap().to_be_bytes()
    }

    /// A short hex id padded to 16 characters, as tests/unit/collector_spans.py pads it.
    fn sid(short: &str) -> SpanId {
        u64::from_str_radix(short, 16).unwrap().to_be_bytes()
    }

    /// A resource naming only its service, which is then also its clock (no host facts).
    fn resource(service: &str) -> Arc<Resource> {
        let mut attributes = Attributes::default();
        attributes.set("service.name", Value::Str(service.to_owned()));
        Arc::new(Resource {
            attributes,
            service: service.into(),
            clock: service.into(),
        })
    }

    /// The keyword arguments of collector_spans.span, with its defaults.
    struct S {
        service: &'static str,
        kind: SpanKind,
        start_ms: f64,
        end_ms: f64,
        trace_id: &'static str,
        name: &'static str,
        error: bool,
        attributes: Vec<(&'static str, Value)>,
    }

    impl Default for S {
        fn default() -> Self {
            S {
                service: "svc",
                kind: SpanKind::Internal,
                start_ms: 0.0,
                end_ms: 10.0,
                trace_id: TRACE,
                name: "op",
                error: false,
                attributes: Vec::new(),
            }
        }
    }

    /// collector_spans.span: a span with its own resource naming its service.
    fn span(id: &str, parent: &str, s: S) -> Span {
        let mut attributes = Attributes::default();
        for (key, value) in s.attributes {
            attributes.set(key, value);
        }
        Span {
            trace_id: trace_id(s.trace_id),
            span_id: sid(id),
            parent_span_id: (!parent.is_empty()).then(|| sid(parent)),
            name: s.name.to_owned(),
            kind: s.kind,
            start_ns: T0 + (s.start_ms * MS as f64) as i64,
            end_ns: T0 + (s.end_ms * MS as f64) as i64,
            status: if s.error {
                Status::Error
            } else {
                Status::Unset
            },
            status_message: String::new(),
            attributes,
            resource: resource(s.service),
            events: Vec::new(),
            links: Vec::new(),
            skew_adjustment_ns: 0,
        }
    }

    fn text(value: &str) -> Value {
        Value::Str(value.to_owned())
    }

    fn trace(id: &str, spans: Vec<Span>) -> Trace {
        Trace {
            trace_id: trace_id(id),
            spans,
            ..Trace::default()
        }
    }

    fn rebuilt(spans: Vec<Span>) -> (Trace, SpanTree) {
        let mut trace = trace(TRACE, spans);
        let tree = reconstruct(&mut trace, MAX_SKEW_NS);
        (trace, tree)
    }

    fn edges(spans: Vec<Span>) -> Vec<Edge> {
        let (trace, tree) = rebuilt(spans);
        let (calls, _) = find_calls(&tree, &trace.spans);
        edges_of(&calls)
    }

    fn edge(caller: &str, callee: &str, calls: u64, errors: u64, is_virtual: bool) -> Edge {
        Edge {
            caller: caller.into(),
            callee: callee.into(),
            calls,
            errors,
            is_virtual,
        }
    }

    // --- an Envoy mesh reporting Zipkin --------------------------------------------------

    const T0_US: i64 = 1_700_000_000_000_000;

    /// What the Zipkin conversion and intake make of one Zipkin span of the Envoy batch
    /// (observer/protocols/zipkin.py `_fill_span`): spans of one local service share a
    /// resource; remoteEndpoint becomes `peer.service` / `network.peer.address`.
    struct Zipkin {
        id: &'static str,
        parent: Option<&'static str>,
        service: &'static str,
        kind: SpanKind,
        start_us: i64,
        duration_us: i64,
        shared: bool,
        remote_service: Option<&'static str>,
        remote_ipv4: Option<&'static str>,
        error: bool,
    }

    fn zipkin_spans(batch: Vec<Zipkin>) -> Vec<Span> {
        let mut resources: HashMap<&str, Arc<Resource>> = HashMap::new();
        batch
            .into_iter()
            .map(|z| {
                let mut attributes = Attributes::default();
                attributes.set(
                    "network.local.address",
                    text(&format!("10.0.0.{}", z.service.len())),
                );
                if let Some(service) = z.remote_service {
                    attributes.set("peer.service", text(service));
                }
                if let Some(address) = z.remote_ipv4 {
                    attributes.set("network.peer.address", text(address));
                }
                attributes.set("observer.zipkin.trace_id_bits", Value::Int(64));
                if z.shared {
                    attributes.set("observer.zipkin.shared", Value::Bool(true));
                }
                let resource = resources
                    .entry(z.service)
                    .or_insert_with(|| resource(z.service))
                    .clone();
                Span {
                    trace_id: trace_id("5af7183fb1d4cf5f"),
                    span_id: sid(z.id),
                    parent_span_id: z.parent.map(sid),
                    name: format!("{} {}", z.service, z.kind.name()),
                    kind: z.kind,
                    start_ns: (T0_US + z.start_us) * 1000,
                    end_ns: (T0_US + z.start_us + z.duration_us) * 1000,
                    status: if z.error {
                        Status::Error
                    } else {
                        Status::Unset
                    },
                    status_message: String::new(),
                    attributes,
                    resource,
                    events: Vec::new(),
                    links: Vec::new(),
                    skew_adjustment_ns: 0,
                }
            })
            .collect()
    }

    /// An Envoy mesh reporting Zipkin with shared span contexts (Envoy's default), user →
    /// ingress gateway → webapp → backend, each app behind a sidecar and itself
    /// instrumented:
    ///
    /// ```text
    ///   ingress gateway SERVER a…1 (root)
    ///   webapp sidecar SERVER a…1 shared  ── joined the gateway's span: same id
    ///     webapp app   SERVER c…1, parent a…1
    ///       webapp app CLIENT d…1            ── the app's call, through its sidecar:
    ///         webapp sidecar CLIENT b…1      ── client → client, one service
    ///           backend sidecar SERVER b…1 shared
    ///             backend app SERVER e…1, parent b…1   ── server → server, one service
    /// ```
    fn envoy_trace() -> (Trace, SpanTree) {
        let z = |id, parent, service, kind, start_us, duration_us| Zipkin {
            id,
            parent,
            service,
            kind,
            start_us,
            duration_us,
            shared: false,
            remote_service: None,
            remote_ipv4: None,
            error: false,
        };
        let spans = zipkin_spans(vec![
            Zipkin {
                remote_ipv4: Some("203.0.113.7"),
                ..z("a000000000000001", None, "ingress", SERVER, 0, 1000)
            },
            Zipkin {
                shared: true,
                remote_ipv4: Some("10.0.0.7"),
                ..z("a000000000000001", None, "webapp", SERVER, 50, 900)
            },
            z(
                "c000000000000001",
                Some("a000000000000001"),
                "webapp",
                SERVER,
                100,
                800,
            ),
            Zipkin {
                remote_service: Some("backend"),
                ..z(
                    "d000000000000001",
                    Some("c000000000000001"),
                    "webapp",
                    CLIENT,
                    200,
                    600,
                )
            },
            z(
                "b000000000000001",
                Some("d000000000000001"),
                "webapp",
                CLIENT,
                210,
                580,
            ),
            Zipkin {
                shared: true,
                error: true,
                ..z(
                    "b000000000000001",
                    Some("d000000000000001"),
                    "backend",
                    SERVER,
                    250,
                    500,
                )
            },
            z(
                "e000000000000001",
                Some("b000000000000001"),
                "backend",
                SERVER,
                260,
                450,
            ),
        ]);
        let mut trace = Trace {
            trace_id: spans[0].trace_id,
            spans,
            ..Trace::default()
        };
        let tree = reconstruct(&mut trace, MAX_SKEW_NS);
        (trace, tree)
    }

    #[test]
    fn an_envoy_mesh_with_shared_ids_and_an_ingress_hop_gives_each_hop_once() {
        // The Envoy batch yields ingress → webapp and webapp → backend: no self-loop, no gap.
        let (trace, tree) = envoy_trace();
        let (calls, unpaired) = find_calls(&tree, &trace.spans);
        assert_eq!(
            edges_of(&calls),
            [
                edge("ingress", "webapp", 1, 0, false),
                edge("webapp", "backend", 1, 1, false)
            ]
        );
        assert_eq!(unpaired, []);
    }

    #[test]
    fn the_envoy_mesh_trace_is_one_complete_tree() {
        // After the split every span hangs from the gateway's root span.
        let (trace, tree) = envoy_trace();
        let roots: Vec<&str> = tree
            .roots
            .iter()
            .map(|&i| trace.spans[i].service())
            .collect();
        assert_eq!(roots, ["ingress"]);
        assert!(tree.orphans.is_empty());
        assert_eq!(trace.verdict.reasons, []);
    }

    // --- calls and edges -----------------------------------------------------------------

    #[test]
    fn zipkin_shared_client_and_server_halves_make_one_call() {
        // A client and the server that joined its span id are one call, failed if either failed.
        let found = edges(vec![
            span(
                "1",
                "",
                S {
                    service: "web",
                    kind: SERVER,
                    end_ms: 100.0,
                    ..S::default()
                },
            ),
            span(
                "2",
                "1",
                S {
                    service: "web",
                    kind: CLIENT,
                    start_ms: 10.0,
                    end_ms: 90.0,
                    error: true,
                    ..S::default()
                },
            ),
            span(
                "2",
                "1",
                S {
                    service: "app",
                    kind: SERVER,
                    start_ms: 20.0,
                    end_ms: 80.0,
                    attributes: vec![("observer.zipkin.shared", Value::Bool(true))],
                    ..S::default()
                },
            ),
        ]);
        assert_eq!(found, [edge("web", "app", 1, 1, false)]);
    }

    #[test]
    fn errors_count_on_the_edge_where_the_call_failed() {
        // A failed payment marks checkout → payments, not frontend → checkout that answered.
        let found = edges(vec![
            span(
                "1",
                "",
                S {
                    service: "frontend",
                    kind: CLIENT,
                    end_ms: 100.0,
                    ..S::default()
                },
            ),
            span(
                "2",
                "1",
                S {
                    service: "checkout",
                    kind: SERVER,
                    start_ms: 5.0,
                    end_ms: 95.0,
                    ..S::default()
                },
            ),
            span(
                "3",
                "2",
                S {
                    service: "checkout",
                    kind: CLIENT,
                    start_ms: 10.0,
                    end_ms: 90.0,
                    error: true,
                    ..S::default()
                },
            ),
            span(
                "4",
                "3",
                S {
                    service: "payments",
                    kind: SERVER,
                    start_ms: 20.0,
                    end_ms: 80.0,
                    error: true,
                    ..S::default()
                },
            ),
        ]);
        assert_eq!(
            found,
            [
                edge("frontend", "checkout", 1, 0, false),
                edge("checkout", "payments", 1, 1, false)
            ]
        );
    }

    #[test]
    fn a_call_to_its_own_service_is_not_an_edge() {
        // Client and server of one service (a hop inside it) make no self-loop.
        let found = edges(vec![
            span(
                "1",
                "",
                S {
                    service: "web",
                    kind: CLIENT,
                    end_ms: 100.0,
                    ..S::default()
                },
            ),
            span(
                "2",
                "1",
                S {
                    service: "web",
                    kind: SERVER,
                    start_ms: 10.0,
                    end_ms: 90.0,
                    ..S::default()
                },
            ),
        ]);
        assert_eq!(found, []);
    }

    #[test]
    fn a_client_of_a_peer_that_sends_no_spans_calls_a_virtual_node() {
        // The callee is named by peer.service, server.address or db.system, marked virtual.
        // kind, the span's attributes, the callee they name, the connection type
        type Case = (
            SpanKind,
            Vec<(&'static str, Value)>,
            &'static str,
            &'static str,
        );
        let cases: [Case; 5] = [
            (
                CLIENT,
                vec![
                    ("peer.service", text("stripe")),
                    ("server.address", text("api.stripe.test")),
                ],
                "stripe",
                "virtual_node",
            ),
            (
                CLIENT,
                vec![("server.address", text("api.stripe.test"))],
                "api.stripe.test",
                "virtual_node",
            ),
            (
                CLIENT,
                vec![("db.system", text("postgresql"))],
                "postgresql",
                "database",
            ),
            (
                CLIENT,
                vec![
                    ("db.system", text("postgresql")),
                    ("server.address", text("pg-main")),
                ],
                "pg-main",
                "database",
            ),
            (
                SpanKind::Producer,
                vec![("peer.service", text("kafka"))],
                "kafka",
                "messaging_system",
            ),
        ];
        for (kind, attributes, callee, connection_type) in cases {
            let (trace, tree) = rebuilt(vec![
                span(
                    "1",
                    "",
                    S {
                        service: "shop",
                        kind: SERVER,
                        end_ms: 100.0,
                        ..S::default()
                    },
                ),
                span(
                    "2",
                    "1",
                    S {
                        service: "shop",
                        kind,
                        start_ms: 10.0,
                        end_ms: 30.0,
                        attributes,
                        ..S::default()
                    },
                ),
            ]);
            let (calls, _) = find_calls(&tree, &trace.spans);
            let found: Vec<_> = calls
                .iter()
                .map(|c| {
                    (
                        c.caller.as_str(),
                        c.callee.as_str(),
                        c.connection_type,
                        c.is_virtual,
                    )
                })
                .collect();
            assert_eq!(found, [("shop", callee, connection_type, true)], "{callee}");
        }
    }

    #[test]
    fn a_root_server_span_naming_its_caller_gets_a_virtual_caller() {
        // A server span whose peer.service names an uninstrumented caller has an edge from it.
        let found = edges(vec![span(
            "1",
            "",
            S {
                service: "app",
                kind: SERVER,
                attributes: vec![("peer.service", text("cron"))],
                ..S::default()
            },
        )]);
        assert_eq!(found, [edge("cron", "app", 1, 0, true)]);
    }

    #[test]
    fn unpaired_client_and_server_sides_are_reported() {
        // A client with no server side, and a server whose caller never came, are unpaired.
        let (trace, tree) = rebuilt(vec![
            span(
                "1",
                "",
                S {
                    service: "web",
                    kind: CLIENT,
                    end_ms: 100.0,
                    ..S::default()
                },
            ),
            span(
                "3",
                "2",
                S {
                    service: "db-proxy",
                    kind: SERVER,
                    start_ms: 20.0,
                    end_ms: 80.0,
                    ..S::default()
                },
            ),
        ]);
        let (calls, unpaired) = find_calls(&tree, &trace.spans);
        assert_eq!(calls, []);
        let mut sides: Vec<_> = unpaired
            .iter()
            .map(|u| (u.client.as_str(), u.server.as_str()))
            .collect();
        sides.sort();
        assert_eq!(sides, [("", "db-proxy"), ("web", "")]);
    }

    // --- metrics -------------------------------------------------------------------------

    fn observed_with(traces: Vec<Trace>, max_series: usize) -> GraphMetrics {
        let mut metrics = GraphMetrics::new(
            default_request_buckets(),
            default_latency_buckets(),
            max_series,
        );
        for mut trace in traces {
            let tree = reconstruct(&mut trace, MAX_SKEW_NS);
            let (calls, unpaired) = find_calls(&tree, &trace.spans);
            metrics.observe(&trace, &calls, &unpaired);
        }
        metrics
    }

    fn observed(traces: Vec<Trace>) -> GraphSnapshot {
        observed_with(traces, 100).snapshot()
    }

    fn checkout_trace(id: &'static str, failed: bool) -> Trace {
        trace(
            id,
            vec![
                span(
                    "1",
                    "",
                    S {
                        service: "checkout",
                        kind: CLIENT,
                        end_ms: 300.0,
                        trace_id: id,
                        error: failed,
                        ..S::default()
                    },
                ),
                span(
                    "2",
                    "1",
                    S {
                        service: "payments",
                        kind: SERVER,
                        start_ms: 10.0,
                        end_ms: 260.0,
                        trace_id: id,
                        error: failed,
                        name: "POST /pay",
                        ..S::default()
                    },
                ),
            ],
        )
    }

    /// `traces_service_graph_request_total` and `..._failed_total` of one label set.
    fn requests(snapshot: &GraphSnapshot, labels: [&str; 3]) -> Option<(u64, u64)> {
        snapshot
            .requests
            .iter()
            .find(|(l, ..)| l == &labels)
            .map(|&(_, total, failed)| (total, failed))
    }

    fn unpaired_count(snapshot: &GraphSnapshot, labels: [&str; 3]) -> Option<u64> {
        snapshot
            .unpaired
            .iter()
            .find(|(l, _)| l == &labels)
            .map(|&(_, count)| count)
    }

    fn calls_count(snapshot: &GraphSnapshot, labels: [&str; 4]) -> Option<u64> {
        snapshot
            .calls
            .iter()
            .find(|(l, _)| l == &labels)
            .map(|&(_, count)| count)
    }

    fn series<'a>(histogram: &'a HistogramSnapshot, labels: &[&str]) -> Option<(&'a [u64], f64)> {
        histogram
            .series
            .iter()
            .find(|(l, ..)| l.iter().map(String::as_str).eq(labels.iter().copied()))
            .map(|(_, counts, sum)| (counts.as_slice(), *sum))
    }

    /// A Prometheus `_bucket` sample: values at most `le`, cumulative.
    fn bucket(histogram: &HistogramSnapshot, labels: &[&str], le: f64) -> Option<u64> {
        let (counts, _) = series(histogram, labels)?;
        let last = histogram
            .bounds
            .iter()
            .position(|&b| (b - le).abs() < 1e-12)?;
        Some(counts[..=last].iter().sum())
    }

    fn count(histogram: &HistogramSnapshot, labels: &[&str]) -> Option<u64> {
        series(histogram, labels).map(|(counts, _)| counts.iter().sum())
    }

    fn sum(histogram: &HistogramSnapshot, labels: &[&str]) -> Option<f64> {
        series(histogram, labels).map(|(_, sum)| sum)
    }

    fn approx(value: Option<f64>, expected: f64) -> bool {
        value.is_some_and(|v| (v - expected).abs() <= expected * 1e-6)
    }

    #[test]
    fn calls_are_exported_under_tempo_service_graph_names_and_labels() {
        // Request, failure and both latency histograms carry client, server and connection_type.
        let snapshot = observed(vec![checkout_trace(TRACE, true)]);
        let labels = ["checkout", "payments", ""];
        assert_eq!(requests(&snapshot, labels), Some((1, 1)));
        assert_eq!(bucket(&snapshot.server_seconds, &labels, 0.4), Some(1));
        assert_eq!(bucket(&snapshot.server_seconds, &labels, 0.2), Some(0));
        assert!(approx(sum(&snapshot.client_seconds, &labels), 0.3));
    }

    #[test]
    fn span_red_figures_are_exported_under_tempo_span_metric_names_and_values() {
        // Every span counts in traces_spanmetrics_* with Tempo's kind and status values.
        let snapshot = observed(vec![checkout_trace(TRACE, true)]);
        let labels = [
            "payments",
            "POST /pay",
            "SPAN_KIND_SERVER",
            "STATUS_CODE_ERROR",
        ];
        assert_eq!(calls_count(&snapshot, labels), Some(1));
        assert_eq!(count(&snapshot.latency, &labels), Some(1));
        assert!(approx(sum(&snapshot.latency, &labels), 0.25));
    }

    #[test]
    fn unpaired_spans_are_counted_under_tempo_name() {
        // A client span without a server side counts in traces_service_graph_unpaired_spans_total.
        let snapshot = observed(vec![trace(
            TRACE,
            vec![span(
                "1",
                "",
                S {
                    service: "web",
                    kind: CLIENT,
                    ..S::default()
                },
            )],
        )]);
        assert_eq!(unpaired_count(&snapshot, ["web", "", ""]), Some(1));
    }

    #[test]
    fn a_late_re_emission_counts_only_what_its_new_spans_bring() {
        // A trace emitted again with a new call adds that call and its spans, nothing twice.
        let first = checkout_trace(TRACE, false);
        let mut spans = first.spans.clone();
        spans.push(span(
            "3",
            "2",
            S {
                service: "payments",
                kind: CLIENT,
                start_ms: 20.0,
                end_ms: 30.0,
                attributes: vec![("db.system", text("redis"))],
                ..S::default()
            },
        ));
        let again = Trace {
            late: true,
            already_emitted: 2,
            ..trace(TRACE, spans)
        };
        let snapshot = observed(vec![first, again]);
        assert_eq!(
            requests(&snapshot, ["checkout", "payments", ""]).map(|r| r.0),
            Some(1)
        );
        assert_eq!(
            requests(&snapshot, ["payments", "redis", "database"]).map(|r| r.0),
            Some(1)
        );
        assert_eq!(
            calls_count(
                &snapshot,
                [
                    "payments",
                    "POST /pay",
                    "SPAN_KIND_SERVER",
                    "STATUS_CODE_UNSET"
                ]
            ),
            Some(1)
        );
    }

    #[test]
    fn a_late_server_span_for_a_client_that_named_its_peer_counts_the_request_once() {
        // The client span named its peer (peer.service) and was emitted alone, counted as a
        // call to that virtual node; the server span that comes late completes the same
        // request, which must not be counted a second time.
        let client = span(
            "1",
            "",
            S {
                service: "checkout",
                kind: CLIENT,
                end_ms: 300.0,
                attributes: vec![("peer.service", text("payments"))],
                ..S::default()
            },
        );
        let server = span(
            "2",
            "1",
            S {
                service: "payments",
                kind: SERVER,
                start_ms: 10.0,
                end_ms: 260.0,
                ..S::default()
            },
        );
        let first = trace(TRACE, vec![client.clone()]);
        let again = Trace {
            late: true,
            already_emitted: 1,
            ..trace(TRACE, vec![client, server])
        };
        let snapshot = observed(vec![first, again]);

        let virtual_requests =
            requests(&snapshot, ["checkout", "payments", "virtual_node"]).map(|r| r.0);
        let paired = requests(&snapshot, ["checkout", "payments", ""]).map(|r| r.0);
        assert_eq!((virtual_requests, paired), (Some(1), None));
    }

    #[test]
    fn a_late_client_span_for_a_server_that_named_its_caller_counts_the_request_once() {
        // The mirror case: a server span naming its caller (Zipkin's remoteEndpoint) was
        // counted as a call from a virtual node; its client span arrives late.
        let client = span(
            "1",
            "",
            S {
                service: "web",
                kind: CLIENT,
                end_ms: 300.0,
                ..S::default()
            },
        );
        let server = span(
            "2",
            "1",
            S {
                service: "api",
                kind: SERVER,
                start_ms: 10.0,
                end_ms: 260.0,
                attributes: vec![("peer.service", text("web"))],
                ..S::default()
            },
        );
        let first = trace(TRACE, vec![server.clone()]);
        let again = Trace {
            late: true,
            already_emitted: 1,
            ..trace(TRACE, vec![server, client])
        };
        let snapshot = observed(vec![first, again]);

        let total: u64 = ["", "virtual_node"]
            .into_iter()
            .map(|connection_type| {
                requests(&snapshot, ["web", "api", connection_type]).map_or(0, |r| r.0)
            })
            .sum();
        assert_eq!(total, 1);
    }

    #[test]
    fn a_late_server_span_for_an_unpaired_client_counts_the_request_then() {
        // A client span that named no peer was counted unpaired, not as a request: when its
        // server side comes late, the request is counted, once.
        let client = span(
            "1",
            "",
            S {
                service: "checkout",
                kind: CLIENT,
                end_ms: 300.0,
                ..S::default()
            },
        );
        let server = span(
            "2",
            "1",
            S {
                service: "payments",
                kind: SERVER,
                start_ms: 10.0,
                end_ms: 260.0,
                ..S::default()
            },
        );
        let first = trace(TRACE, vec![client.clone()]);
        let again = Trace {
            late: true,
            already_emitted: 1,
            ..trace(TRACE, vec![client, server])
        };
        let snapshot = observed(vec![first, again]);

        assert_eq!(
            requests(&snapshot, ["checkout", "payments", ""]).map(|r| r.0),
            Some(1)
        );
        assert_eq!(unpaired_count(&snapshot, ["checkout", "", ""]), Some(1));
    }

    #[test]
    fn label_sets_beyond_max_series_are_counted_as_overflow() {
        // At the series bound a new edge is not exported but counted.
        const OTHER: &str = "ffffffffffffffffffffffffffffffff";
        let other = trace(
            OTHER,
            vec![
                span(
                    "1",
                    "",
                    S {
                        service: "web",
                        kind: CLIENT,
                        trace_id: OTHER,
                        end_ms: 100.0,
                        ..S::default()
                    },
                ),
                span(
                    "2",
                    "1",
                    S {
                        service: "app",
                        kind: SERVER,
                        trace_id: OTHER,
                        start_ms: 1.0,
                        end_ms: 99.0,
                        ..S::default()
                    },
                ),
            ],
        );
        let mut metrics = observed_with(vec![checkout_trace(TRACE, true), other], 1);
        let snapshot = metrics.snapshot();
        assert_eq!(requests(&snapshot, ["web", "app", ""]), None);
        assert_eq!(snapshot.overflow[0], (GRAPH_METRIC, 1));
        // Beyond graph.py's test: the histograms follow the counter's bound, each metric's
        // first overflow is reported once, in the order it happened.
        assert_eq!(snapshot.server_seconds.series.len(), 1);
        assert_eq!(
            snapshot.overflow,
            [(GRAPH_METRIC, 1), (RED_METRIC, 3), (UNPAIRED_METRIC, 0)]
        );
        assert_eq!(metrics.take_overflow_warnings(), [RED_METRIC, GRAPH_METRIC]);
        assert_eq!(metrics.take_overflow_warnings(), Vec::<&str>::new());
    }

    // --- beyond graph.py's tests: details the exporter relies on -------------------------

    #[test]
    fn a_value_equal_to_a_bound_falls_in_that_bounds_bucket() {
        // bisect_left: `le` is inclusive; above the last bound is the last slot.
        let bounds = [0.1, 0.2, 0.4];
        assert_eq!(bisect_left(&bounds, 0.0), 0);
        assert_eq!(bisect_left(&bounds, 0.1), 0);
        assert_eq!(bisect_left(&bounds, 0.15), 1);
        assert_eq!(bisect_left(&bounds, 0.4), 2);
        assert_eq!(bisect_left(&bounds, 0.5), 3);
        assert_eq!(bisect_left(&[], 1.0), 0);
    }

    #[test]
    fn default_buckets_are_tempos() {
        let request = default_request_buckets();
        assert_eq!(request.len(), 8);
        assert_eq!((request[0], request[2], request[7]), (0.1, 0.4, 12.8));
        let latency = default_latency_buckets();
        assert_eq!(latency.len(), 14);
        assert_eq!((latency[0], latency[13]), (0.002, 16.384));
    }

    #[test]
    fn series_keep_the_order_first_seen_and_a_negative_duration_counts_as_zero() {
        let spans = vec![
            span(
                "1",
                "",
                S {
                    service: "b",
                    name: "later",
                    end_ms: 5.0,
                    ..S::default()
                },
            ),
            span(
                "2",
                "",
                S {
                    service: "a",
                    start_ms: 10.0,
                    end_ms: 5.0,
                    ..S::default()
                },
            ),
            span(
                "3",
                "",
                S {
                    service: "b",
                    name: "later",
                    end_ms: 5.0,
                    ..S::default()
                },
            ),
        ];
        let snapshot = observed(vec![trace(TRACE, spans)]);
        let services: Vec<(&str, u64)> = snapshot
            .calls
            .iter()
            .map(|(labels, count)| (labels[0].as_str(), *count))
            .collect();
        assert_eq!(services, [("b", 2), ("a", 1)]);
        let (counts, sum) = series(
            &snapshot.latency,
            &["a", "op", "SPAN_KIND_INTERNAL", "STATUS_CODE_UNSET"],
        )
        .unwrap();
        assert_eq!((counts[0], sum), (1, 0.0));
        assert_eq!(counts.len(), default_latency_buckets().len() + 1);
    }
}
