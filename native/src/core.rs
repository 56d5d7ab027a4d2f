//! The trace path, chained: decode → assemble → reconstruct → graph → sample → encode.
//!
//! `TraceCore` owns every stage. A request's spans are held by the assembler; traces it
//! emits are reconstructed, counted into the service graph and RED metrics (sampled or
//! not), sampled, and the kept ones encoded for the store before their spans go back to
//! the assembler (kept there for late spans). Nothing of a trace leaves the core but its
//! encoding, so the Python side handles one object per trace, never one per span.

use foldhash::{HashSet, HashSetExt};

use crate::assemble::{Assembler, AssemblyCounts, BoundsReport};
use crate::decode::decode_request;
use crate::encode;
use crate::graph::{edges_of, find_calls, GraphMetrics, GraphSnapshot};
use crate::model::{hex, Edge, Span, Trace};
use crate::reconstruct::reconstruct;
use crate::sample::Sampler;

pub struct Settings {
    pub idle_timeout: f64,
    pub max_age: f64,
    pub late_window: f64,
    pub max_live_traces: usize,
    pub max_live_spans: usize,
    pub max_skew_ns: i64,
    pub keep_errors: bool,
    pub latency_threshold_ns: Option<i64>,
    pub probabilistic_share: f64,
    pub request_buckets: Vec<f64>,
    pub latency_buckets: Vec<f64>,
    pub max_series: usize,
    /// Per-span documents (a store that indexes spans) rather than one record per trace.
    pub span_documents: bool,
}

/// One span as a store that keeps a document per span writes it.
pub struct SpanDocument {
    pub id: String,
    pub body: Vec<u8>,
    pub tags: Vec<u8>,
    pub start_ns: i64,
    pub duration_ns: i64,
}

/// What one service did in a trace, for the search index of a store that keeps a trace
/// as one record: a trace can only match a search of `service` whose window and
/// durations overlap these.
pub struct ServiceSummary {
    pub service: String,
    pub first_start_ns: i64,
    pub last_start_ns: i64,
    pub longest_ns: i64,
}

pub struct EncodedTrace {
    pub trace_id: String,
    pub start_ns: i64,
    pub end_ns: i64,
    pub late: bool,
    pub already_emitted: usize,
    pub span_count: usize,
    pub verdict: Vec<u8>,
    pub edges: Vec<Edge>,
    /// The trace's record, packed (`encode::trace_record`, `encode::pack_record`), unless
    /// per-span documents were asked for.
    pub record: Vec<u8>,
    pub span_documents: Vec<SpanDocument>,
    pub services: Vec<ServiceSummary>,
    /// (service, operation, kind), each once.
    pub operations: Vec<(String, String, &'static str)>,
}

#[derive(Default)]
pub struct CoreCounts {
    /// Emitted traces by verdict (a late re-emission counts again).
    pub complete: u64,
    pub partial: u64,
    /// Partial traces by each reason found in them, in the order first met.
    pub partial_reasons: Vec<(&'static str, u64)>,
}

pub struct TraceCore {
    pub assembler: Assembler,
    pub graph: GraphMetrics,
    pub sampler: Sampler,
    pub counts: CoreCounts,
    max_skew_ns: i64,
    span_documents: bool,
}

pub struct Added {
    /// Spans refused by reason.
    pub rejected: Vec<(&'static str, u64)>,
    /// Kept traces the assembler's bounds forced out.
    pub traces: Vec<EncodedTrace>,
}

impl TraceCore {
    pub fn new(settings: Settings) -> Result<TraceCore, String> {
        Ok(TraceCore {
            assembler: Assembler::new(
                settings.idle_timeout,
                settings.max_age,
                settings.late_window,
                settings.max_live_traces,
                settings.max_live_spans,
            ),
            graph: GraphMetrics::new(
                settings.request_buckets,
                settings.latency_buckets,
                settings.max_series,
            ),
            sampler: Sampler::new(
                settings.keep_errors,
                settings.latency_threshold_ns,
                settings.probabilistic_share,
            )?,
            counts: CoreCounts::default(),
            max_skew_ns: settings.max_skew_ns,
            span_documents: settings.span_documents,
        })
    }

    /// Take an OTLP `ExportTraceServiceRequest`; Err when the bytes are not one.
    pub fn add(&mut self, request: &[u8], now: f64) -> Result<Added, prost::DecodeError> {
        let decoded = decode_request(request)?;
        Ok(Added {
            rejected: decoded.rejected,
            traces: self.add_spans(decoded.spans, now),
        })
    }

    /// Take spans decoded already (`decode::decode_request`): the kept traces the
    /// assembler's bounds forced out.
    pub fn add_spans(&mut self, spans: Vec<Span>, now: f64) -> Vec<EncodedTrace> {
        let forced = self.assembler.add(spans, now);
        self.process(forced)
    }

    /// Up to `limit` traces due now, processed: how many, and the kept ones encoded
    /// (fewer than `limit` processed means none is left due).
    pub fn expire(&mut self, now: f64, limit: usize) -> (usize, Vec<EncodedTrace>) {
        let due = self.assembler.expire(now, limit);
        (due.len(), self.process(due))
    }

    pub fn drain(&mut self, now: f64) -> Vec<EncodedTrace> {
        let live = self.assembler.drain(now);
        self.process(live)
    }

    pub fn take_bounds_report(&mut self) -> Option<BoundsReport> {
        self.assembler.take_bounds_report()
    }

    pub fn assembly_counts(&self) -> &AssemblyCounts {
        self.assembler.counts()
    }

    pub fn graph_snapshot(&self) -> GraphSnapshot {
        self.graph.snapshot()
    }

    fn process(&mut self, traces: Vec<Trace>) -> Vec<EncodedTrace> {
        let mut kept = Vec::new();
        for mut trace in traces {
            let tree = reconstruct(&mut trace, self.max_skew_ns);
            let (calls, unpaired) = find_calls(&tree, &trace.spans);
            trace.edges = edges_of(&calls);
            self.graph.observe(&trace, &calls, &unpaired);
            self.count_verdict(&trace);
            if self.sampler.sample(&trace).is_some() && !trace.spans.is_empty() {
                kept.push(self.encode(&trace));
            }
            self.assembler.give_back(trace);
        }
        kept
    }

    fn count_verdict(&mut self, trace: &Trace) {
        let counts = &mut self.counts;
        if trace.verdict.is_complete() {
            counts.complete += 1;
            return;
        }
        counts.partial += 1;
        for (reason, _) in &trace.verdict.reasons {
            match counts.partial_reasons.iter_mut().find(|(r, _)| r == reason) {
                Some((_, count)) => *count += 1,
                None => counts.partial_reasons.push((reason, 1)),
            }
        }
    }

    fn encode(&self, trace: &Trace) -> EncodedTrace {
        let spans = &trace.spans;
        let mut encoded = EncodedTrace {
            trace_id: hex(&trace.trace_id),
            start_ns: spans.iter().map(|s| s.start_ns).min().unwrap_or(0),
            end_ns: spans.iter().map(|s| s.end_ns).max().unwrap_or(0),
            late: trace.late,
            already_emitted: trace.already_emitted,
            span_count: spans.len(),
            verdict: Vec::with_capacity(64),
            edges: trace.edges.clone(),
            record: Vec::new(),
            span_documents: Vec::new(),
            services: Vec::new(),
            operations: Vec::new(),
        };
        encode::verdict_document(&trace.verdict, &mut encoded.verdict);
        if self.span_documents {
            encoded.span_documents = spans
                .iter()
                .map(|span| {
                    let mut body = Vec::with_capacity(512);
                    encode::span_document(span, encode::Placement::Alone, &mut body);
                    let mut tags = Vec::with_capacity(256);
                    encode::searchable_tags(span, &mut tags);
                    SpanDocument {
                        id: encode::document_id(span),
                        body,
                        tags,
                        start_ns: span.start_ns,
                        duration_ns: span.duration_ns(),
                    }
                })
                .collect();
        } else {
            let mut record = Vec::with_capacity(spans.len() * 320);
            encode::trace_record(spans, &mut record);
            encoded.record = encode::pack_record(&record);
        }
        let mut operations: HashSet<(&str, &str, &'static str)> = HashSet::new();
        for span in spans {
            let service = span.service();
            match encoded.services.iter_mut().find(|s| s.service == service) {
                Some(summary) => {
                    summary.first_start_ns = summary.first_start_ns.min(span.start_ns);
                    summary.last_start_ns = summary.last_start_ns.max(span.start_ns);
                    summary.longest_ns = summary.longest_ns.max(span.duration_ns());
                }
                None => encoded.services.push(ServiceSummary {
                    service: service.to_owned(),
                    first_start_ns: span.start_ns,
                    last_start_ns: span.start_ns,
                    longest_ns: span.duration_ns(),
                }),
            }
            if operations.insert((service, &span.name, span.kind.name())) {
                encoded
                    .operations
                    .push((service.to_owned(), span.name.clone(), span.kind.name()));
            }
        }
        encoded
    }
}
