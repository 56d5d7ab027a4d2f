//! What leaves the core, as JSON: span documents, searchable tags, verdicts (port of
//! `span_document`, `searchable_tags`, `synthesized_tags`, `tag_text`, `verdict_document`
//! and `span_document_id` in observer/collector/store/__init__.py).
//!
//! Everything is written straight into the caller's buffer: this runs for every span
//! stored, so values are not first turned into `String`s or `serde_json::Value`s.
//! Numbers are written as orjson writes them, so that JSON text which ends up *inside* a
//! value (a list tag, a nested array, a map attribute) is the very text Python makes, and
//! searches match it.

use foldhash::HashMap;
use std::io::Write as _;
use std::sync::Arc;

use crate::model::{Attributes, Resource, Span, SpanKind, Status, Value, Verdict};

/// Tags Jaeger derives from span fields OTLP does not keep as attributes (the OpenTelemetry
/// → Jaeger mapping, opentelemetry-collector-contrib pkg/translator/jaeger), plus observer's
/// own clock-skew mark.
pub const SPAN_KIND_TAG: &str = "span.kind";
pub const ERROR_TAG: &str = "error";
pub const STATUS_CODE_TAG: &str = "otel.status_code";
pub const STATUS_DESCRIPTION_TAG: &str = "otel.status_description";
pub const SKEW_TAG: &str = "observer.clock_skew.adjustment_us";

const NS_PER_US: i64 = 1_000;

/// Below this many tags, finding a key by scanning beats hashing it (measured: with ~20
/// tags a SipHash index made `searchable_tags` a third slower).
const SMALL_TAGS: usize = 48;

/// The idempotent id of a span: trace id hex, span id hex, kind letter.
pub fn document_id(span: &Span) -> String {
    let mut id = Vec::with_capacity(2 * (span.trace_id.len() + span.span_id.len()) + 1);
    write_hex(&mut id, &span.trace_id);
    write_hex(&mut id, &span.span_id);
    id.push(span.kind.code() as u8);
    String::from_utf8(id).expect("hex digits and a kind letter are ASCII")
}

/// Where a span's document goes.
#[derive(Clone, Copy)]
pub enum Placement {
    /// On its own: it carries its trace id and its resource's attributes.
    Alone,
    /// In its trace's record, which holds the trace id once and each resource once: the
    /// document has no trace id, and its resource is this index into the record's list.
    InRecord { resource: usize },
}

/// Append the span's document (a JSON object) to `out`: every field, the empty ones left out.
pub fn span_document(span: &Span, placement: Placement, out: &mut Vec<u8>) {
    out.push(b'{');
    if let Placement::Alone = placement {
        out.extend_from_slice(b"\"trace_id\":\"");
        write_hex(out, &span.trace_id);
        out.extend_from_slice(b"\",");
    }
    out.extend_from_slice(b"\"span_id\":\"");
    write_hex(out, &span.span_id);
    out.extend_from_slice(b"\",\"parent_span_id\":\"");
    if let Some(parent) = &span.parent_span_id {
        write_hex(out, parent);
    }
    out.extend_from_slice(b"\",\"name\":");
    write_json_str(out, &span.name);
    out.extend_from_slice(b",\"kind\":\"");
    out.extend_from_slice(span.kind.name().as_bytes());
    out.extend_from_slice(b"\",\"start_ns\":");
    write_int(out, span.start_ns);
    out.extend_from_slice(b",\"end_ns\":");
    write_int(out, span.end_ns);
    out.extend_from_slice(b",\"service\":");
    write_json_str(out, span.service());
    out.extend_from_slice(b",\"status\":\"");
    out.extend_from_slice(span.status.name().as_bytes());
    out.push(b'"');
    if !span.status_message.is_empty() {
        out.extend_from_slice(b",\"status_message\":");
        write_json_str(out, &span.status_message);
    }
    if !span.attributes.is_empty() {
        out.extend_from_slice(b",\"attributes\":");
        write_json_attributes(out, &span.attributes);
    }
    match placement {
        Placement::InRecord { resource } => {
            out.extend_from_slice(b",\"resource\":");
            write_int(out, resource as i64);
        }
        Placement::Alone if !span.resource.attributes.is_empty() => {
            out.extend_from_slice(b",\"resource\":");
            write_json_attributes(out, &span.resource.attributes);
        }
        Placement::Alone => {}
    }
    if !span.events.is_empty() {
        out.extend_from_slice(b",\"events\":[");
        for (index, event) in span.events.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            out.push(b'[');
            write_int(out, event.time_ns);
            out.push(b',');
            write_json_str(out, &event.name);
            out.push(b',');
            write_json_attributes(out, &event.attributes);
            out.push(b']');
        }
        out.push(b']');
    }
    if !span.links.is_empty() {
        out.extend_from_slice(b",\"links\":[");
        for (index, link) in span.links.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            out.push(b'[');
            write_json_str(out, &link.trace_id);
            out.push(b',');
            write_json_str(out, &link.span_id);
            out.push(b',');
            write_json_attributes(out, &link.attributes);
            out.push(b']');
        }
        out.push(b']');
    }
    if span.skew_adjustment_ns != 0 {
        out.extend_from_slice(b",\"skew_adjustment_ns\":");
        write_int(out, span.skew_adjustment_ns);
    }
    out.push(b'}');
}

/// Append a trace's record to `out`: the spans of one trace as the embedded store keeps
/// them, `{"resources":[attributes…],"spans":[document…]}`, each document placed
/// `InRecord`. Spans of one `ResourceSpans` share their resource, and spans of one sender
/// in several requests have equal ones: each distinct resource is written once.
pub fn trace_record(spans: &[Span], out: &mut Vec<u8>) {
    let mut resources: Vec<&Arc<Resource>> = Vec::new();
    let mut placed = Vec::with_capacity(spans.len());
    for span in spans {
        let resource = &span.resource;
        let index = match resources.iter().position(|known| {
            Arc::ptr_eq(known, resource) || known.attributes == resource.attributes
        }) {
            Some(index) => index,
            None => {
                resources.push(resource);
                resources.len() - 1
            }
        };
        placed.push(index);
    }
    out.extend_from_slice(b"{\"resources\":[");
    for (index, resource) in resources.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        write_json_attributes(out, &resource.attributes);
    }
    out.extend_from_slice(b"],\"spans\":[");
    for (index, (span, resource)) in spans.iter().zip(placed).enumerate() {
        if index > 0 {
            out.push(b',');
        }
        span_document(span, Placement::InRecord { resource }, out);
    }
    out.extend_from_slice(b"]}");
}

/// A record as stored: LZ4-compressed, its length first. Span records are JSON with the
/// same keys in every span and few distinct values; compressed they are a fraction of the
/// text, and the file system writes that fraction (bench/collector.py's traces of 20
/// spans: 8.0 KB of JSON become 1.8 KB, for about 0.2 µs per span).
pub fn pack_record(record: &[u8]) -> Vec<u8> {
    lz4_flex::block::compress_prepend_size(record)
}

pub fn unpack_record(packed: &[u8]) -> Result<Vec<u8>, String> {
    let (size, block) =
        lz4_flex::block::uncompressed_size(packed).map_err(|error| error.to_string())?;
    // LZ4 expands at most 255-fold: a larger size is no record's, and is not allocated.
    if size > block.len().saturating_mul(255) {
        return Err(format!(
            "{size} bytes cannot come from {} packed",
            block.len()
        ));
    }
    let record = lz4_flex::block::decompress(block, size).map_err(|error| error.to_string())?;
    if record.len() != size {
        return Err(format!("{} bytes unpacked, {size} expected", record.len()));
    }
    Ok(record)
}

/// A tag before it is written as text: borrowed, so gathering the tags copies nothing.
#[derive(Clone, Copy)]
enum Tag<'a> {
    Value(&'a Value),
    Text(&'a str),
    /// `skew_adjustment_ns`, shown in microseconds.
    Skew(i64),
}

/// Tags by key in first-insertion order, a key set again taking the new value: the Python
/// dict `searchable_tags` builds with `update`.
struct Tags<'a> {
    entries: Vec<(&'a str, Tag<'a>)>,
    /// Key → index in `entries`, built only once there are enough tags for it to pay.
    index: Option<HashMap<&'a str, usize>>,
}

impl<'a> Tags<'a> {
    fn set(&mut self, key: &'a str, tag: Tag<'a>) {
        let found = match &self.index {
            Some(index) => index.get(key).copied(),
            None => self.entries.iter().position(|(k, _)| *k == key),
        };
        match found {
            Some(at) => self.entries[at].1 = tag,
            None => {
                if let Some(index) = &mut self.index {
                    index.insert(key, self.entries.len());
                } else if self.entries.len() >= SMALL_TAGS {
                    let mut index: HashMap<&'a str, usize> = self
                        .entries
                        .iter()
                        .enumerate()
                        .map(|(at, (k, _))| (*k, at))
                        .collect();
                    index.insert(key, self.entries.len());
                    self.index = Some(index);
                }
                self.entries.push((key, tag));
            }
        }
    }

    fn extend(&mut self, attributes: &'a Attributes) {
        for (key, value) in &attributes.0 {
            self.set(key, Tag::Value(value));
        }
    }
}

/// Append the span's searchable tags (a JSON object of text) to `out`.
///
/// On a key present twice, the span's own attributes win over its events' and its
/// resource's, and the derived tags over all; a key keeps the place it was first seen at.
pub fn searchable_tags(span: &Span, out: &mut Vec<u8>) {
    let resource = &span.resource.attributes;
    let mut tags = Tags {
        entries: Vec::with_capacity(resource.0.len() + span.attributes.0.len() + 4),
        index: None,
    };
    tags.extend(resource);
    for event in &span.events {
        tags.extend(&event.attributes);
    }
    tags.extend(&span.attributes);
    synthesized_tags(span, |key, tag| tags.set(key, tag));

    // Lists are written as JSON text first, then as a JSON string; one scratch buffer
    // serves them all.
    let mut scratch = Vec::new();
    out.push(b'{');
    for (index, (key, tag)) in tags.entries.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        write_json_str(out, key);
        out.push(b':');
        match *tag {
            Tag::Text(text) => write_json_str(out, text),
            Tag::Value(Value::Str(text)) => write_json_str(out, text),
            Tag::Value(value @ Value::Array(_)) => {
                scratch.clear();
                write_json_value(&mut scratch, value);
                write_json_str(out, std::str::from_utf8(&scratch).expect("JSON is UTF-8"));
            }
            // What remains has no character JSON escapes: write its text in quotes.
            Tag::Value(value) => {
                out.push(b'"');
                write_tag_text(out, value);
                out.push(b'"');
            }
            Tag::Skew(ns) => {
                out.push(b'"');
                // Python's `//`: floor division, so -1500 ns is -2 µs.
                write_int(out, ns.div_euclid(NS_PER_US));
                out.push(b'"');
            }
        }
    }
    out.push(b'}');
}

/// The tags derived from the span's fields (store `synthesized_tags`), in their order.
fn synthesized_tags<'a>(span: &'a Span, mut emit: impl FnMut(&'static str, Tag<'a>)) {
    // INTERNAL and UNSPECIFIED get no span.kind tag, as the Jaeger mapping says.
    if matches!(
        span.kind,
        SpanKind::Server | SpanKind::Client | SpanKind::Producer | SpanKind::Consumer
    ) {
        emit(SPAN_KIND_TAG, Tag::Text(span.kind.name()));
    }
    match span.status {
        Status::Error => {
            emit(STATUS_CODE_TAG, Tag::Text("ERROR"));
            emit(ERROR_TAG, Tag::Text("true"));
        }
        Status::Ok => emit(STATUS_CODE_TAG, Tag::Text("OK")),
        Status::Unset => {}
    }
    if !span.status_message.is_empty() {
        emit(STATUS_DESCRIPTION_TAG, Tag::Text(&span.status_message));
    }
    if span.skew_adjustment_ns != 0 {
        emit(SKEW_TAG, Tag::Skew(span.skew_adjustment_ns));
    }
}

/// How a tag value is compared in searches (store `tag_text`): Jaeger's text form — true,
/// 200, 1.5, lists as JSON. Written unquoted and unescaped: the caller decides.
pub fn write_tag_text(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Str(text) => out.extend_from_slice(text.as_bytes()),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Int(i) => write_int(out, *i),
        Value::Double(d) => write_python_float(out, *d),
        Value::Array(_) => write_json_value(out, value),
    }
}

/// `{"completeness": "complete"|"partial", "reasons": {reason: [span ids]}}`.
pub fn verdict_document(verdict: &Verdict, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"completeness\":\"");
    out.extend_from_slice(verdict.completeness().as_bytes());
    out.extend_from_slice(b"\",\"reasons\":{");
    for (index, (reason, ids)) in verdict.reasons.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        write_json_str(out, reason);
        out.push(b':');
        out.push(b'[');
        for (at, id) in ids.iter().enumerate() {
            if at > 0 {
                out.push(b',');
            }
            write_json_str(out, id);
        }
        out.push(b']');
    }
    out.extend_from_slice(b"}}");
}

// --- JSON pieces, shared with intake ------------------------------------------------------

/// A JSON string, escaped as serde_json (and orjson) escape it.
pub(crate) fn write_json_str(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    if needs_escaping(bytes) {
        serde_json::to_writer(&mut *out, text).expect("writing to a Vec cannot fail");
        return;
    }
    // Names, ids and attribute values almost never need escaping, and copying them whole
    // is several times faster than serde_json's byte-by-byte escaping loop (which was a
    // fifth of the time spent encoding traces).
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    out.extend_from_slice(bytes);
    out.push(b'"');
}

/// Whether JSON needs any of these bytes escaped: a control character, a quote or a
/// backslash (serde_json and orjson escape nothing else). Tested 16 bytes at a time
/// without branching, which the compiler turns into vector compares.
fn needs_escaping(bytes: &[u8]) -> bool {
    let special = |b: u8| (b < 0x20) | (b == b'"') | (b == b'\\');
    let mut chunks = bytes.chunks_exact(16);
    for chunk in &mut chunks {
        if chunk.iter().fold(false, |found, &b| found | special(b)) {
            return true;
        }
    }
    chunks.remainder().iter().any(|&b| special(b))
}

/// Attributes as a JSON object, in their order.
pub(crate) fn write_json_attributes(out: &mut Vec<u8>, attributes: &Attributes) {
    out.push(b'{');
    for (index, (key, value)) in attributes.0.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        write_json_str(out, key);
        out.push(b':');
        write_json_value(out, value);
    }
    out.push(b'}');
}

/// An attribute value as JSON, as `orjson.dumps` writes it.
pub(crate) fn write_json_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Str(text) => write_json_str(out, text),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Int(i) => write_int(out, *i),
        Value::Double(d) => write_json_float(out, *d),
        Value::Array(items) => {
            out.push(b'[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_json_value(out, item);
            }
            out.push(b']');
        }
    }
}

/// A float as orjson writes it; JSON has no NaN or infinity, so those are null, as orjson
/// writes them. serde_json (zmij) and orjson 3.13 write the same text: the shortest digits
/// that read back as the float, ties to even, scientific below 1e-5 and from 1e16 ("1e-6",
/// "0.00001", "1e+16"); the float tests pin this.
pub(crate) fn write_json_float(out: &mut Vec<u8>, value: f64) {
    serde_json::to_writer(&mut *out, &value).expect("writing to a Vec cannot fail");
}

pub(crate) fn write_int(out: &mut Vec<u8>, value: i64) {
    // serde_json writes integers with itoa, faster than `write!`'s formatting machinery.
    serde_json::to_writer(&mut *out, &value).expect("writing to a Vec cannot fail");
}

fn write_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)]);
        out.push(DIGITS[usize::from(byte & 0x0f)]);
    }
}

/// A float as Python's `str(float)` writes it: the shortest round-trip digits, in fixed
/// notation with at least one digit after the point ("100.0") when the decimal exponent
/// is from -4 to 15, else scientific with a signed exponent of at least two digits
/// ("1e-05", "1.5e+16"); "nan", "inf", "-inf".
fn write_python_float(out: &mut Vec<u8>, value: f64) {
    if value.is_nan() {
        out.extend_from_slice(b"nan");
        return;
    }
    if value.is_infinite() {
        out.extend_from_slice(if value < 0.0 { b"-inf" } else { b"inf" });
        return;
    }
    // The digits come from serde_json rather than Rust's `{:e}`: both are shortest, but
    // on an exact tie (600887101163893.25) Rust rounds the last digit up where Python and
    // serde_json round to even. Only the layout is Python's own.
    let mut json = StackText::default();
    serde_json::to_writer(&mut json, &value).expect("a float's JSON fits the buffer");
    let (negative, digits, exponent) = json.decimal();
    if negative {
        out.push(b'-');
    }
    let digits = &digits.bytes[..digits.len];
    if digits.is_empty() {
        out.extend_from_slice(b"0.0");
    } else if !(-4..16).contains(&exponent) {
        out.push(digits[0]);
        if digits.len() > 1 {
            out.push(b'.');
            out.extend_from_slice(&digits[1..]);
        }
        write!(
            out,
            "e{}{:02}",
            if exponent < 0 { '-' } else { '+' },
            exponent.unsigned_abs()
        )
        .expect("writing to a Vec cannot fail");
    } else if exponent < 0 {
        out.extend_from_slice(b"0.");
        out.extend(std::iter::repeat_n(b'0', (-exponent - 1) as usize));
        out.extend_from_slice(digits);
    } else {
        let integer = exponent as usize + 1;
        if digits.len() > integer {
            out.extend_from_slice(&digits[..integer]);
            out.push(b'.');
            out.extend_from_slice(&digits[integer..]);
        } else {
            out.extend_from_slice(digits);
            out.extend(std::iter::repeat_n(b'0', integer - digits.len()));
            out.extend_from_slice(b".0");
        }
    }
}

/// A small text buffer on the stack, so formatting a float allocates nothing.
#[derive(Default)]
struct StackText {
    // The longest float JSON is 24 bytes: "-2.2250738585072014e-308".
    bytes: [u8; 32],
    len: usize,
}

impl StackText {
    /// A finite float's JSON text (fixed or scientific) read back as its sign, its
    /// significant digits without leading or trailing zeros (none for zero), and the
    /// decimal exponent of the first digit (1.5e-7 → "15", -7).
    fn decimal(&self) -> (bool, StackText, i32) {
        let text = &self.bytes[..self.len];
        let (negative, text) = match text.split_first() {
            Some((b'-', rest)) => (true, rest),
            _ => (false, text),
        };
        let (mantissa, exponent) = match text.iter().position(|&c| c == b'e' || c == b'E') {
            Some(at) => {
                let exponent = std::str::from_utf8(&text[at + 1..])
                    .ok()
                    .and_then(|e| e.trim_start_matches('+').parse::<i32>().ok())
                    .expect("JSON exponents are decimal");
                (&text[..at], exponent)
            }
            None => (text, 0),
        };
        let integer_digits = mantissa
            .iter()
            .position(|&c| c == b'.')
            .unwrap_or(mantissa.len());
        // The value is 0.DIGITS × 10^point; each leading zero dropped moves the point.
        let mut point = integer_digits as i32 + exponent;
        let mut digits = StackText::default();
        for &c in mantissa.iter().filter(|c| c.is_ascii_digit()) {
            if c == b'0' && digits.len == 0 {
                point -= 1;
            } else {
                digits.bytes[digits.len] = c;
                digits.len += 1;
            }
        }
        while digits.len > 0 && digits.bytes[digits.len - 1] == b'0' {
            digits.len -= 1;
        }
        (negative, digits, point - 1)
    }
}

impl std::io::Write for StackText {
    fn write(&mut self, text: &[u8]) -> std::io::Result<usize> {
        let end = self.len + text.len();
        let slot = self
            .bytes
            .get_mut(self.len..end)
            .ok_or(std::io::ErrorKind::WriteZero)?;
        slot.copy_from_slice(text);
        self.len = end;
        Ok(text.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! Documents and tags as the store tests (tests/integration/test_trace_stores.py,
    //! test_trace_store_specifics.py) need them, checked against what the Python encoders
    //! write for the same spans.

    use std::sync::Arc;

    use crate::model::test_support::{attrs, text};

    use serde_json::json;

    use super::*;
    use crate::model::{Event, Link, Resource, SpanId, TraceId};

    const BASE_NS: i64 = 1_790_000_000 * 1_000_000_000;
    const MS: i64 = 1_000_000;

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them_wherever_the_special_byte_is() {
        let plain = "GET /api/orders/{id} café ünïcödé \u{7f}";
        let mut cases = vec![String::new(), plain.to_owned()];
        for special in ["\"", "\\", "\n", "\u{0}", "\u{1f}"] {
            // Before, inside and after the 16-byte blocks tested at once, and at their edges.
            for at in [0, 1, 15, 16, 17, 31, 32, plain.len()] {
                let mut case = plain.to_owned();
                let at = (at..).find(|&i| case.is_char_boundary(i)).unwrap();
                case.insert_str(at, special);
                cases.push(case);
            }
        }
        for case in cases {
            let mut ours = Vec::new();
            write_json_str(&mut ours, &case);
            assert_eq!(ours, serde_json::to_vec(&case).unwrap(), "{case:?}");
        }
    }

    fn trace_id(number: u128) -> TraceId {
        number.to_be_bytes()
    }

    fn span_id(number: u64) -> SpanId {
        number.to_be_bytes()
    }

    fn resource(service: &str, pairs: &[(&str, Value)]) -> Arc<Resource> {
        Arc::new(Resource {
            attributes: attrs(pairs),
            service: service.into(),
            clock: service.into(),
        })
    }

    /// stored_traces.py `make_span`.
    fn make_span(
        trace: u128,
        span: u64,
        parent: Option<u64>,
        service: &str,
        name: &str,
        kind: SpanKind,
    ) -> Span {
        Span {
            trace_id: trace_id(trace),
            span_id: span_id(span),
            parent_span_id: parent.map(span_id),
            name: name.into(),
            kind,
            start_ns: BASE_NS,
            end_ns: BASE_NS + 10 * MS,
            status: Status::Unset,
            status_message: String::new(),
            attributes: Attributes::default(),
            resource: resource(service, &[("service.name", text(service))]),
            events: vec![],
            links: vec![],
            skew_adjustment_ns: 0,
        }
    }

    /// The root of stored_traces.py `rich_trace(1)`: every field a span can carry.
    fn rich_root() -> Span {
        let mut span = make_span(1, 1, None, "gateway", "GET /items", SpanKind::Server);
        span.attributes = attrs(&[
            ("http.status_code", Value::Int(200)),
            ("ratio", Value::Double(0.25)),
            ("cached", Value::Bool(false)),
            ("tags", Value::Array(vec![text("a"), text("b")])),
            ("sizes", Value::Array(vec![Value::Int(1), Value::Int(2)])),
        ]);
        span.resource = resource(
            "gateway",
            &[
                ("service.name", text("gateway")),
                ("host.name", text("node-a")),
            ],
        );
        span.events = vec![Event {
            time_ns: BASE_NS + 2 * MS,
            name: "retry".into(),
            attributes: attrs(&[("attempt", Value::Int(2))]),
        }];
        span.links = vec![Link {
            trace_id: format!("{:032x}", 2),
            span_id: format!("{:016x}", 7),
            attributes: attrs(&[("reason", text("batch"))]),
        }];
        span
    }

    /// The child of `rich_trace(1)`: an error, a message, a skew adjustment.
    fn rich_child() -> Span {
        let mut span = make_span(1, 2, Some(1), "items", "load", SpanKind::Internal);
        span.start_ns = BASE_NS + MS;
        span.end_ns = BASE_NS + 4 * MS;
        span.status = Status::Error;
        span.status_message = "boom".into();
        span.skew_adjustment_ns = 1_500_000;
        span
    }

    fn document(span: &Span) -> String {
        let mut out = Vec::new();
        span_document(span, Placement::Alone, &mut out);
        String::from_utf8(out).unwrap()
    }

    fn tags(span: &Span) -> String {
        let mut out = Vec::new();
        searchable_tags(span, &mut out);
        String::from_utf8(out).unwrap()
    }

    fn python_str(value: f64) -> String {
        let mut out = Vec::new();
        write_python_float(&mut out, value);
        String::from_utf8(out).unwrap()
    }

    fn orjson(value: f64) -> String {
        let mut out = Vec::new();
        write_json_float(&mut out, value);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn document_ids_are_trace_id_span_id_and_kind_letter() {
        // test_spans_go_to_the_data_stream_with_ids_of_trace_span_and_kind
        let span = make_span(1, 101, None, "frontend", "GET /", SpanKind::Server);
        assert_eq!(
            document_id(&span),
            "000000000000000000000000000000010000000000000065s"
        );
        let letters: String = [
            SpanKind::Unspecified,
            SpanKind::Internal,
            SpanKind::Server,
            SpanKind::Client,
            SpanKind::Producer,
            SpanKind::Consumer,
        ]
        .into_iter()
        .map(|kind| {
            document_id(&Span {
                kind,
                ..span.clone()
            })
            .pop()
            .unwrap()
        })
        .collect();
        assert_eq!(letters, "uiscpk");
    }

    #[test]
    fn a_rich_span_document_has_every_field_in_order() {
        // Byte for byte what orjson.dumps(span_document(rich_trace(1).spans[0])) writes.
        assert_eq!(
            document(&rich_root()),
            concat!(
                r#"{"trace_id":"00000000000000000000000000000001","span_id":"0000000000000001","#,
                r#""parent_span_id":"","name":"GET /items","kind":"server","#,
                r#""start_ns":1790000000000000000,"end_ns":1790000000010000000,"#,
                r#""service":"gateway","status":"unset","#,
                r#""attributes":{"http.status_code":200,"ratio":0.25,"cached":false,"#,
                r#""tags":["a","b"],"sizes":[1,2]},"#,
                r#""resource":{"service.name":"gateway","host.name":"node-a"},"#,
                r#""events":[[1790000000002000000,"retry",{"attempt":2}]],"#,
                r#""links":[["00000000000000000000000000000002","0000000000000007",{"reason":"batch"}]]}"#,
            )
        );
        assert_eq!(
            document(&rich_child()),
            concat!(
                r#"{"trace_id":"00000000000000000000000000000001","span_id":"0000000000000002","#,
                r#""parent_span_id":"0000000000000001","name":"load","kind":"internal","#,
                r#""start_ns":1790000000001000000,"end_ns":1790000000004000000,"#,
                r#""service":"items","status":"error","status_message":"boom","#,
                r#""resource":{"service.name":"items"},"skew_adjustment_ns":1500000}"#,
            )
        );
    }

    #[test]
    fn empty_fields_are_left_out_of_a_document() {
        let mut span = make_span(1, 1, None, "a", "op", SpanKind::Unspecified);
        span.resource = resource("a", &[]);
        let document: serde_json::Value = serde_json::from_str(&document(&span)).unwrap();
        let keys: Vec<&str> = document
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected = vec![
            "trace_id",
            "span_id",
            "parent_span_id",
            "name",
            "kind",
            "start_ns",
            "end_ns",
            "service",
            "status",
        ];
        expected.sort_unstable(); // serde_json's map without preserve_order sorts keys
        assert_eq!(keys, expected);
    }

    #[test]
    fn documents_escape_text_and_write_floats_as_json_can_hold_them() {
        let mut span = make_span(1, 1, None, "a\"b", "na\\me\n\u{1}é", SpanKind::Client);
        span.attributes = attrs(&[
            ("nan", Value::Double(f64::NAN)),
            ("inf", Value::Double(f64::NEG_INFINITY)),
            ("big", Value::Double(1e20)),
            ("small", Value::Double(1.5e-5)),
            ("tiny", Value::Double(-2.5e-7)),
            (
                "k\"ey",
                Value::Array(vec![Value::Double(f64::INFINITY), Value::Bool(true)]),
            ),
            ("min", Value::Int(i64::MIN)),
        ]);
        span.start_ns = -5;
        let text = document(&span);
        assert!(text.contains(r#""name":"na\\me\n\u0001é""#), "{text}");
        assert!(text.contains(
            r#""attributes":{"nan":null,"inf":null,"big":1e+20,"small":0.000015,"tiny":-2.5e-7,"k\"ey":[null,true],"min":-9223372036854775808}"#
        ), "{text}");
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed["service"], "a\"b");
        assert_eq!(parsed["start_ns"], -5);
        assert_eq!(parsed["attributes"]["big"], 1e20);
    }

    #[test]
    fn tags_gather_resource_event_and_span_attributes_and_the_derived_ones() {
        // What test_search_by_tags searches: the failing payments span of shop_trace(1).
        let mut span = make_span(1, 106, Some(105), "payments", "POST /pay", SpanKind::Server);
        span.status = Status::Error;
        span.status_message = "card declined".into();
        span.attributes = attrs(&[
            ("http.route", text("/pay")),
            ("http.status_code", Value::Int(502)),
        ]);
        span.resource = resource(
            "payments",
            &[
                ("service.name", text("payments")),
                ("k8s.namespace.name", text("shop")),
            ],
        );
        span.events = vec![Event {
            time_ns: BASE_NS + 30 * MS,
            name: "exception".into(),
            attributes: attrs(&[("exception.type", text("CardDeclined"))]),
        }];
        assert_eq!(
            tags(&span),
            concat!(
                r#"{"service.name":"payments","k8s.namespace.name":"shop","#,
                r#""exception.type":"CardDeclined","http.route":"/pay","http.status_code":"502","#,
                r#""span.kind":"server","otel.status_code":"ERROR","error":"true","#,
                r#""otel.status_description":"card declined"}"#,
            )
        );
        span.status = Status::Ok;
        span.status_message.clear();
        span.kind = SpanKind::Internal;
        span.events.clear();
        assert_eq!(
            tags(&span),
            concat!(
                r#"{"service.name":"payments","k8s.namespace.name":"shop","#,
                r#""http.route":"/pay","http.status_code":"502","otel.status_code":"OK"}"#,
            )
        );
    }

    #[test]
    fn rich_tags_write_every_value_type_as_text() {
        assert_eq!(
            tags(&rich_root()),
            concat!(
                r#"{"service.name":"gateway","host.name":"node-a","attempt":"2","#,
                r#""http.status_code":"200","ratio":"0.25","cached":"false","#,
                r#""tags":"[\"a\",\"b\"]","sizes":"[1,2]","span.kind":"server"}"#,
            )
        );
        assert_eq!(
            tags(&rich_child()),
            concat!(
                r#"{"service.name":"items","otel.status_code":"ERROR","error":"true","#,
                r#""otel.status_description":"boom","observer.clock_skew.adjustment_us":"1500"}"#,
            )
        );
    }

    #[test]
    fn a_later_source_overrides_a_key_at_its_first_place() {
        let mut span = make_span(1, 1, None, "svc", "op", SpanKind::Producer);
        span.resource = resource(
            "svc",
            &[
                ("service.name", text("svc")),
                ("shared", text("resource")),
                ("error", text("no")),
            ],
        );
        span.events = vec![
            Event {
                time_ns: 0,
                name: "a".into(),
                attributes: attrs(&[("shared", text("event1")), ("e", Value::Int(1))]),
            },
            Event {
                time_ns: 0,
                name: "b".into(),
                attributes: attrs(&[("e", Value::Int(2))]),
            },
        ];
        span.attributes = attrs(&[
            ("span.kind", text("mine")),
            ("shared", Value::Double(100.0)),
        ]);
        span.status = Status::Error;
        assert_eq!(
            tags(&span),
            concat!(
                r#"{"service.name":"svc","shared":"100.0","error":"true","e":"2","#,
                r#""span.kind":"producer","otel.status_code":"ERROR"}"#,
            )
        );
    }

    #[test]
    fn many_tags_keep_python_dict_order_too() {
        // Past SMALL_TAGS the keys are found by hashing: the order must not change.
        let mut span = make_span(1, 1, None, "svc", "op", SpanKind::Internal);
        let resource_pairs: Vec<(String, Value)> =
            (0..30).map(|n| (format!("r{n}"), Value::Int(n))).collect();
        span.resource = Arc::new(Resource {
            attributes: Attributes(resource_pairs),
            service: "svc".into(),
            clock: "svc".into(),
        });
        span.attributes = Attributes(
            (0..40)
                .rev()
                .map(|n| (format!("r{n}"), text("s")))
                .collect(),
        );
        let parsed: Vec<(String, String)> = {
            // Read the object back with its key order.
            let text = tags(&span);
            let body = text.trim_start_matches('{').trim_end_matches('}');
            body.split(',')
                .map(|pair| {
                    let (k, v) = pair.split_once(':').unwrap();
                    (
                        k.trim_matches('"').to_string(),
                        v.trim_matches('"').to_string(),
                    )
                })
                .collect()
        };
        let expected: Vec<(String, String)> = (0..30)
            .map(|n| (format!("r{n}"), "s".to_string()))
            .chain((30..40).rev().map(|n| (format!("r{n}"), "s".to_string())))
            .collect();
        assert_eq!(parsed, expected);
    }

    #[test]
    fn the_skew_tag_is_floored_microseconds() {
        for (ns, us) in [
            (1_500_000, "1500"),
            (-1500, "-2"),
            (1500, "1"),
            (-1000, "-1"),
            (999, "0"),
            (-1, "-1"),
        ] {
            let mut span = make_span(1, 1, None, "svc", "op", SpanKind::Internal);
            span.skew_adjustment_ns = ns;
            let parsed: serde_json::Value = serde_json::from_str(&tags(&span)).unwrap();
            assert_eq!(parsed[SKEW_TAG], us, "{ns}");
        }
    }

    #[test]
    fn tag_text_is_jaegers_text_form() {
        let tag_text = |value: Value| {
            let mut out = Vec::new();
            write_tag_text(&mut out, &value);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(tag_text(text("x")), "x");
        assert_eq!(tag_text(Value::Bool(true)), "true");
        assert_eq!(tag_text(Value::Bool(false)), "false");
        assert_eq!(tag_text(Value::Int(-42)), "-42");
        assert_eq!(tag_text(Value::Double(1.5)), "1.5");
        assert_eq!(tag_text(Value::Double(1e-5)), "1e-05");
        assert_eq!(tag_text(Value::Double(f64::NAN)), "nan");
        assert_eq!(
            tag_text(Value::Array(vec![
                text("a\""),
                Value::Double(1e-5),
                Value::Bool(false),
                Value::Double(f64::NAN)
            ])),
            r#"["a\"",0.00001,false,null]"#
        );
        assert_eq!(tag_text(Value::Array(vec![])), "[]");
    }

    #[test]
    fn verdicts_list_their_reasons_in_order() {
        let mut out = Vec::new();
        verdict_document(&Verdict::default(), &mut out);
        assert_eq!(out, br#"{"completeness":"complete","reasons":{}}"#);
        let mut verdict = Verdict::default();
        verdict.add("missing_parent", "0000000000000003".into());
        verdict.add("client_without_server", "0000000000000005".into());
        verdict.add("missing_parent", "0000000000000004".into());
        out.clear();
        verdict_document(&verdict, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            concat!(
                r#"{"completeness":"partial","reasons":{"missing_parent":["0000000000000003","0000000000000004"],"#,
                r#""client_without_server":["0000000000000005"]}}"#,
            )
        );
    }

    #[test]
    fn documents_and_tags_are_appended_to_what_the_buffer_holds() {
        let span = make_span(1, 1, None, "svc", "op", SpanKind::Internal);
        let mut out = b"prefix\n".to_vec();
        span_document(&span, Placement::Alone, &mut out);
        out.push(b'\n');
        searchable_tags(&span, &mut out);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "prefix");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(lines[1]).unwrap()["name"],
            "op"
        );
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(lines[2]).unwrap(),
            json!({"service.name": "svc"})
        );
    }

    /// Python's `str(f)` and `orjson.dumps(f)` for a spread of values, from CPython 3.11
    /// and orjson 3.13.
    const FLOATS: &[(f64, &str, &str)] = &[
        (0.0, "0.0", "0.0"),
        (-0.0, "-0.0", "-0.0"),
        (1.0, "1.0", "1.0"),
        (-1.0, "-1.0", "-1.0"),
        (0.5, "0.5", "0.5"),
        (0.1, "0.1", "0.1"),
        (0.25, "0.25", "0.25"),
        (100.0, "100.0", "100.0"),
        (1.0 / 3.0, "0.3333333333333333", "0.3333333333333333"),
        (2.0 / 3.0, "0.6666666666666666", "0.6666666666666666"),
        (
            std::f64::consts::PI,
            "3.141592653589793",
            "3.141592653589793",
        ),
        // Exact ties between two shortest candidates go to the even digit, as Python's
        // repr rounds (Rust's own `{}` would write ...893.3 and ...416.63).
        (
            -2403548404655573.0 / 4.0,
            "-600887101163893.2",
            "-600887101163893.2",
        ),
        (
            -698375398955333.0 / 8.0,
            "-87296924869416.62",
            "-87296924869416.62",
        ),
        (
            9007199254740992.0,
            "9007199254740992.0",
            "9007199254740992.0",
        ),
        (1e-4, "0.0001", "0.0001"),
        (0.0001234, "0.0001234", "0.0001234"),
        (1e-5, "1e-05", "0.00001"),
        (1.5e-5, "1.5e-05", "0.000015"),
        (
            1.2345678901234568e-05,
            "1.2345678901234568e-05",
            "0.000012345678901234568",
        ),
        (1e-6, "1e-06", "1e-6"),
        (-2.5e-6, "-2.5e-06", "-2.5e-6"),
        (1e-7, "1e-07", "1e-7"),
        (
            1.5000000000000002e-09,
            "1.5000000000000002e-09",
            "1.5000000000000002e-9",
        ),
        (1e-10, "1e-10", "1e-10"),
        (
            1.2345678901234567e-12,
            "1.2345678901234567e-12",
            "1.2345678901234567e-12",
        ),
        (-1e-100, "-1e-100", "-1e-100"),
        (1.5e-300, "1.5e-300", "1.5e-300"),
        (5e-324, "5e-324", "5e-324"),
        (
            2.2250738585072014e-308,
            "2.2250738585072014e-308",
            "2.2250738585072014e-308",
        ),
        (
            123456.78901234567,
            "123456.78901234567",
            "123456.78901234567",
        ),
        (1e15, "1000000000000000.0", "1000000000000000.0"),
        (
            1234567890123456.8,
            "1234567890123456.8",
            "1234567890123456.8",
        ),
        (
            9999999999999998.0,
            "9999999999999998.0",
            "9999999999999998.0",
        ),
        (1e16, "1e+16", "1e+16"),
        (1.5e16, "1.5e+16", "1.5e+16"),
        (
            1.2345678901234568e17,
            "1.2345678901234568e+17",
            "1.2345678901234568e+17",
        ),
        (
            9.223372036854776e18,
            "9.223372036854776e+18",
            "9.223372036854776e+18",
        ),
        (1e20, "1e+20", "1e+20"),
        (1e22, "1e+22", "1e+22"),
        (
            1.0000000000000001e23,
            "1.0000000000000001e+23",
            "1.0000000000000001e+23",
        ),
        (1e100, "1e+100", "1e+100"),
        (1.23e302, "1.23e+302", "1.23e+302"),
        (
            f64::MAX,
            "1.7976931348623157e+308",
            "1.7976931348623157e+308",
        ),
        (
            -f64::MAX,
            "-1.7976931348623157e+308",
            "-1.7976931348623157e+308",
        ),
        (f64::INFINITY, "inf", "null"),
        (f64::NEG_INFINITY, "-inf", "null"),
        (f64::NAN, "nan", "null"),
    ];

    #[test]
    fn floats_are_written_as_python_and_orjson_write_them() {
        for &(value, python, orjson_text) in FLOATS {
            assert_eq!(python_str(value), python, "str({value:e})");
            assert_eq!(orjson(value), orjson_text, "orjson.dumps({value:e})");
        }
    }
}
