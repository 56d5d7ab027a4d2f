//! Intake: OTLP bytes unpacked into the core's `Span`s (port of observer/collector/intake.py).
//!
//! Bad spans are refused one by one and counted by reason; the rest of the batch flows on.
//! What OTLP calls invalid (opentelemetry-proto `trace/v1/trace.proto`): a trace id that is
//! not 16 bytes or is all zeros; a span id that is not 8 bytes or is all zeros; a parent
//! span id that is neither empty (a root) nor 8 bytes. An all-zero parent id is read as
//! "no parent", as the OpenTelemetry SDKs write it for roots.

use foldhash::{HashSet, HashSetExt};
use std::sync::Arc;

use base64::Engine as _;
use prost::Message as _;

use crate::encode::{write_int, write_json_float, write_json_str, write_json_value};
use crate::model::{
    Attributes, Event, Link, Resource, Span, SpanId, SpanKind, Status, TraceId, Value,
};
use crate::otlp::{self, any_value, AnyValue, ExportTraceServiceRequest, KeyValue};

/// The OpenTelemetry SDKs' default when a resource has no `service.name`.
pub const UNKNOWN_SERVICE: &str = "unknown_service";
/// Where the instrumentation scope goes, by the names Jaeger's OTLP translator uses.
pub const SCOPE_NAME: &str = "otel.scope.name";
pub const SCOPE_VERSION: &str = "otel.scope.version";

/// Resource attributes that name the host whose clock timed a span, best first
/// (`_HOST_ATTRIBUTES` in reconstruct.py).
const HOST_ATTRIBUTES: [&str; 3] = ["k8s.node.name", "host.name", "host.id"];

/// Up to this many key-values, a linear look-up per key beats hashing them all first.
const SMALL_ATTRIBUTES: usize = 32;

/// The spans of a request, and how many were refused for which reason
/// ("invalid_trace_id", "invalid_span_id", "invalid_parent_span_id"), in the order first met.
#[derive(Debug, Default)]
pub struct Decoded {
    pub spans: Vec<Span>,
    pub rejected: Vec<(&'static str, u64)>,
    /// What was wrong with the first span refused, for the sender (OTLP's
    /// `partial_success.error_message`), in the words of `observer.protocols.otlp`.
    pub first_problem: Option<String>,
}

impl Decoded {
    fn reject(&mut self, reason: &'static str, raw: &otlp::Span) {
        match self.rejected.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, count)) => *count += 1,
            None => self.rejected.push((reason, 1)),
        }
        if self.first_problem.is_none() {
            self.first_problem = Some(id_problem(raw));
        }
    }

    /// How many spans were refused.
    pub fn rejected_spans(&self) -> u64 {
        self.rejected.iter().map(|(_, count)| count).sum()
    }
}

/// Why a span's ids are invalid (`_id_problem` in observer/protocols/otlp.py).
fn id_problem(raw: &otlp::Span) -> String {
    let (trace_id, span_id, parent) = (&raw.trace_id, &raw.span_id, &raw.parent_span_id);
    if trace_id.len() != 16 {
        format!("trace_id must be 16 bytes, got {}", trace_id.len())
    } else if is_zero(trace_id) {
        "trace_id must not be all zeros".to_owned()
    } else if span_id.len() != 8 {
        format!("span_id must be 8 bytes, got {}", span_id.len())
    } else if is_zero(span_id) {
        "span_id must not be all zeros".to_owned()
    } else {
        format!(
            "parent_span_id must be empty or 8 bytes, got {}",
            parent.len()
        )
    }
}

/// Decode an `ExportTraceServiceRequest`; Err when the bytes are not one.
pub fn decode_request(data: &[u8]) -> Result<Decoded, prost::DecodeError> {
    Ok(unpack(ExportTraceServiceRequest::decode(data)?))
}

/// Unpack a decoded request, refusing invalid spans one by one.
///
/// Takes the request by value so names, keys and string values move into the spans
/// instead of being copied.
pub fn unpack(request: ExportTraceServiceRequest) -> Decoded {
    let mut result = Decoded::default();
    for resource_spans in request.resource_spans {
        let resource = resource(
            resource_spans
                .resource
                .map(|r| r.attributes)
                .unwrap_or_default(),
        );
        for scope_spans in resource_spans.scope_spans {
            let scope = scope_spans.scope.unwrap_or_default();
            for raw in scope_spans.spans {
                if let Some(span) = span(raw, &scope, &resource, &mut result) {
                    result.spans.push(span);
                }
            }
        }
    }
    result
}

/// The resource of one `ResourceSpans`, converted once and shared by all its spans.
fn resource(key_values: Vec<KeyValue>) -> Arc<Resource> {
    let attributes = attributes(key_values);
    let service: Arc<str> = attributes
        .text("service.name")
        .unwrap_or(UNKNOWN_SERVICE)
        .into();
    let clock = clock(&attributes, &service);
    Arc::new(Resource {
        attributes,
        service,
        clock,
    })
}

/// Which clock timed the resource's spans (reconstruct.py `_host`).
fn clock(attributes: &Attributes, service: &Arc<str>) -> Arc<str> {
    if let Some(host) = HOST_ATTRIBUTES.iter().find_map(|key| attributes.text(key)) {
        return host.into();
    }
    // Without host facts, one service instance is the best guess at one clock; an empty
    // instance id still counts, as `isinstance(instance, str)` lets it through.
    match attributes.get("service.instance.id") {
        Some(Value::Str(instance)) => format!("{service}/{instance}").into(),
        _ => Arc::clone(service),
    }
}

/// One OTLP span as the core's, or None (counted in `result`) when its ids are invalid.
fn span(
    raw: otlp::Span,
    scope: &otlp::InstrumentationScope,
    resource: &Arc<Resource>,
    result: &mut Decoded,
) -> Option<Span> {
    let Some(trace_id) = valid_id::<TraceId>(&raw.trace_id) else {
        result.reject("invalid_trace_id", &raw);
        return None;
    };
    let Some(span_id) = valid_id::<SpanId>(&raw.span_id) else {
        result.reject("invalid_span_id", &raw);
        return None;
    };
    // Only an empty or an 8-byte all-zero parent is a root: 4 zero bytes are invalid.
    let parent_span_id = if raw.parent_span_id.is_empty() || raw.parent_span_id == [0; 8] {
        None
    } else if let Ok(parent) = SpanId::try_from(raw.parent_span_id.as_slice()) {
        Some(parent)
    } else {
        result.reject("invalid_parent_span_id", &raw);
        return None;
    };
    let mut span_attributes = attributes(raw.attributes);
    if !scope.name.is_empty() {
        span_attributes.set(SCOPE_NAME, Value::Str(scope.name.clone()));
        if !scope.version.is_empty() {
            span_attributes.set(SCOPE_VERSION, Value::Str(scope.version.clone()));
        }
    }
    let status = raw.status.unwrap_or_default();
    Some(Span {
        trace_id,
        span_id,
        parent_span_id,
        name: raw.name,
        kind: SpanKind::from_otlp(raw.kind),
        // Python keeps the u64 as is; past i64::MAX (year 2262) it wraps here.
        start_ns: raw.start_time_unix_nano as i64,
        end_ns: raw.end_time_unix_nano as i64,
        status: Status::from_otlp(status.code),
        status_message: status.message,
        attributes: span_attributes,
        resource: Arc::clone(resource),
        events: raw
            .events
            .into_iter()
            .map(|event| Event {
                time_ns: event.time_unix_nano as i64,
                name: event.name,
                attributes: attributes(event.attributes),
            })
            .collect(),
        links: raw
            .links
            .into_iter()
            // Links are shown, not followed: their ids are kept as hex of whatever came.
            .map(|link| Link {
                trace_id: crate::model::hex(&link.trace_id),
                span_id: crate::model::hex(&link.span_id),
                attributes: attributes(link.attributes),
            })
            .collect(),
        skew_adjustment_ns: 0,
    })
}

/// The id when it has exactly the id type's length and is not all zeros, which OTLP
/// calls invalid.
fn valid_id<Id>(bytes: &[u8]) -> Option<Id>
where
    Id: for<'a> TryFrom<&'a [u8]> + AsRef<[u8]>,
{
    let id = Id::try_from(bytes).ok()?;
    (!is_zero(id.as_ref())).then_some(id)
}

fn is_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

/// OTLP key-values as attributes (intake.py `attributes`); values with nothing set (OTLP's
/// empty value) are left out, and a key given twice keeps its first place and last value,
/// as a Python dict does.
pub(crate) fn attributes(key_values: Vec<KeyValue>) -> Attributes {
    let mut result = Attributes(Vec::with_capacity(key_values.len()));
    // Senders almost never repeat a key: when a long list has none, skip the per-key
    // search that `Attributes::set` makes.
    let unique = key_values.len() > SMALL_ATTRIBUTES && {
        let mut seen = HashSet::with_capacity(key_values.len());
        key_values.iter().all(|kv| seen.insert(kv.key.as_str()))
    };
    for key_value in key_values {
        let Some(value) = key_value.value.and_then(value) else {
            continue;
        };
        if unique {
            result.0.push((key_value.key, value));
        } else {
            result.set(key_value.key, value);
        }
    }
    result
}

/// One OTLP value as an attribute value (intake.py `_value`); None when nothing is set.
fn value(any: AnyValue) -> Option<Value> {
    Some(match any.value? {
        any_value::Value::StringValue(s) => Value::Str(s),
        any_value::Value::BoolValue(b) => Value::Bool(b),
        any_value::Value::IntValue(i) => Value::Int(i),
        any_value::Value::DoubleValue(d) => Value::Double(d),
        any_value::Value::ArrayValue(array) => {
            let mut items = Vec::with_capacity(array.values.len());
            for item in array.values {
                match value(item) {
                    // Arrays of arrays have no place in Jaeger's or Elasticsearch's model
                    // of a tag; they keep their content as JSON text.
                    Some(nested @ Value::Array(_)) => {
                        items.push(Value::Str(json_text(|out| write_json_value(out, &nested))))
                    }
                    Some(item) => items.push(item),
                    None => {}
                }
            }
            Value::Array(items)
        }
        // A map becomes its JSON text, as the OpenTelemetry Collector's Jaeger translator
        // writes it (pkg/translator/jaeger): one tag, searchable by its text.
        any_value::Value::KvlistValue(list) => {
            Value::Str(json_text(|out| write_plain_map(out, &list.values)))
        }
        // OTLP/JSON writes bytes as base64 (the proto3 JSON mapping); so does intake.
        any_value::Value::BytesValue(bytes) => Value::Str(base64_text(&bytes)),
    })
}

fn base64_text(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// JSON text written by `write`; the writers only ever produce UTF-8.
fn json_text(write: impl FnOnce(&mut Vec<u8>)) -> String {
    let mut out = Vec::new();
    write(&mut out);
    String::from_utf8(out).expect("JSON writers produce UTF-8")
}

/// A map value as JSON (intake.py `_plain_map`): each key once, at its first place, with
/// its last value, as the Python dict it is built into keeps it.
fn write_plain_map(out: &mut Vec<u8>, key_values: &[KeyValue]) {
    out.push(b'{');
    let mut first = true;
    for (index, key_value) in key_values.iter().enumerate() {
        let key = key_value.key.as_str();
        if key_values[..index].iter().any(|earlier| earlier.key == key) {
            continue;
        }
        let last = key_values[index..]
            .iter()
            .rev()
            .find(|later| later.key == key);
        if !first {
            out.push(b',');
        }
        first = false;
        write_json_str(out, key);
        out.push(b':');
        write_plain(out, last.and_then(|kv| kv.value.as_ref()));
    }
    out.push(b'}');
}

/// A value inside a map as JSON (intake.py `_plain`): maps stay maps, arrays keep every
/// item (unset ones as null), bytes are base64.
fn write_plain(out: &mut Vec<u8>, value: Option<&AnyValue>) {
    match value.and_then(|v| v.value.as_ref()) {
        None => out.extend_from_slice(b"null"),
        Some(any_value::Value::KvlistValue(list)) => write_plain_map(out, &list.values),
        Some(any_value::Value::ArrayValue(array)) => {
            out.push(b'[');
            for (index, item) in array.values.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_plain(out, Some(item));
            }
            out.push(b']');
        }
        Some(any_value::Value::StringValue(s)) => write_json_str(out, s),
        Some(any_value::Value::BoolValue(b)) => {
            out.extend_from_slice(if *b { b"true" } else { b"false" })
        }
        Some(any_value::Value::IntValue(i)) => write_int(out, *i),
        Some(any_value::Value::DoubleValue(d)) => write_json_float(out, *d),
        Some(any_value::Value::BytesValue(bytes)) => write_json_str(out, &base64_text(bytes)),
    }
}

#[cfg(test)]
mod tests {
    //! Ported from tests/unit/test_collector_intake.py, plus the conversions and clock
    //! choices that file leaves to the Python code's reading.

    use super::*;
    use crate::model::test_support::{attrs, text};
    use crate::otlp::{ArrayValue, InstrumentationScope, KeyValueList, ResourceSpans, ScopeSpans};

    const TRACE_ID: [u8; 16] = [
        0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47,
        0x36,
    ];
    const SPAN_ID: [u8; 8] = [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7];
    const PARENT_ID: [u8; 8] = [0x53, 0x99, 0x5c, 0x3f, 0x42, 0xcd, 0x8a, 0xd8];
    const MS: u64 = 1_000_000;
    const T0: u64 = 1_700_000_000_000_000_000;

    fn any(value: any_value::Value) -> AnyValue {
        AnyValue { value: Some(value) }
    }

    fn string(s: &str) -> AnyValue {
        any(any_value::Value::StringValue(s.into()))
    }

    fn kv(key: &str, value: AnyValue) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(value),
        }
    }

    fn array(values: Vec<AnyValue>) -> AnyValue {
        any(any_value::Value::ArrayValue(ArrayValue { values }))
    }

    fn kvlist(values: Vec<KeyValue>) -> AnyValue {
        any(any_value::Value::KvlistValue(KeyValueList { values }))
    }

    /// collector_spans.py `otlp_span`.
    fn otlp_span(trace_id: &[u8], span_id: &[u8], parent: &[u8]) -> otlp::Span {
        otlp::Span {
            trace_id: trace_id.to_vec(),
            span_id: span_id.to_vec(),
            parent_span_id: parent.to_vec(),
            name: "op".into(),
            kind: 1,
            start_time_unix_nano: T0,
            end_time_unix_nano: T0 + 10 * MS,
            status: Some(otlp::Status {
                message: String::new(),
                code: 0,
            }),
            ..Default::default()
        }
    }

    /// collector_spans.py `resource_spans`.
    fn resource_spans(
        service: Option<&str>,
        spans: Vec<otlp::Span>,
        scope: &str,
        resource: Vec<KeyValue>,
    ) -> ResourceSpans {
        let mut attributes: Vec<KeyValue> = service
            .map(|s| kv("service.name", string(s)))
            .into_iter()
            .collect();
        attributes.extend(resource);
        ResourceSpans {
            resource: Some(otlp::Resource { attributes }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: scope.into(),
                    version: String::new(),
                }),
                spans,
            }],
        }
    }

    fn unpack_one(batch: ResourceSpans) -> Decoded {
        unpack(ExportTraceServiceRequest {
            resource_spans: vec![batch],
        })
    }

    fn only_span(batch: ResourceSpans) -> Span {
        let mut decoded = unpack_one(batch);
        assert_eq!(decoded.spans.len(), 1, "rejected: {:?}", decoded.rejected);
        decoded.spans.pop().unwrap()
    }

    #[test]
    fn ids_stay_bytes_and_resource_attributes_are_kept_beside_the_span() {
        let mut raw = otlp_span(&TRACE_ID, &SPAN_ID, &PARENT_ID);
        raw.attributes = vec![kv("http.route", string("/pay"))];
        let batch = resource_spans(
            Some("checkout"),
            vec![raw],
            "",
            vec![kv("k8s.namespace.name", string("shop"))],
        );
        let span = only_span(batch);
        assert_eq!(
            crate::model::hex(&span.trace_id),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(crate::model::hex(&span.span_id), "00f067aa0ba902b7");
        assert_eq!(span.parent_span_id, Some(PARENT_ID));
        assert_eq!(span.service(), "checkout");
        assert_eq!(
            span.resource.attributes,
            attrs(&[
                ("service.name", text("checkout")),
                ("k8s.namespace.name", text("shop"))
            ])
        );
        assert_eq!(span.attributes, attrs(&[("http.route", text("/pay"))]));
        assert_eq!(
            (span.start_ns, span.end_ns),
            (T0 as i64, (T0 + 10 * MS) as i64)
        );
        assert_eq!(span.name, "op");
    }

    #[test]
    fn spans_of_one_resource_share_one_resource() {
        let batch = resource_spans(
            Some("a"),
            vec![
                otlp_span(&TRACE_ID, &SPAN_ID, &[]),
                otlp_span(&TRACE_ID, &PARENT_ID, &[]),
            ],
            "",
            vec![],
        );
        let decoded = unpack_one(batch);
        assert_eq!(decoded.spans.len(), 2);
        assert!(Arc::ptr_eq(
            &decoded.spans[0].resource,
            &decoded.spans[1].resource
        ));
    }

    #[test]
    fn each_resource_spans_gets_its_own_resource() {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![
                resource_spans(
                    Some("a"),
                    vec![otlp_span(&TRACE_ID, &SPAN_ID, &[])],
                    "",
                    vec![],
                ),
                resource_spans(
                    Some("b"),
                    vec![otlp_span(&TRACE_ID, &PARENT_ID, &[])],
                    "",
                    vec![],
                ),
            ],
        };
        let decoded = unpack(request);
        let services: Vec<&str> = decoded.spans.iter().map(|s| s.service()).collect();
        assert_eq!(services, ["a", "b"]);
        assert!(!Arc::ptr_eq(
            &decoded.spans[0].resource,
            &decoded.spans[1].resource
        ));
    }

    #[test]
    fn span_kinds_map_by_their_otlp_numbers() {
        use SpanKind::*;
        for (number, kind) in [
            (0, Unspecified),
            (1, Internal),
            (2, Server),
            (3, Client),
            (4, Producer),
            (5, Consumer),
            (9, Unspecified),
            (-1, Unspecified),
        ] {
            let mut raw = otlp_span(&TRACE_ID, &SPAN_ID, &[]);
            raw.kind = number;
            assert_eq!(
                only_span(resource_spans(Some("a"), vec![raw], "", vec![])).kind,
                kind
            );
        }
    }

    #[test]
    fn error_status_and_its_message_are_kept() {
        let mut raw = otlp_span(&TRACE_ID, &SPAN_ID, &[]);
        raw.status = Some(otlp::Status {
            message: "card declined".into(),
            code: 2,
        });
        let span = only_span(resource_spans(Some("a"), vec![raw], "", vec![]));
        assert_eq!(
            (span.status, span.status_message.as_str()),
            (Status::Error, "card declined")
        );
    }

    #[test]
    fn statuses_map_by_their_otlp_numbers_and_a_missing_one_is_unset() {
        for (code, status) in [
            (0, Status::Unset),
            (1, Status::Ok),
            (2, Status::Error),
            (7, Status::Unset),
        ] {
            let mut raw = otlp_span(&TRACE_ID, &SPAN_ID, &[]);
            raw.status = Some(otlp::Status {
                message: String::new(),
                code,
            });
            assert_eq!(
                only_span(resource_spans(Some("a"), vec![raw], "", vec![])).status,
                status
            );
        }
        let mut raw = otlp_span(&TRACE_ID, &SPAN_ID, &[]);
        raw.status = None;
        let span = only_span(resource_spans(Some("a"), vec![raw], "", vec![]));
        assert_eq!(
            (span.status, span.status_message.as_str()),
            (Status::Unset, "")
        );
    }

    #[test]
    fn a_resource_without_service_name_gets_the_sdk_default() {
        let span = only_span(resource_spans(
            None,
            vec![otlp_span(&TRACE_ID, &SPAN_ID, &[])],
            "",
            vec![],
        ));
        assert_eq!(span.service(), UNKNOWN_SERVICE);
    }

    #[test]
    fn a_service_name_that_is_empty_or_not_text_gets_the_sdk_default() {
        for value in [string(""), any(any_value::Value::IntValue(3))] {
            let batch = resource_spans(
                None,
                vec![otlp_span(&TRACE_ID, &SPAN_ID, &[])],
                "",
                vec![kv("service.name", value)],
            );
            assert_eq!(only_span(batch).service(), UNKNOWN_SERVICE);
        }
        // A missing resource is an empty one.
        let batch = ResourceSpans {
            resource: None,
            scope_spans: vec![ScopeSpans {
                scope: None,
                spans: vec![otlp_span(&TRACE_ID, &SPAN_ID, &[])],
            }],
        };
        let span = only_span(batch);
        assert_eq!(span.service(), UNKNOWN_SERVICE);
        assert!(span.resource.attributes.is_empty());
        assert!(span.attributes.is_empty());
    }

    #[test]
    fn an_all_zero_parent_id_is_a_root() {
        let batch = resource_spans(
            Some("a"),
            vec![otlp_span(&TRACE_ID, &SPAN_ID, &[0; 8])],
            "",
            vec![],
        );
        assert_eq!(only_span(batch).parent_span_id, None);
        let batch = resource_spans(
            Some("a"),
            vec![otlp_span(&TRACE_ID, &SPAN_ID, &[])],
            "",
            vec![],
        );
        assert_eq!(only_span(batch).parent_span_id, None);
    }

    #[test]
    fn a_span_with_an_invalid_id_is_refused_alone_and_counted() {
        // Trace id, span id, parent id, the reason the span is refused.
        type Case = (&'static [u8], &'static [u8], &'static [u8], &'static str);
        let cases: [Case; 7] = [
            (&[0; 16], &SPAN_ID, &[], "invalid_trace_id"),
            (&TRACE_ID[..8], &SPAN_ID, &[], "invalid_trace_id"),
            (&[], &SPAN_ID, &[], "invalid_trace_id"),
            (&TRACE_ID, &[0; 8], &[], "invalid_span_id"),
            (&TRACE_ID, &SPAN_ID[..4], &[], "invalid_span_id"),
            (&TRACE_ID, &SPAN_ID, &[1, 2, 3], "invalid_parent_span_id"),
            (&TRACE_ID, &SPAN_ID, &[0; 4], "invalid_parent_span_id"),
        ];
        for (trace_id, span_id, parent, reason) in cases {
            let batch = resource_spans(
                Some("a"),
                vec![
                    otlp_span(trace_id, span_id, parent),
                    otlp_span(&TRACE_ID, &PARENT_ID, &[]),
                ],
                "",
                vec![],
            );
            let decoded = unpack_one(batch);
            let ids: Vec<SpanId> = decoded.spans.iter().map(|s| s.span_id).collect();
            assert_eq!(ids, [PARENT_ID], "{reason}");
            assert_eq!(decoded.rejected, [(reason, 1)]);
        }
    }

    #[test]
    fn rejections_are_counted_in_the_order_first_met() {
        let batch = resource_spans(
            Some("a"),
            vec![
                otlp_span(&TRACE_ID, &SPAN_ID, &[9]),
                otlp_span(&[0; 16], &SPAN_ID, &[]),
                otlp_span(&TRACE_ID, &SPAN_ID, &[9, 9]),
                otlp_span(&TRACE_ID, &[], &[]),
                // The trace id is checked first: a span with two bad ids counts once.
                otlp_span(&[1], &[], &[9]),
            ],
            "",
            vec![],
        );
        let decoded = unpack_one(batch);
        assert!(decoded.spans.is_empty());
        assert_eq!(
            decoded.rejected,
            [
                ("invalid_parent_span_id", 2),
                ("invalid_trace_id", 2),
                ("invalid_span_id", 1)
            ]
        );
    }

    #[test]
    fn attribute_values_of_every_otlp_type_become_plain_values() {
        let mut raw = otlp_span(&TRACE_ID, &SPAN_ID, &[]);
        raw.attributes = vec![
            kv("s", string("x")),
            kv("i", any(any_value::Value::IntValue(7))),
            kv("f", any(any_value::Value::DoubleValue(0.5))),
            kv("b", any(any_value::Value::BoolValue(true))),
            kv(
                "list",
                array(vec![string("a"), any(any_value::Value::IntValue(2))]),
            ),
            kv("map", kvlist(vec![kv("k", string("v"))])),
            kv("raw", any(any_value::Value::BytesValue(vec![0x00, 0xff]))),
            kv("empty", AnyValue::default()),
            KeyValue {
                key: "absent".into(),
                value: None,
            },
        ];
        let span = only_span(resource_spans(Some("a"), vec![raw], "", vec![]));
        assert_eq!(
            span.attributes,
            attrs(&[
                ("s", text("x")),
                ("i", Value::Int(7)),
                ("f", Value::Double(0.5)),
                ("b", Value::Bool(true)),
                ("list", Value::Array(vec![text("a"), Value::Int(2)])),
                ("map", text(r#"{"k":"v"}"#)),
                ("raw", text("AP8=")),
            ])
        );
    }

    #[test]
    fn nested_arrays_and_maps_become_json_text_as_orjson_writes_it() {
        // Expected texts from intake.py (orjson 3.13) for the same values.
        let int = |i| any(any_value::Value::IntValue(i));
        let double = |d| any(any_value::Value::DoubleValue(d));
        let nested = array(vec![
            string("a"),
            array(vec![
                int(1),
                double(1.5e-5),
                array(vec![int(2)]),
                AnyValue::default(),
            ]),
            kvlist(vec![kv("k", int(1))]),
            AnyValue::default(),
            any(any_value::Value::BytesValue(b"hi".to_vec())),
            array(vec![]),
        ]);
        let map = kvlist(vec![
            kv("s", string("q\"\n")),
            kv("dup", int(1)),
            kv(
                "list",
                array(vec![int(1), AnyValue::default(), array(vec![double(1e20)])]),
            ),
            kv(
                "map",
                kvlist(vec![kv("inner", any(any_value::Value::BoolValue(false)))]),
            ),
            KeyValue {
                key: "none".into(),
                value: None,
            },
            kv("nan", double(f64::NAN)),
            kv("bytes", any(any_value::Value::BytesValue(vec![1, 2, 3, 4]))),
            kv("dup", string("later")),
        ]);
        let mut raw = otlp_span(&TRACE_ID, &SPAN_ID, &[]);
        raw.attributes = vec![
            kv("nested", nested),
            kv("map", map),
            kv("empty_map", kvlist(vec![])),
        ];
        let span = only_span(resource_spans(Some("a"), vec![raw], "", vec![]));
        assert_eq!(
            span.attributes,
            attrs(&[
                (
                    "nested",
                    Value::Array(vec![
                        text("a"),
                        text(r#"[1,0.000015,"[2]"]"#),
                        text(r#"{"k":1}"#),
                        text("aGk="),
                        text("[]"),
                    ])
                ),
                (
                    "map",
                    text(
                        r#"{"s":"q\"\n","dup":"later","list":[1,null,[1e+20]],"map":{"inner":false},"none":null,"nan":null,"bytes":"AQIDBA=="}"#
                    )
                ),
                ("empty_map", text("{}")),
            ])
        );
    }

    #[test]
    fn a_key_given_twice_keeps_its_first_place_and_its_last_value() {
        let int = |i| any(any_value::Value::IntValue(i));
        // Short lists take the linear path, long ones the hashed one: both must agree.
        for filler in [0, 40] {
            let mut key_values = vec![kv("a", int(1)), kv("b", int(2)), kv("a", int(3))];
            key_values.extend((0..filler).map(|n| kv(&format!("k{n}"), int(n))));
            key_values.push(kv("b", AnyValue::default())); // unset: does not replace
            key_values.push(kv("b", int(4)));
            let result = attributes(key_values);
            assert_eq!(result.0.len(), 2 + filler as usize);
            assert_eq!(
                &result.0[..2],
                &attrs(&[("a", Value::Int(3)), ("b", Value::Int(4))]).0[..]
            );
        }
        let long: Vec<KeyValue> = (0..40).map(|n| kv(&format!("k{n}"), int(n))).collect();
        let result = attributes(long);
        assert_eq!(result.0.len(), 40);
        assert_eq!(result.0[39], ("k39".to_string(), Value::Int(39)));
    }

    #[test]
    fn the_instrumentation_scope_travels_as_attributes() {
        let span = only_span(resource_spans(
            Some("a"),
            vec![otlp_span(&TRACE_ID, &SPAN_ID, &[])],
            "aiohttp.server",
            vec![],
        ));
        assert_eq!(
            span.attributes.get(SCOPE_NAME),
            Some(&text("aiohttp.server"))
        );
        assert!(!span.attributes.contains(SCOPE_VERSION));
    }

    #[test]
    fn the_scope_is_set_after_the_span_attributes_and_its_version_only_with_a_name() {
        let mut raw = otlp_span(&TRACE_ID, &SPAN_ID, &[]);
        raw.attributes = vec![kv(SCOPE_NAME, string("mine")), kv("x", string("y"))];
        let mut batch = resource_spans(Some("a"), vec![raw], "", vec![]);
        batch.scope_spans[0].scope = Some(InstrumentationScope {
            name: "lib".into(),
            version: "1.2".into(),
        });
        let span = only_span(batch);
        assert_eq!(
            span.attributes,
            attrs(&[
                (SCOPE_NAME, text("lib")),
                ("x", text("y")),
                (SCOPE_VERSION, text("1.2"))
            ])
        );

        let mut batch = resource_spans(
            Some("a"),
            vec![otlp_span(&TRACE_ID, &SPAN_ID, &[])],
            "",
            vec![],
        );
        batch.scope_spans[0].scope = Some(InstrumentationScope {
            name: String::new(),
            version: "1.2".into(),
        });
        assert!(only_span(batch).attributes.is_empty());
    }

    #[test]
    fn events_and_links_are_converted() {
        let mut raw = otlp_span(&TRACE_ID, &SPAN_ID, &[]);
        raw.events = vec![otlp::Event {
            time_unix_nano: 123,
            name: "exception".into(),
            attributes: vec![kv("exception.type", string("E"))],
        }];
        raw.links = vec![
            otlp::Link {
                trace_id: TRACE_ID.to_vec(),
                span_id: PARENT_ID.to_vec(),
                attributes: vec![],
            },
            // Not validated: whatever bytes came are kept as hex.
            otlp::Link {
                trace_id: vec![0xAB],
                span_id: vec![],
                attributes: vec![kv("r", string("b"))],
            },
        ];
        let span = only_span(resource_spans(Some("a"), vec![raw], "", vec![]));
        assert_eq!(
            span.events,
            [Event {
                time_ns: 123,
                name: "exception".into(),
                attributes: attrs(&[("exception.type", text("E"))])
            }]
        );
        assert_eq!(
            span.links,
            [
                Link {
                    trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                    span_id: "53995c3f42cd8ad8".into(),
                    attributes: Attributes::default(),
                },
                Link {
                    trace_id: "ab".into(),
                    span_id: String::new(),
                    attributes: attrs(&[("r", text("b"))])
                },
            ]
        );
    }

    #[test]
    fn times_past_i64_wrap_as_a_cast() {
        let mut raw = otlp_span(&TRACE_ID, &SPAN_ID, &[]);
        raw.start_time_unix_nano = u64::MAX;
        let span = only_span(resource_spans(Some("a"), vec![raw], "", vec![]));
        assert_eq!(span.start_ns, -1);
    }

    #[test]
    fn the_clock_is_the_node_host_or_host_id_else_the_service_instance_else_the_service() {
        let clock_of = |resource: Vec<KeyValue>| {
            let batch = resource_spans(
                Some("svc"),
                vec![otlp_span(&TRACE_ID, &SPAN_ID, &[])],
                "",
                resource,
            );
            only_span(batch).resource.clock.to_string()
        };
        let all = || {
            vec![
                kv("service.instance.id", string("i-1")),
                kv("host.id", string("hid")),
                kv("host.name", string("hname")),
                kv("k8s.node.name", string("node")),
            ]
        };
        assert_eq!(clock_of(all()), "node");
        assert_eq!(clock_of(all()[..3].to_vec()), "hname");
        assert_eq!(clock_of(all()[..2].to_vec()), "hid");
        assert_eq!(clock_of(all()[..1].to_vec()), "svc/i-1");
        assert_eq!(clock_of(vec![]), "svc");
        // Empty or non-text host facts are skipped; an empty instance id still counts.
        assert_eq!(
            clock_of(vec![
                kv("k8s.node.name", string("")),
                kv("host.name", any(any_value::Value::IntValue(1))),
                kv("host.id", string("hid")),
            ]),
            "hid"
        );
        assert_eq!(
            clock_of(vec![kv("service.instance.id", string(""))]),
            "svc/"
        );
        assert_eq!(
            clock_of(vec![kv(
                "service.instance.id",
                any(any_value::Value::IntValue(1))
            )]),
            "svc"
        );
        // The service in the clock is the one intake settled on.
        let batch = resource_spans(
            None,
            vec![otlp_span(&TRACE_ID, &SPAN_ID, &[])],
            "",
            vec![kv("service.instance.id", string("i"))],
        );
        assert_eq!(&*only_span(batch).resource.clock, "unknown_service/i");
    }

    #[test]
    fn decode_request_reads_protobuf_and_refuses_what_is_not() {
        let mut raw = otlp_span(&TRACE_ID, &SPAN_ID, &PARENT_ID);
        raw.attributes = vec![kv("k", string("v"))];
        let request = ExportTraceServiceRequest {
            resource_spans: vec![resource_spans(Some("a"), vec![raw], "s", vec![])],
        };
        let decoded = decode_request(&request.encode_to_vec()).unwrap();
        assert_eq!(decoded.spans.len(), 1);
        assert_eq!(decoded.spans[0].attributes.get("k"), Some(&text("v")));
        assert!(decode_request(&[0xff, 0xff, 0xff]).is_err());
        assert!(decode_request(&[]).unwrap().spans.is_empty());
    }
}
