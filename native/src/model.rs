//! Spans as the core reasons about them, and whole traces: the Rust side of
//! `observer/collector/model.py`, whose docstrings say what each field means. Ids stay
//! bytes here and become lowercase hex only in what leaves the core.

use std::fmt::Write as _;
use std::sync::Arc;

pub type TraceId = [u8; 16];
pub type SpanId = [u8; 8];

/// An attribute value. Arrays hold scalars only: intake turns nested arrays and maps into
/// their JSON text, as the OpenTelemetry Collector's Jaeger translator does.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(String),
    Bool(bool),
    Int(i64),
    Double(f64),
    Array(Vec<Value>),
}

/// Attributes with unique keys in first-insertion order, as a Python dict keeps them: a
/// key set again keeps its place and takes the new value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Attributes(pub Vec<(String, Value)>);

impl Attributes {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The value when it is a non-empty string.
    pub fn text(&self, key: &str) -> Option<&str> {
        match self.get(key) {
            Some(Value::Str(s)) if !s.is_empty() => Some(s),
            _ => None,
        }
    }

    pub fn contains(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }

    pub fn set(&mut self, key: impl Into<String>, value: Value) {
        let key = key.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SpanKind {
    Unspecified,
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

impl SpanKind {
    /// OTLP's enum number; out-of-range numbers are UNSPECIFIED.
    pub fn from_otlp(number: i32) -> SpanKind {
        match number {
            1 => SpanKind::Internal,
            2 => SpanKind::Server,
            3 => SpanKind::Client,
            4 => SpanKind::Producer,
            5 => SpanKind::Consumer,
            _ => SpanKind::Unspecified,
        }
    }

    /// The name Jaeger and Tempo show (`SpanKind` values in model.py).
    pub fn name(self) -> &'static str {
        match self {
            SpanKind::Unspecified => "unspecified",
            SpanKind::Internal => "internal",
            SpanKind::Server => "server",
            SpanKind::Client => "client",
            SpanKind::Producer => "producer",
            SpanKind::Consumer => "consumer",
        }
    }

    /// The letter that ends a span's document id (`_KIND_CODES` in store/__init__.py).
    pub fn code(self) -> char {
        match self {
            SpanKind::Unspecified => 'u',
            SpanKind::Internal => 'i',
            SpanKind::Server => 's',
            SpanKind::Client => 'c',
            SpanKind::Producer => 'p',
            SpanKind::Consumer => 'k',
        }
    }

    /// Crosses a process boundary.
    pub fn is_remote(self) -> bool {
        matches!(
            self,
            SpanKind::Client | SpanKind::Server | SpanKind::Producer | SpanKind::Consumer
        )
    }

    pub fn is_caller(self) -> bool {
        matches!(self, SpanKind::Client | SpanKind::Producer)
    }

    pub fn is_callee(self) -> bool {
        matches!(self, SpanKind::Server | SpanKind::Consumer)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    Unset,
    Ok,
    Error,
}

impl Status {
    pub fn from_otlp(number: i32) -> Status {
        match number {
            1 => Status::Ok,
            2 => Status::Error,
            _ => Status::Unset,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Status::Unset => "unset",
            Status::Ok => "ok",
            Status::Error => "error",
        }
    }
}

/// A `ResourceSpans`' resource, shared by its spans.
#[derive(Debug, PartialEq)]
pub struct Resource {
    pub attributes: Attributes,
    /// `service.name`, or "unknown_service" when the sender gave none.
    pub service: Arc<str>,
    /// Which clock the resource's spans were timed by (reconstruct.py `_host`): the node,
    /// host or host id, else the service instance, else the service.
    pub clock: Arc<str>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub time_ns: i64,
    pub name: String,
    pub attributes: Attributes,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Link {
    /// Hex as received: links are shown, not followed, so they are not validated.
    pub trace_id: String,
    pub span_id: String,
    pub attributes: Attributes,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// None for a root span.
    pub parent_span_id: Option<SpanId>,
    pub name: String,
    pub kind: SpanKind,
    pub start_ns: i64,
    pub end_ns: i64,
    pub status: Status,
    pub status_message: String,
    pub attributes: Attributes,
    pub resource: Arc<Resource>,
    pub events: Vec<Event>,
    pub links: Vec<Link>,
    /// How far reconstruction moved this span to fit inside its parent; 0 when not moved.
    pub skew_adjustment_ns: i64,
}

impl Span {
    pub fn service(&self) -> &str {
        &self.resource.service
    }

    pub fn duration_ns(&self) -> i64 {
        self.end_ns - self.start_ns
    }

    pub fn is_error(&self) -> bool {
        self.status == Status::Error
    }
}

/// Whether a trace is whole: complete when `reasons` is empty, else partial with every
/// reason (in the order first found) and the hex span ids it concerns.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Verdict {
    pub reasons: Vec<(&'static str, Vec<String>)>,
}

impl Verdict {
    pub fn add(&mut self, reason: &'static str, span_id: String) {
        match self.reasons.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, ids)) => ids.push(span_id),
            None => self.reasons.push((reason, vec![span_id])),
        }
    }

    pub fn is_complete(&self) -> bool {
        self.reasons.is_empty()
    }

    pub fn completeness(&self) -> &'static str {
        if self.is_complete() {
            "complete"
        } else {
            "partial"
        }
    }
}

/// Calls from one service to another seen in one trace (model.py `Edge`).
#[derive(Clone, Debug, PartialEq)]
pub struct Edge {
    pub caller: String,
    pub callee: String,
    pub calls: u64,
    pub errors: u64,
    pub is_virtual: bool,
}

#[derive(Debug, Default)]
pub struct Trace {
    pub trace_id: TraceId,
    /// In arrival order; stages never reorder them, so `spans[already_emitted..]` are the
    /// spans new since the trace was last emitted.
    pub spans: Vec<Span>,
    pub verdict: Verdict,
    pub edges: Vec<Edge>,
    /// Spans arrived after the trace was first emitted and were merged into it.
    pub late: bool,
    pub already_emitted: usize,
}

pub fn hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

/// Builders the stages' tests share.
#[cfg(test)]
pub(crate) mod test_support {
    use super::{Attributes, Value};

    pub fn attrs(pairs: &[(&str, Value)]) -> Attributes {
        Attributes(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }

    pub fn text(s: &str) -> Value {
        Value::Str(s.into())
    }
}
