//! Assembly by trace id (port of observer/collector/assemble.py): spans held per trace id
//! until the trace is whole enough to judge.
//!
//! A trace is emitted when it has been quiet for `idle_timeout` (no new span), or when it
//! has been live for `max_age` however busy it is. Senders deliver at least once, so a span
//! seen before (same span id, kind and service) is dropped and counted. After emission a
//! trace is *retained* for `late_window`: a span that arrives for it then is merged into it,
//! and the whole trace is emitted again marked `late` once it is quiet again, with
//! `already_emitted` telling which spans are new. Later than that, a span starts a new trace.
//!
//! Memory is bounded by the number of live traces and by the spans held (live and
//! retained). At the trace bound the oldest live trace is emitted early; at the span bound
//! retained traces are forgotten first, oldest first, then the oldest live traces are
//! emitted early without being retained. Each is counted by reason, and each batch that
//! caused one leaves a [`BoundsReport`] for the caller to log.
//!
//! Unlike Python, an emitted [`Trace`] owns its spans: they are moved out of the held
//! entry, not copied, and the caller hands the trace back with [`Assembler::give_back`]
//! once later stages are done with it, so that a retained trace keeps what those stages
//! changed in its spans (split ids, shifted times), as Python's shared span objects do.
//!
//! The clock is the caller's (seconds, monotonic), so tests drive time. One owner at a time.

use std::collections::hash_map::Entry;
use std::collections::VecDeque;
use std::sync::Arc;

// Keys are ids senders choose: foldhash is fast on 8- and 16-byte keys (SipHash was a
// large share of assembly) and seeded at random, so ids cannot be picked to collide.
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use crate::model::{Span, SpanId, SpanKind, Trace, TraceId};

// Why a trace was emitted; the values are metric labels.
pub const IDLE_TIMEOUT: &str = "idle_timeout";
pub const MAX_AGE: &str = "max_age";
pub const MAX_LIVE_TRACES: &str = "max_live_traces";
pub const MAX_LIVE_SPANS: &str = "max_live_spans";
pub const SHUTDOWN: &str = "shutdown";

/// What the assembler has done since it started; read by the metrics at scrape time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AssemblyCounts {
    pub spans_in: u64,
    pub duplicate_spans: u64,
    /// Spans merged into a trace that had already been emitted.
    pub late_spans: u64,
    /// Emissions by reason, in the order each reason was first used.
    pub emitted: Vec<(&'static str, u64)>,
    /// Emissions of traces that had been emitted before (late spans merged).
    pub reemitted: u64,
    /// Retained traces dropped before their late window ended, to respect max_live_spans.
    pub forgotten_early: u64,
}

impl AssemblyCounts {
    fn count_emitted(&mut self, reason: &'static str) {
        match self.emitted.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, count)) => *count += 1,
            None => self.emitted.push((reason, 1)),
        }
    }
}

/// What the bounds forced, for the caller's warning (Python logs it once per batch). When
/// several batches forced something before the caller took the report, the numbers of
/// traces add up and the sizes are the latest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BoundsReport {
    pub emitted_early_for_traces: usize,
    pub emitted_early_for_spans: usize,
    pub retained_forgotten: usize,
    pub live_traces: usize,
    pub held_spans: usize,
}

/// A queue is swept of its stale entries once it holds more than twice its current ones
/// plus this; small in tests so that sweeps are exercised.
#[cfg(not(test))]
const STALE_SLACK: usize = 1024;
#[cfg(test)]
const STALE_SLACK: usize = 2;

pub struct Assembler {
    idle_timeout: f64,
    max_age: f64,
    late_window: f64,
    max_live_traces: usize,
    max_live_spans: usize,
    /// Live and retained traces in one map, so a span costs one lookup of its trace.
    traces: HashMap<TraceId, Held>,
    /// Live traces by their last batch, least recently added to first (idle expiry reads
    /// from the front). A trace gets an entry per batch that adds to it rather than being
    /// moved to the end; older entries are stale and skipped.
    by_touch: VecDeque<Due>,
    /// Live traces in the order they were opened (max_age and early emission read from the
    /// front); entries of traces since emitted or reopened are stale and skipped.
    by_age: VecDeque<Due>,
    /// Retained traces, oldest emission first; entries of traces since reopened or
    /// forgotten are stale and skipped.
    by_emission: VecDeque<Due>,
    live_traces: usize,
    retained_traces: usize,
    live_spans: usize,
    retained_spans: usize,
    /// The last stamp handed out. Stamps are unique for the assembler's life, so a queue
    /// entry is current only if its trace still carries its stamp, even across a trace
    /// forgotten and started again under the same id (Python compares objects for that).
    stamp: u64,
    /// Emitted traces not yet given back.
    lent: usize,
    counts: AssemblyCounts,
    bounds_report: Option<BoundsReport>,
}

/// One trace's spans while live, and after emission while retained.
struct Held {
    phase: Phase,
    /// Empty while the trace is lent out (`lent`); its count is then `already_emitted`.
    spans: Vec<Span>,
    /// Original span id → kind and service of the first span with that id. Kept as values,
    /// not references to spans, so they hold while the spans are lent out and after later
    /// stages changed their ids.
    seen: HashMap<SpanId, (SpanKind, Arc<str>)>,
    /// Further spans with an id already seen but another kind or service (the halves of a
    /// Zipkin shared client/server span). Rare, so made only when needed.
    shared: Option<HashSet<SharedKey>>,
    /// The stamp of the last batch that added a span, for `by_touch`.
    touched: u64,
    already_emitted: usize,
    /// Set when reopened and never cleared, as in Python: every span it takes from then on
    /// counts as late, and every emission as a re-emission.
    late: bool,
    /// The spans are out in an emitted trace, to come back with `give_back`.
    lent: bool,
}

/// The dedup key of a span whose id an earlier span of the trace has.
type SharedKey = (SpanId, SpanKind, Arc<str>);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Stamped when opened or reopened, for `by_age`.
    Live { opened: u64 },
    /// Stamped when emitted, for `by_emission`.
    Retained { emitted: u64 },
}

/// Which queue an entry is in, to tell whether it is still current.
#[derive(Clone, Copy)]
enum Order {
    Touch,
    Age,
    Emission,
}

/// A queue entry: the trace, when it was touched, opened or emitted, and the stamp it had.
#[derive(Clone, Copy, Debug)]
struct Due {
    at: f64,
    stamp: u64,
    trace_id: TraceId,
}

impl Held {
    fn new(opened: u64) -> Held {
        Held {
            phase: Phase::Live { opened },
            spans: Vec::new(),
            seen: HashMap::new(),
            shared: None,
            touched: 0,
            already_emitted: 0,
            late: false,
            lent: false,
        }
    }

    fn is_current(&self, order: Order, stamp: u64) -> bool {
        match (order, self.phase) {
            (Order::Touch, Phase::Live { .. }) => self.touched == stamp,
            (Order::Age, Phase::Live { opened }) => opened == stamp,
            (Order::Emission, Phase::Retained { emitted }) => emitted == stamp,
            _ => false,
        }
    }

    /// Remembers the span for deduplication; false when it was seen before (same id, kind
    /// and service), as `_is_duplicate` then `_remember` in Python.
    fn remember(&mut self, span: &Span) -> bool {
        let service = &span.resource.service;
        match self.seen.entry(span.span_id) {
            Entry::Vacant(entry) => {
                entry.insert((span.kind, Arc::clone(service)));
                true
            }
            Entry::Occupied(entry) => {
                let (kind, first_service) = entry.get();
                if *kind == span.kind && first_service == service {
                    return false;
                }
                self.shared.get_or_insert_with(HashSet::new).insert((
                    span.span_id,
                    span.kind,
                    Arc::clone(service),
                ))
            }
        }
    }
}

impl Assembler {
    pub fn new(
        idle_timeout: f64,
        max_age: f64,
        late_window: f64,
        max_live_traces: usize,
        max_live_spans: usize,
    ) -> Assembler {
        Assembler {
            idle_timeout,
            max_age,
            late_window,
            max_live_traces,
            max_live_spans,
            traces: HashMap::new(),
            by_touch: VecDeque::new(),
            by_age: VecDeque::new(),
            by_emission: VecDeque::new(),
            live_traces: 0,
            retained_traces: 0,
            live_spans: 0,
            retained_spans: 0,
            stamp: 0,
            lent: 0,
            counts: AssemblyCounts::default(),
            bounds_report: None,
        }
    }

    pub fn live_traces(&self) -> usize {
        self.live_traces
    }

    pub fn live_spans(&self) -> usize {
        self.live_spans
    }

    pub fn retained_traces(&self) -> usize {
        self.retained_traces
    }

    pub fn retained_spans(&self) -> usize {
        self.retained_spans
    }

    /// Live and retained spans: what `max_live_spans` bounds.
    pub fn held_spans(&self) -> usize {
        self.live_spans + self.retained_spans
    }

    pub fn counts(&self) -> &AssemblyCounts {
        &self.counts
    }

    /// What the bounds forced since the report was last taken, if anything.
    pub fn take_bounds_report(&mut self) -> Option<BoundsReport> {
        self.bounds_report.take()
    }

    /// Hold a batch; returns the traces the bounds forced out early.
    pub fn add(&mut self, spans: Vec<Span>, now: f64) -> Vec<Trace> {
        self.debug_assert_all_given_back();
        self.counts.spans_in += spans.len() as u64;
        self.stamp += 1;
        let batch = self.stamp;
        for span in spans {
            let trace_id = span.trace_id;
            // Fields are borrowed one by one here: `held` borrows `traces` for the rest of
            // the iteration.
            let held = match self.traces.entry(trace_id) {
                Entry::Occupied(entry) => entry.into_mut(),
                Entry::Vacant(entry) => {
                    self.stamp += 1;
                    self.by_age.push_back(Due {
                        at: now,
                        stamp: self.stamp,
                        trace_id,
                    });
                    self.live_traces += 1;
                    entry.insert(Held::new(self.stamp))
                }
            };
            // A duplicate of a retained trace's span leaves it retained: it is not new.
            if !held.remember(&span) {
                self.counts.duplicate_spans += 1;
                continue;
            }
            if let Phase::Retained { .. } = held.phase {
                // Reopened: live again, and to be emitted late.
                debug_assert!(!held.lent, "a retained trace was reopened while lent out");
                self.stamp += 1;
                held.phase = Phase::Live { opened: self.stamp };
                held.late = true;
                self.by_age.push_back(Due {
                    at: now,
                    stamp: self.stamp,
                    trace_id,
                });
                self.retained_traces -= 1;
                self.live_traces += 1;
                self.retained_spans -= held.already_emitted;
                self.live_spans += held.already_emitted;
            }
            if held.touched != batch {
                held.touched = batch;
                self.by_touch.push_back(Due {
                    at: now,
                    stamp: batch,
                    trace_id,
                });
            }
            held.spans.push(span);
            self.live_spans += 1;
            if held.late {
                self.counts.late_spans += 1;
            }
        }
        let emitted =
            if self.live_traces > self.max_live_traces || self.held_spans() > self.max_live_spans {
                self.enforce_bounds(now)
            } else {
                Vec::new()
            };
        self.sweep_stale();
        emitted
    }

    /// The traces due now (quiet for idle_timeout, or live for max_age), at most `limit` of
    /// them (more stay due for the next call); also forgets retained traces whose late
    /// window has passed.
    pub fn expire(&mut self, now: f64, limit: usize) -> Vec<Trace> {
        self.debug_assert_all_given_back();
        let mut emitted = Vec::new();
        while emitted.len() < limit {
            let Some(due) = current_front(&mut self.by_touch, &self.traces, Order::Touch) else {
                break;
            };
            if due.at + self.idle_timeout > now {
                break;
            }
            self.by_touch.pop_front();
            emitted.push(self.emit(due.trace_id, IDLE_TIMEOUT, now, true));
        }
        while emitted.len() < limit {
            let Some(due) = current_front(&mut self.by_age, &self.traces, Order::Age) else {
                break;
            };
            if due.at + self.max_age > now {
                break;
            }
            self.by_age.pop_front();
            emitted.push(self.emit(due.trace_id, MAX_AGE, now, true));
        }
        while let Some(due) = current_front(&mut self.by_emission, &self.traces, Order::Emission) {
            if due.at + self.late_window > now {
                break;
            }
            self.by_emission.pop_front();
            self.forget(due.trace_id);
        }
        self.sweep_stale();
        emitted
    }

    /// Every live trace (at shutdown), least recently added to first; none is retained.
    pub fn drain(&mut self, now: f64) -> Vec<Trace> {
        self.debug_assert_all_given_back();
        let mut emitted = Vec::with_capacity(self.live_traces);
        // Each live trace has exactly one current entry here, so this visits each once.
        for due in std::mem::take(&mut self.by_touch) {
            if self
                .traces
                .get(&due.trace_id)
                .is_some_and(|held| held.is_current(Order::Touch, due.stamp))
            {
                emitted.push(self.emit(due.trace_id, SHUTDOWN, now, false));
            }
        }
        // No live trace is left, so every entry of the age queue is stale.
        self.by_age.clear();
        emitted
    }

    /// Take back an emitted trace once later stages are done with it: a retained trace
    /// keeps its spans as they now are, for a late emission; others are dropped. Every
    /// emitted trace must come back before the next `add`, `expire` or `drain`.
    pub fn give_back(&mut self, trace: Trace) {
        debug_assert!(
            self.lent > 0,
            "a trace was given back that was not lent out"
        );
        self.lent = self.lent.saturating_sub(1);
        if let Some(held) = self.traces.get_mut(&trace.trace_id) {
            if held.lent {
                debug_assert_eq!(
                    trace.spans.len(),
                    held.already_emitted,
                    "a retained trace came back with another number of spans"
                );
                held.spans = trace.spans;
                held.lent = false;
            }
        }
    }

    fn debug_assert_all_given_back(&self) {
        debug_assert_eq!(
            self.lent, 0,
            "every emitted trace must be given back before the next add, expire or drain"
        );
    }

    /// Emit a live trace; retained for late spans if asked and the late window is open.
    fn emit(&mut self, trace_id: TraceId, reason: &'static str, now: f64, retain: bool) -> Trace {
        let Entry::Occupied(mut entry) = self.traces.entry(trace_id) else {
            unreachable!("only held traces are emitted");
        };
        let held = entry.get_mut();
        debug_assert!(
            matches!(held.phase, Phase::Live { .. }),
            "only live traces are emitted"
        );
        let count = held.spans.len();
        self.live_traces -= 1;
        self.live_spans -= count;
        self.counts.count_emitted(reason);
        let late = held.late;
        if late {
            self.counts.reemitted += 1;
        }
        let already_emitted = std::mem::replace(&mut held.already_emitted, count);
        let spans = if retain && self.late_window > 0.0 {
            self.stamp += 1;
            held.phase = Phase::Retained {
                emitted: self.stamp,
            };
            held.lent = true;
            self.by_emission.push_back(Due {
                at: now,
                stamp: self.stamp,
                trace_id,
            });
            self.retained_traces += 1;
            self.retained_spans += count;
            std::mem::take(&mut held.spans)
        } else {
            entry.remove().spans
        };
        self.lent += 1;
        Trace {
            trace_id,
            spans,
            late,
            already_emitted,
            ..Trace::default()
        }
    }

    fn forget(&mut self, trace_id: TraceId) {
        if let Some(held) = self.traces.remove(&trace_id) {
            debug_assert!(matches!(held.phase, Phase::Retained { .. }));
            self.retained_traces -= 1;
            // While retained (even lent out) a trace holds exactly what it last emitted.
            self.retained_spans -= held.already_emitted;
        }
    }

    /// The live trace opened first, its age entry taken off the queue.
    fn pop_oldest_live(&mut self) -> TraceId {
        let due = current_front(&mut self.by_age, &self.traces, Order::Age)
            .expect("every live trace has a current entry in the age queue");
        self.by_age.pop_front();
        due.trace_id
    }

    fn enforce_bounds(&mut self, now: f64) -> Vec<Trace> {
        let mut emitted = Vec::new();
        while self.live_traces > self.max_live_traces {
            let trace_id = self.pop_oldest_live();
            emitted.push(self.emit(trace_id, MAX_LIVE_TRACES, now, true));
        }
        let for_traces = emitted.len();
        let mut forgotten = 0;
        while self.held_spans() > self.max_live_spans {
            let Some(due) = current_front(&mut self.by_emission, &self.traces, Order::Emission)
            else {
                break;
            };
            self.by_emission.pop_front();
            self.forget(due.trace_id);
            forgotten += 1;
        }
        self.counts.forgotten_early += forgotten as u64;
        while self.held_spans() > self.max_live_spans && self.live_traces > 0 {
            let trace_id = self.pop_oldest_live();
            emitted.push(self.emit(trace_id, MAX_LIVE_SPANS, now, false));
        }
        if !emitted.is_empty() || forgotten > 0 {
            let held_spans = self.held_spans();
            let report = self.bounds_report.get_or_insert_with(BoundsReport::default);
            report.emitted_early_for_traces += for_traces;
            report.emitted_early_for_spans += emitted.len() - for_traces;
            report.retained_forgotten += forgotten;
            report.live_traces = self.live_traces;
            report.held_spans = held_spans;
        }
        emitted
    }

    /// Stale entries leave a queue only when they reach its front, which a long-lived
    /// trace can hold back for up to max_age; so once a queue is mostly stale it is swept,
    /// which costs O(1) per entry pushed over time.
    fn sweep_stale(&mut self) {
        let traces = &self.traces;
        for (queue, order, current) in [
            (&mut self.by_touch, Order::Touch, self.live_traces),
            (&mut self.by_age, Order::Age, self.live_traces),
            (&mut self.by_emission, Order::Emission, self.retained_traces),
        ] {
            if queue.len() > 2 * current + STALE_SLACK {
                queue.retain(|due| {
                    traces
                        .get(&due.trace_id)
                        .is_some_and(|held| held.is_current(order, due.stamp))
                });
            }
        }
    }
}

/// The queue's first current entry, stale entries before it dropped.
fn current_front(
    queue: &mut VecDeque<Due>,
    traces: &HashMap<TraceId, Held>,
    order: Order,
) -> Option<Due> {
    while let Some(&due) = queue.front() {
        if traces
            .get(&due.trace_id)
            .is_some_and(|held| held.is_current(order, due.stamp))
        {
            return Some(due);
        }
        queue.pop_front();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Attributes, Resource, Status};

    const A: TraceId = [0xaa; 16];
    const B: TraceId = [0xbb; 16];
    const C: TraceId = [0xcc; 16];
    const T0: f64 = 1000.0;
    const ALL: usize = usize::MAX;

    /// A span id from a small number, as `sid("1")` pads "1" to 16 hex digits in Python.
    fn sid(number: u8) -> SpanId {
        [0, 0, 0, 0, 0, 0, 0, number]
    }

    /// A span of `service` with its own resource (so services compare by content).
    fn span_of(trace_id: TraceId, id: u8, parent: u8, service: &str, kind: SpanKind) -> Span {
        let service: Arc<str> = Arc::from(service);
        Span {
            trace_id,
            span_id: sid(id),
            parent_span_id: (parent != 0).then(|| sid(parent)),
            name: "op".to_owned(),
            kind,
            start_ns: 0,
            end_ns: 10_000_000,
            status: Status::Unset,
            status_message: String::new(),
            attributes: Attributes::default(),
            resource: Arc::new(Resource {
                attributes: Attributes::default(),
                service: Arc::clone(&service),
                clock: service,
            }),
            events: Vec::new(),
            links: Vec::new(),
            skew_adjustment_ns: 0,
        }
    }

    fn span(trace_id: TraceId, id: u8, parent: u8) -> Span {
        span_of(trace_id, id, parent, "svc", SpanKind::Internal)
    }

    fn assembler() -> Assembler {
        Assembler::new(5.0, 60.0, 30.0, 100, 1000)
    }

    /// An emitted trace as the test saw it, the trace itself given back.
    #[derive(Debug)]
    struct Seen {
        trace_id: TraceId,
        spans: Vec<Span>,
        late: bool,
        already_emitted: usize,
    }

    impl Seen {
        fn ids(&self) -> Vec<SpanId> {
            self.spans.iter().map(|s| s.span_id).collect()
        }
    }

    fn settle(assembly: &mut Assembler, traces: Vec<Trace>) -> Vec<Seen> {
        traces
            .into_iter()
            .map(|trace| {
                let seen = Seen {
                    trace_id: trace.trace_id,
                    spans: trace.spans.clone(),
                    late: trace.late,
                    already_emitted: trace.already_emitted,
                };
                assembly.give_back(trace);
                seen
            })
            .collect()
    }

    fn add(assembly: &mut Assembler, spans: Vec<Span>, now: f64) -> Vec<Seen> {
        let traces = assembly.add(spans, now);
        settle(assembly, traces)
    }

    fn expire(assembly: &mut Assembler, now: f64) -> Vec<Seen> {
        let traces = assembly.expire(now, ALL);
        settle(assembly, traces)
    }

    fn drain(assembly: &mut Assembler, now: f64) -> Vec<Seen> {
        let traces = assembly.drain(now);
        settle(assembly, traces)
    }

    fn one(mut seen: Vec<Seen>) -> Seen {
        assert_eq!(seen.len(), 1, "{seen:?}");
        seen.pop().unwrap()
    }

    #[test]
    fn a_trace_is_held_until_it_has_been_quiet_for_the_idle_timeout() {
        let mut assembly = assembler();
        let mut now = T0;
        add(&mut assembly, vec![span(A, 1, 0)], now);
        now += 4.0;
        add(&mut assembly, vec![span(A, 2, 1)], now);
        now += 4.0;
        assert!(expire(&mut assembly, now).is_empty());
        now += 1.0;
        let trace = one(expire(&mut assembly, now));
        assert_eq!(trace.ids(), [sid(1), sid(2)]);
        assert_eq!(assembly.counts().emitted, [(IDLE_TIMEOUT, 1)]);
        assert_eq!(assembly.live_traces(), 0);
    }

    #[test]
    fn a_busy_trace_is_emitted_at_its_max_age() {
        let mut assembly = Assembler::new(5.0, 14.0, 30.0, 100, 1000);
        let mut now = T0;
        for number in 1..5 {
            add(&mut assembly, vec![span(A, number, 0)], now);
            assert!(expire(&mut assembly, now).is_empty());
            now += 4.0;
        }
        let trace = one(expire(&mut assembly, now));
        assert_eq!(trace.spans.len(), 4);
        assert_eq!(assembly.counts().emitted, [(MAX_AGE, 1)]);
    }

    #[test]
    fn a_span_delivered_twice_is_held_once() {
        let mut assembly = assembler();
        add(&mut assembly, vec![span(A, 1, 0), span(A, 2, 1)], T0);
        add(&mut assembly, vec![span(A, 2, 1)], T0);
        let trace = one(expire(&mut assembly, T0 + 5.0));
        assert_eq!(trace.ids(), [sid(1), sid(2)]);
        assert_eq!(assembly.counts().duplicate_spans, 1);
        assert_eq!(assembly.counts().spans_in, 3);
    }

    #[test]
    fn the_two_halves_of_a_zipkin_shared_span_id_are_both_kept() {
        let mut assembly = assembler();
        add(
            &mut assembly,
            vec![
                span_of(A, 1, 0, "web", SpanKind::Client),
                span_of(A, 1, 0, "app", SpanKind::Server),
                span_of(A, 1, 0, "app", SpanKind::Server),
            ],
            T0,
        );
        let trace = one(expire(&mut assembly, T0 + 5.0));
        let halves: Vec<_> = trace.spans.iter().map(|s| (s.service(), s.kind)).collect();
        assert_eq!(
            halves,
            [("web", SpanKind::Client), ("app", SpanKind::Server)]
        );
        assert_eq!(assembly.counts().duplicate_spans, 1);
    }

    #[test]
    fn a_late_span_is_merged_into_the_emitted_trace_which_is_emitted_again_marked_late() {
        let mut assembly = assembler();
        let mut now = T0;
        add(&mut assembly, vec![span(A, 1, 0), span(A, 2, 1)], now);
        now += 5.0;
        let first = one(expire(&mut assembly, now));
        assert!(!first.late);
        now += 10.0;
        add(&mut assembly, vec![span(A, 3, 2)], now);
        now += 5.0;
        let again = one(expire(&mut assembly, now));
        assert!(again.late);
        assert_eq!(again.ids(), [sid(1), sid(2), sid(3)]);
        assert_eq!(again.already_emitted, 2);
        assert_eq!(first.ids(), [sid(1), sid(2)]);
        assert_eq!(assembly.counts().late_spans, 1);
        assert_eq!(assembly.counts().reemitted, 1);
    }

    #[test]
    fn a_late_duplicate_of_an_emitted_span_does_not_reopen_the_trace() {
        let mut assembly = assembler();
        add(&mut assembly, vec![span(A, 1, 0)], T0);
        expire(&mut assembly, T0 + 5.0);
        add(&mut assembly, vec![span(A, 1, 0)], T0 + 5.0);
        assert!(expire(&mut assembly, T0 + 10.0).is_empty());
        assert_eq!(assembly.counts().duplicate_spans, 1);
        assert_eq!((assembly.live_traces(), assembly.retained_traces()), (0, 1));
    }

    #[test]
    fn a_span_later_than_the_late_window_starts_a_new_trace() {
        let mut assembly = Assembler::new(5.0, 60.0, 30.0, 100, 1000);
        let mut now = T0;
        add(&mut assembly, vec![span(A, 1, 0)], now);
        now += 5.0;
        expire(&mut assembly, now);
        now += 30.0;
        expire(&mut assembly, now);
        add(&mut assembly, vec![span(A, 2, 1)], now);
        now += 5.0;
        let trace = one(expire(&mut assembly, now));
        assert!(!trace.late);
        assert_eq!(trace.ids(), [sid(2)]);
    }

    #[test]
    fn at_the_live_trace_bound_the_oldest_trace_is_emitted_early_and_counted() {
        let mut assembly = Assembler::new(5.0, 60.0, 30.0, 2, 1000);
        let mut now = T0;
        add(&mut assembly, vec![span(A, 1, 0)], now);
        now += 1.0;
        add(&mut assembly, vec![span(B, 1, 0)], now);
        now += 1.0;
        add(&mut assembly, vec![span(A, 2, 1)], now); // A is the oldest opened, though busy
        let early = add(&mut assembly, vec![span(C, 1, 0)], now);
        assert_eq!(early.iter().map(|t| t.trace_id).collect::<Vec<_>>(), [A]);
        assert_eq!(assembly.counts().emitted, [(MAX_LIVE_TRACES, 1)]);
        assert_eq!(assembly.live_traces(), 2);
        assert_eq!(assembly.retained_traces(), 1);
        assert_eq!(
            assembly.take_bounds_report(),
            Some(BoundsReport {
                emitted_early_for_traces: 1,
                emitted_early_for_spans: 0,
                retained_forgotten: 0,
                live_traces: 2,
                held_spans: 4,
            })
        );
        assert_eq!(assembly.take_bounds_report(), None);
    }

    #[test]
    fn at_the_span_bound_retained_traces_are_forgotten_before_live_ones_are_cut() {
        let mut assembly = Assembler::new(5.0, 60.0, 30.0, 100, 3);
        add(&mut assembly, vec![span(A, 1, 0), span(A, 2, 1)], T0);
        expire(&mut assembly, T0 + 5.0);
        assert_eq!(assembly.retained_spans(), 2);
        let early = add(&mut assembly, vec![span(B, 1, 0), span(B, 2, 1)], T0 + 5.0);
        assert!(early.is_empty());
        assert_eq!(assembly.counts().forgotten_early, 1);
        assert_eq!((assembly.retained_spans(), assembly.live_spans()), (0, 2));
        let report = assembly
            .take_bounds_report()
            .expect("forgetting is reported");
        assert_eq!(report.retained_forgotten, 1);
        assert_eq!(
            report.emitted_early_for_spans + report.emitted_early_for_traces,
            0
        );
    }

    #[test]
    fn at_the_span_bound_the_oldest_live_trace_is_emitted_early_and_counted() {
        let mut assembly = Assembler::new(5.0, 60.0, 0.0, 100, 3);
        add(&mut assembly, vec![span(A, 1, 0), span(A, 2, 1)], T0);
        let early = add(&mut assembly, vec![span(B, 1, 0), span(B, 2, 1)], T0 + 1.0);
        assert_eq!(early.iter().map(|t| t.trace_id).collect::<Vec<_>>(), [A]);
        assert_eq!(assembly.counts().emitted, [(MAX_LIVE_SPANS, 1)]);
        assert_eq!(assembly.held_spans(), 2);
        assert_eq!(
            assembly
                .take_bounds_report()
                .map(|r| r.emitted_early_for_spans),
            Some(1)
        );
    }

    #[test]
    fn drain_emits_every_live_trace() {
        let mut assembly = assembler();
        let mut ids: Vec<_> = drain_ids(&mut assembly, vec![span(A, 1, 0), span(B, 1, 0)]);
        ids.sort();
        assert_eq!(ids, [A, B]);
        assert_eq!(assembly.counts().emitted, [(SHUTDOWN, 2)]);
        assert_eq!(assembly.held_spans(), 0);
        assert_eq!(assembly.retained_traces(), 0);
    }

    fn drain_ids(assembly: &mut Assembler, spans: Vec<Span>) -> Vec<TraceId> {
        add(assembly, spans, T0);
        drain(assembly, T0).iter().map(|t| t.trace_id).collect()
    }

    // --- beyond the Python tests ------------------------------------------------------

    #[test]
    fn a_retained_trace_re_emits_the_spans_as_they_were_given_back() {
        let mut assembly = assembler();
        add(&mut assembly, vec![span(A, 1, 0), span(A, 2, 1)], T0);
        let mut traces = assembly.expire(T0 + 5.0, ALL);
        assert_eq!(traces.len(), 1);
        // While lent out the trace's spans still count.
        assert_eq!(
            (assembly.retained_traces(), assembly.retained_spans()),
            (1, 2)
        );
        let mut trace = traces.pop().unwrap();
        trace.spans[1].span_id = sid(9); // as a later stage splitting a shared span
        trace.spans[1].start_ns += 7;
        assembly.give_back(trace);

        // The original id is still a duplicate, though the span now has another one.
        add(&mut assembly, vec![span(A, 2, 1), span(A, 3, 2)], T0 + 10.0);
        assert_eq!(assembly.counts().duplicate_spans, 1);
        let again = one(expire(&mut assembly, T0 + 15.0));
        assert!(again.late);
        assert_eq!(again.already_emitted, 2);
        assert_eq!(again.ids(), [sid(1), sid(9), sid(3)]);
        assert_eq!(again.spans[1].start_ns, 7);
    }

    #[test]
    fn a_trace_emitted_without_being_retained_does_not_come_back() {
        let mut assembly = Assembler::new(5.0, 60.0, 30.0, 100, 3);
        add(&mut assembly, vec![span(A, 1, 0), span(A, 2, 1)], T0);
        let early = add(&mut assembly, vec![span(B, 1, 0), span(B, 2, 1)], T0 + 1.0);
        assert_eq!(early.iter().map(|t| t.trace_id).collect::<Vec<_>>(), [A]);
        assert_eq!((assembly.retained_traces(), assembly.held_spans()), (0, 2));

        assert!(add(&mut assembly, vec![span(A, 3, 2)], T0 + 2.0).is_empty());
        let drained = drain(&mut assembly, T0 + 3.0);
        assert_eq!(
            drained.iter().map(|t| t.trace_id).collect::<Vec<_>>(),
            [B, A]
        );
        assert!(!drained[1].late);
        assert_eq!(drained[1].already_emitted, 0);
        assert_eq!(drained[1].ids(), [sid(3)]);
        assert_eq!((assembly.retained_traces(), assembly.held_spans()), (0, 0));

        // Nor does a trace drained at shutdown.
        add(&mut assembly, vec![span(A, 1, 0)], T0 + 4.0);
        let trace = one(expire(&mut assembly, T0 + 10.0));
        assert!(!trace.late);
        assert_eq!(trace.ids(), [sid(1)]);
    }

    #[test]
    fn a_reopened_trace_is_aged_from_its_reopening() {
        // The age queue's entry from the first opening is stale and must not emit it.
        let mut assembly = Assembler::new(5.0, 14.0, 30.0, 100, 1000);
        add(&mut assembly, vec![span(A, 1, 0)], T0);
        one(expire(&mut assembly, T0 + 5.0));
        for (number, at) in [(2, 10.0), (3, 14.0), (4, 18.0), (5, 22.0)] {
            add(&mut assembly, vec![span(A, number, 1)], T0 + at);
            assert!(expire(&mut assembly, T0 + at).is_empty(), "at {at}");
        }
        let trace = one(expire(&mut assembly, T0 + 24.0));
        assert_eq!(trace.spans.len(), 5);
        assert_eq!(assembly.counts().emitted, [(IDLE_TIMEOUT, 1), (MAX_AGE, 1)]);
    }

    #[test]
    fn expire_emits_at_most_its_limit_and_the_rest_stays_due() {
        let mut assembly = assembler();
        add(
            &mut assembly,
            vec![span(A, 1, 0), span(B, 1, 0), span(C, 1, 0)],
            T0,
        );
        let traces = assembly.expire(T0 + 5.0, 2);
        let first = settle(&mut assembly, traces);
        assert_eq!(first.iter().map(|t| t.trace_id).collect::<Vec<_>>(), [A, B]);
        let traces = assembly.expire(T0 + 5.0, 2);
        assert_eq!(
            settle(&mut assembly, traces)
                .iter()
                .map(|t| t.trace_id)
                .collect::<Vec<_>>(),
            [C]
        );
    }

    #[test]
    fn idle_traces_go_least_recently_added_to_first() {
        let mut assembly = assembler();
        add(&mut assembly, vec![span(A, 1, 0), span(B, 1, 0)], T0);
        add(&mut assembly, vec![span(C, 1, 0), span(A, 2, 1)], T0 + 1.0);
        // A duplicate does not count as activity.
        add(&mut assembly, vec![span(B, 1, 0)], T0 + 2.0);
        let ids: Vec<_> = expire(&mut assembly, T0 + 9.0)
            .iter()
            .map(|t| t.trace_id)
            .collect();
        assert_eq!(ids, [B, C, A]);
    }

    #[test]
    fn bounds_reports_add_up_until_taken() {
        let mut assembly = Assembler::new(5.0, 60.0, 30.0, 1, 1000);
        add(&mut assembly, vec![span(A, 1, 0)], T0);
        add(&mut assembly, vec![span(B, 1, 0)], T0);
        add(&mut assembly, vec![span(C, 1, 0)], T0);
        assert_eq!(
            assembly.take_bounds_report(),
            Some(BoundsReport {
                emitted_early_for_traces: 2,
                emitted_early_for_spans: 0,
                retained_forgotten: 0,
                live_traces: 1,
                held_spans: 3,
            })
        );
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "given back")]
    fn a_trace_not_given_back_is_caught_in_debug_builds() {
        let mut assembly = assembler();
        assembly.add(vec![span(A, 1, 0)], T0);
        let _kept = assembly.expire(T0 + 5.0, ALL);
        assembly.add(vec![span(A, 2, 1)], T0 + 6.0);
    }

    // --- against a line-by-line model of the Python ------------------------------------

    /// assemble.py transcribed with ordered vectors (O(n), obviously right), to check the
    /// queues, stamps and sweeps against over random runs.
    mod python {
        use super::*;

        pub struct Held {
            pub trace_id: TraceId,
            /// Object identity, which Python's `is` compares.
            pub object: u64,
            pub spans: Vec<Span>,
            /// Python's `seen` dict as pairs: key → kind and service of the span.
            pub seen: Vec<(Key, (SpanKind, String))>,
            pub generation: u64,
            pub last_span_at: f64,
            pub emitted_at: f64,
            pub already_emitted: usize,
            pub late: bool,
        }

        pub struct Model {
            pub idle_timeout: f64,
            pub max_age: f64,
            pub late_window: f64,
            pub max_live_traces: usize,
            pub max_live_spans: usize,
            pub live: Vec<Held>,
            pub by_age: VecDeque<(f64, u64, TraceId, u64)>,
            pub retained: Vec<Held>,
            pub live_spans: usize,
            pub retained_spans: usize,
            pub counts: AssemblyCounts,
            objects: u64,
        }

        pub type Out = (TraceId, Vec<SpanId>, bool, usize);

        /// A `seen` key: the span id alone (`None`), or with kind and service.
        type Key = (SpanId, Option<(SpanKind, String)>);

        fn key(span: &Span, with_kind_and_service: bool) -> Key {
            (
                span.span_id,
                with_kind_and_service.then(|| (span.kind, span.service().to_owned())),
            )
        }

        fn is_duplicate(held: &Held, span: &Span) -> bool {
            let Some((_, (kind, service))) = held.seen.iter().find(|(k, _)| *k == key(span, false))
            else {
                return false;
            };
            if *kind == span.kind && service == span.service() {
                return true;
            }
            held.seen.iter().any(|(k, _)| *k == key(span, true))
        }

        fn remember(held: &mut Held, span: &Span) {
            let shared = held.seen.iter().any(|(k, _)| *k == key(span, false));
            held.seen
                .push((key(span, shared), (span.kind, span.service().to_owned())));
        }

        impl Model {
            pub fn new(idle: f64, age: f64, late: f64, traces: usize, spans: usize) -> Model {
                Model {
                    idle_timeout: idle,
                    max_age: age,
                    late_window: late,
                    max_live_traces: traces,
                    max_live_spans: spans,
                    live: Vec::new(),
                    by_age: VecDeque::new(),
                    retained: Vec::new(),
                    live_spans: 0,
                    retained_spans: 0,
                    counts: AssemblyCounts::default(),
                    objects: 0,
                }
            }

            fn live_index(&self, trace_id: TraceId) -> Option<usize> {
                self.live.iter().position(|h| h.trace_id == trace_id)
            }

            fn is_current_live(&self, trace_id: TraceId, object: u64, generation: u64) -> bool {
                self.live_index(trace_id).is_some_and(|i| {
                    self.live[i].object == object && self.live[i].generation == generation
                })
            }

            pub fn add(&mut self, spans: &[Span], now: f64) -> Vec<Out> {
                let mut touched: Vec<TraceId> = Vec::new();
                for span in spans {
                    self.counts.spans_in += 1;
                    let trace_id = span.trace_id;
                    let index = match self.live_index(trace_id) {
                        Some(index) => index,
                        None => match self.retained.iter().position(|h| h.trace_id == trace_id) {
                            None => {
                                self.objects += 1;
                                self.live.push(Held {
                                    trace_id,
                                    object: self.objects,
                                    spans: Vec::new(),
                                    seen: Vec::new(),
                                    generation: 0,
                                    last_span_at: now,
                                    emitted_at: 0.0,
                                    already_emitted: 0,
                                    late: false,
                                });
                                self.by_age.push_back((now, 0, trace_id, self.objects));
                                self.live.len() - 1
                            }
                            Some(r) if is_duplicate(&self.retained[r], span) => {
                                self.counts.duplicate_spans += 1;
                                continue;
                            }
                            Some(r) => {
                                let mut held = self.retained.remove(r);
                                self.retained_spans -= held.spans.len();
                                self.live_spans += held.spans.len();
                                held.late = true;
                                held.generation += 1;
                                self.by_age.push_back((
                                    now,
                                    held.generation,
                                    trace_id,
                                    held.object,
                                ));
                                self.live.push(held);
                                self.live.len() - 1
                            }
                        },
                    };
                    let held = &mut self.live[index];
                    if is_duplicate(held, span) {
                        self.counts.duplicate_spans += 1;
                        continue;
                    }
                    remember(held, span);
                    held.spans.push(span.clone());
                    if held.late {
                        self.counts.late_spans += 1;
                    }
                    self.live_spans += 1;
                    if !touched.contains(&trace_id) {
                        touched.push(trace_id);
                    }
                }
                for trace_id in touched {
                    let index = self.live_index(trace_id).unwrap();
                    let mut held = self.live.remove(index);
                    held.last_span_at = now;
                    self.live.push(held);
                }
                if self.live.len() > self.max_live_traces
                    || self.live_spans + self.retained_spans > self.max_live_spans
                {
                    return self.enforce_bounds(now);
                }
                Vec::new()
            }

            pub fn expire(&mut self, now: f64, limit: usize) -> Vec<Out> {
                let mut emitted = Vec::new();
                while !self.live.is_empty() && emitted.len() < limit {
                    if self.live[0].last_span_at + self.idle_timeout > now {
                        break;
                    }
                    emitted.push(self.emit(0, IDLE_TIMEOUT, now, true));
                }
                while let Some(&(opened_at, generation, trace_id, object)) = self.by_age.front() {
                    if emitted.len() >= limit {
                        break;
                    }
                    if !self.is_current_live(trace_id, object, generation) {
                        self.by_age.pop_front();
                        continue;
                    }
                    if opened_at + self.max_age > now {
                        break;
                    }
                    self.by_age.pop_front();
                    let index = self.live_index(trace_id).unwrap();
                    emitted.push(self.emit(index, MAX_AGE, now, true));
                }
                while !self.retained.is_empty() {
                    if self.retained[0].emitted_at + self.late_window > now {
                        break;
                    }
                    self.forget_oldest();
                }
                emitted
            }

            pub fn drain(&mut self, now: f64) -> Vec<Out> {
                let mut emitted = Vec::new();
                while !self.live.is_empty() {
                    emitted.push(self.emit(0, SHUTDOWN, now, false));
                }
                emitted
            }

            fn emit(&mut self, index: usize, reason: &'static str, now: f64, retain: bool) -> Out {
                let mut held = self.live.remove(index);
                let count = held.spans.len();
                self.live_spans -= count;
                let out = (
                    held.trace_id,
                    held.spans.iter().map(|s| s.span_id).collect(),
                    held.late,
                    held.already_emitted,
                );
                self.counts.count_emitted(reason);
                if held.late {
                    self.counts.reemitted += 1;
                }
                held.already_emitted = count;
                if retain && self.late_window > 0.0 {
                    held.emitted_at = now;
                    self.retained.push(held);
                    self.retained_spans += count;
                }
                out
            }

            fn forget_oldest(&mut self) {
                let held = self.retained.remove(0);
                self.retained_spans -= held.spans.len();
            }

            fn oldest_live(&mut self) -> usize {
                loop {
                    let (_, generation, trace_id, object) = self.by_age.pop_front().unwrap();
                    if self.is_current_live(trace_id, object, generation) {
                        return self.live_index(trace_id).unwrap();
                    }
                }
            }

            fn enforce_bounds(&mut self, now: f64) -> Vec<Out> {
                let mut emitted = Vec::new();
                while self.live.len() > self.max_live_traces {
                    let index = self.oldest_live();
                    emitted.push(self.emit(index, MAX_LIVE_TRACES, now, true));
                }
                while self.live_spans + self.retained_spans > self.max_live_spans
                    && !self.retained.is_empty()
                {
                    self.forget_oldest();
                    self.counts.forgotten_early += 1;
                }
                while self.live_spans + self.retained_spans > self.max_live_spans
                    && !self.live.is_empty()
                {
                    let index = self.oldest_live();
                    emitted.push(self.emit(index, MAX_LIVE_SPANS, now, false));
                }
                emitted
            }
        }
    }

    /// xorshift64*: enough randomness for a reproducible run.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) % n
        }
    }

    fn outs(assembly: &mut Assembler, traces: Vec<Trace>) -> Vec<python::Out> {
        settle(assembly, traces)
            .into_iter()
            .map(|t| (t.trace_id, t.ids(), t.late, t.already_emitted))
            .collect()
    }

    #[test]
    fn random_runs_match_the_python_model() {
        let services = ["web", "app"];
        let kinds = [SpanKind::Client, SpanKind::Server];
        for seed in 1..=40_u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let late_window = [0.0, 6.0, 30.0][(seed % 3) as usize];
            // Some runs live at the bounds, others (more ids than traces allowed) never do.
            let trace_ids = 2 + rng.below(7) as u8;
            let max_live_traces = 2 + rng.below(8) as usize;
            let max_live_spans = 4 + rng.below(80) as usize;
            let mut assembly =
                Assembler::new(5.0, 14.0, late_window, max_live_traces, max_live_spans);
            let mut model =
                python::Model::new(5.0, 14.0, late_window, max_live_traces, max_live_spans);
            let mut now = T0;
            for step in 0..3000 {
                let context = format!("seed {seed} step {step}");
                let (got, want) = match rng.below(10) {
                    0..=4 => {
                        let batch: Vec<Span> = (0..1 + rng.below(6))
                            .map(|_| {
                                let trace = [rng.below(u64::from(trace_ids)) as u8 + 1; 16];
                                let id = rng.below(6) as u8 + 1;
                                let who = rng.below(2) as usize;
                                span_of(trace, id, 0, services[who], kinds[rng.below(2) as usize])
                            })
                            .collect();
                        let want = model.add(&batch, now);
                        let traces = assembly.add(batch, now);
                        (outs(&mut assembly, traces), want)
                    }
                    5..=8 => {
                        let limit = [1, 2, ALL][rng.below(3) as usize];
                        let want = model.expire(now, limit);
                        let traces = assembly.expire(now, limit);
                        (outs(&mut assembly, traces), want)
                    }
                    _ if rng.below(20) == 0 => {
                        let want = model.drain(now);
                        let traces = assembly.drain(now);
                        (outs(&mut assembly, traces), want)
                    }
                    _ => (Vec::new(), Vec::new()),
                };
                assert_eq!(got, want, "{context}");
                assert_eq!(assembly.counts(), &model.counts, "{context}");
                assert_eq!(assembly.live_traces(), model.live.len(), "{context}");
                assert_eq!(
                    assembly.retained_traces(),
                    model.retained.len(),
                    "{context}"
                );
                assert_eq!(assembly.live_spans(), model.live_spans, "{context}");
                assert_eq!(assembly.retained_spans(), model.retained_spans, "{context}");
                assert!(assembly.by_touch.len() <= 2 * assembly.live_traces + STALE_SLACK);
                assert!(assembly.by_age.len() <= 2 * assembly.live_traces + STALE_SLACK);
                now += rng.below(5) as f64 * 0.5;
            }
        }
    }
}
