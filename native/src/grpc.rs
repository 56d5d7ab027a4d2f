//! OTLP/gRPC (`TraceService/Export`) served natively for the collector.
//!
//! The collector's busiest door: in Python, gRPC's asyncio server cost about 300 µs of CPU
//! per request before a span was read (bench/README.md). Here a request is read, decoded
//! and queued on the server's own thread (a single-threaded tokio runtime running hyper's
//! HTTP/2 server), and the event loop wakes only to assemble.
//!
//! It answers as the shared Python receiver does (observer/receivers/__init__.py): an
//! undecodable request is INVALID_ARGUMENT; spans with invalid ids are refused one by one
//! and counted in `partial_success`; a request over `max_request_bytes`, compressed or
//! inflated, is RESOURCE_EXHAUSTED; a full queue is RESOURCE_EXHAUSTED and a closing one
//! UNAVAILABLE, both with `google.rpc.RetryInfo` so that OTLP clients retry; requests past
//! `max_concurrent_requests` are UNAVAILABLE with RetryInfo. Every refusal is kept for
//! Python to count and log (`take_refusals`).
//!
//! gRPC over HTTP/2 as its protocol document says (grpc/grpc `doc/PROTOCOL-HTTP2.md`):
//! one length-prefixed message each way, status in trailers, or trailers only on error.

use std::convert::Infallible;
use std::io::Read as _;
use std::net::{IpAddr, SocketAddr, TcpListener as StdTcpListener};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message as _;
use tokio::sync::watch;

use crate::decode::decode_request;
use crate::intake::{Admission, IntakeQueue};

pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// What a refusal for overload suggests to wait (`RETRY_AFTER_SECONDS` in Python).
const RETRY_AFTER_SECONDS: i64 = 1;

/// gRPC status codes used here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    Ok = 0,
    InvalidArgument = 3,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
}

/// A refused request (or refused spans), for Python's intake counts and log: `reason` is
/// a `Refusal` value of observer/receivers/__init__.py.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    pub reason: &'static str,
    pub spans: Option<u64>,
    pub detail: String,
    pub peer: Option<String>,
}

#[derive(Default)]
pub struct Stats {
    accepted_spans: AtomicU64,
    refusals: Mutex<Vec<Refusal>>,
}

impl Stats {
    fn refuse(&self, reason: &'static str, spans: Option<u64>, detail: &str, peer: Option<IpAddr>) {
        self.refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Refusal {
                reason,
                spans,
                detail: detail.to_owned(),
                peer: peer.map(|ip| ip.to_string()),
            });
    }

    /// Spans accepted since the last call.
    pub fn take_accepted(&self) -> u64 {
        self.accepted_spans.swap(0, Ordering::Relaxed)
    }

    /// Refusals since the last call, oldest first.
    pub fn take_refusals(&self) -> Vec<Refusal> {
        std::mem::take(&mut *self.refusals.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

struct Exporter {
    queue: Arc<IntakeQueue>,
    stats: Arc<Stats>,
    max_request_bytes: usize,
    max_concurrent_requests: usize,
    active: AtomicUsize,
}

pub struct Server {
    pub port: u16,
    pub stats: Arc<Stats>,
    stop: watch::Sender<Option<Duration>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Listen on `listen` (host:port; port 0 picks one) and serve on a thread of its own.
    pub fn start(
        listen: &str,
        max_request_bytes: usize,
        max_concurrent_requests: usize,
        queue: Arc<IntakeQueue>,
    ) -> std::io::Result<Server> {
        let listener = StdTcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let stats = Arc::new(Stats::default());
        let exporter = Arc::new(Exporter {
            queue,
            stats: Arc::clone(&stats),
            max_request_bytes,
            max_concurrent_requests,
            active: AtomicUsize::new(0),
        });
        let (stop, stopped) = watch::channel(None);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("otlp-grpc".to_owned())
            .spawn(move || runtime.block_on(serve(listener, exporter, stopped)))?;
        Ok(Server {
            port,
            stats,
            stop,
            thread: Some(thread),
        })
    }

    /// Stop taking connections; calls in progress get `grace` to finish.
    pub fn stop(&mut self, grace: Duration) {
        let _ = self.stop.send(Some(grace));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop(Duration::ZERO);
    }
}

async fn serve(
    listener: StdTcpListener,
    exporter: Arc<Exporter>,
    mut stopped: watch::Receiver<Option<Duration>>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    let mut connections = tokio::task::JoinSet::new();
    let grace = loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else {
                    // Out of descriptors, most likely: let connections close before trying
                    // again rather than spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                connections.spawn(connection(stream, peer, Arc::clone(&exporter), stopped.clone()));
            }
            _ = stopped.changed() => break stopped.borrow().unwrap_or_default(),
        }
    };
    drop(listener);
    let finished = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, finished).await.is_err() {
        connections.abort_all();
    }
}

async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    exporter: Arc<Exporter>,
    mut stopped: watch::Receiver<Option<Duration>>,
) {
    let service = service_fn(move |request| {
        let exporter = Arc::clone(&exporter);
        async move { Ok::<_, Infallible>(exporter.call(request, peer.ip()).await) }
    });
    let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = stopped.changed() => {
            // Calls in progress finish; the server waits for them up to its grace.
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// Decrements the count of calls in progress when a call ends, however it ends.
struct Active<'a>(&'a AtomicUsize);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Exporter {
    async fn call(&self, request: Request<Incoming>, peer: IpAddr) -> Response<GrpcBody> {
        if request.uri().path() != EXPORT_PATH {
            let message = format!("unknown method {}", request.uri().path());
            return status_response(Code::Unimplemented, &message, false);
        }
        let before = self.active.fetch_add(1, Ordering::Relaxed);
        let _active = Active(&self.active);
        if before >= self.max_concurrent_requests {
            let message = "too many requests at once; retry later";
            self.stats
                .refuse("too_many_requests", None, message, Some(peer));
            return status_response(Code::Unavailable, message, true);
        }
        let encoding = request
            .headers()
            .get("grpc-encoding")
            .and_then(|value| value.to_str().ok())
            .unwrap_or("identity")
            .to_owned();
        let message =
            match read_message(request.into_body(), &encoding, self.max_request_bytes).await {
                Ok(message) => message,
                Err((code, detail)) => {
                    let reason = match code {
                        Code::ResourceExhausted => "too_large",
                        Code::Unimplemented => "unsupported_media_type",
                        _ => "bad_payload",
                    };
                    self.stats.refuse(reason, None, &detail, Some(peer));
                    return status_response(code, &detail, false);
                }
            };
        self.export(&message, peer)
    }

    fn export(&self, message: &[u8], peer: IpAddr) -> Response<GrpcBody> {
        let decoded = match decode_request(message) {
            Ok(decoded) => decoded,
            Err(error) => {
                let detail = format!("not a protobuf ExportTraceServiceRequest: {error}");
                self.stats.refuse("bad_payload", None, &detail, Some(peer));
                return status_response(Code::InvalidArgument, &detail, false);
            }
        };
        let rejected = decoded.rejected_spans();
        let reason = decoded.first_problem.unwrap_or_default();
        if rejected > 0 {
            self.stats
                .refuse("invalid_id", Some(rejected), &reason, Some(peer));
        }
        let spans = decoded.spans.len() as u64;
        if spans > 0 {
            match self.queue.push(decoded.spans) {
                Admission::Accepted => {
                    self.stats
                        .accepted_spans
                        .fetch_add(spans, Ordering::Relaxed);
                }
                Admission::Full => {
                    self.stats.refuse("queue_full", Some(spans), "", Some(peer));
                    let message = "the span queue is full; retry later";
                    return status_response(Code::ResourceExhausted, message, true);
                }
                Admission::Closed => {
                    self.stats
                        .refuse("unavailable", Some(spans), "", Some(peer));
                    let message = "no collector to send spans to now; retry later";
                    return status_response(Code::Unavailable, message, true);
                }
            }
        }
        let mut answer = ExportTraceServiceResponse::default();
        if rejected > 0 {
            answer.partial_success = Some(ExportTracePartialSuccess {
                rejected_spans: rejected as i64,
                error_message: reason,
            });
        }
        message_response(&answer.encode_to_vec())
    }
}

/// The request's one message, inflated when compressed; Err with the status to answer.
async fn read_message(
    mut body: Incoming,
    encoding: &str,
    limit: usize,
) -> Result<Vec<u8>, (Code, String)> {
    let too_large = || {
        (
            Code::ResourceExhausted,
            format!("the request is over the limit of {limit} bytes"),
        )
    };
    let mut framed = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|error| (Code::Internal, format!("reading the request: {error}")))?;
        if let Ok(data) = frame.into_data() {
            if framed.len() + data.len() > limit + 5 {
                return Err(too_large());
            }
            framed.extend_from_slice(&data);
        }
    }
    let (compressed, message) = unframe(&framed)?;
    if !compressed {
        return Ok(message.to_vec());
    }
    let mut inflated = Vec::new();
    let read = match encoding {
        "gzip" => flate2::read::GzDecoder::new(message)
            .take(limit as u64 + 1)
            .read_to_end(&mut inflated),
        "deflate" => flate2::read::ZlibDecoder::new(message)
            .take(limit as u64 + 1)
            .read_to_end(&mut inflated),
        other => {
            return Err((
                Code::Unimplemented,
                format!("grpc-encoding {other:?} is not supported; use gzip, deflate or none"),
            ))
        }
    };
    read.map_err(|error| (Code::Internal, format!("not valid {encoding}: {error}")))?;
    if inflated.len() > limit {
        return Err(too_large());
    }
    Ok(inflated)
}

/// A gRPC length-prefixed message: (compressed, message).
fn unframe(framed: &[u8]) -> Result<(bool, &[u8]), (Code, String)> {
    let malformed = |why: &str| (Code::Internal, format!("malformed gRPC message: {why}"));
    let [flag, a, b, c, d, rest @ ..] = framed else {
        return Err(malformed("shorter than its prefix"));
    };
    let length = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
    if rest.len() != length {
        return Err(malformed("its length does not match the prefix"));
    }
    match flag {
        0 => Ok((false, rest)),
        1 => Ok((true, rest)),
        _ => Err(malformed("unknown compressed flag")),
    }
}

fn message_response(message: &[u8]) -> Response<GrpcBody> {
    let mut framed = Vec::with_capacity(message.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    grpc_response(GrpcBody {
        data: Some(Bytes::from(framed)),
        trailers: Some(trailers),
    })
}

/// A Trailers-Only answer: the status in the response headers, no message.
fn status_response(code: Code, message: &str, retry: bool) -> Response<GrpcBody> {
    let mut response = grpc_response(GrpcBody::default());
    let headers = response.headers_mut();
    headers.insert("grpc-status", HeaderValue::from(code as i32));
    if let Ok(value) = HeaderValue::from_str(&percent_encode(message)) {
        headers.insert("grpc-message", value);
    }
    if retry {
        if let Ok(value) = HeaderValue::from_str(&retry_details(code, message)) {
            headers.insert("grpc-status-details-bin", value);
        }
    }
    response
}

fn grpc_response(body: GrpcBody) -> Response<GrpcBody> {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/grpc"));
    headers.insert(
        "grpc-accept-encoding",
        HeaderValue::from_static("gzip,deflate"),
    );
    response
}

/// grpc-message's encoding: bytes outside printable ASCII, and '%', as %XX.
fn percent_encode(message: &str) -> String {
    let mut encoded = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// `google.rpc.Status` with a `RetryInfo` detail, base64 as grpc-status-details-bin wants:
/// what makes RESOURCE_EXHAUSTED retryable for OTLP clients ("OTLP/gRPC Throttling").
fn retry_details(code: Code, message: &str) -> String {
    let retry = RetryInfo {
        retry_delay: Some(ProtoDuration {
            seconds: RETRY_AFTER_SECONDS,
            nanos: 0,
        }),
    };
    let status = RpcStatus {
        code: code as i32,
        message: message.to_owned(),
        details: vec![ProtoAny {
            type_url: "type.googleapis.com/google.rpc.RetryInfo".to_owned(),
            value: retry.encode_to_vec(),
        }],
    };
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(status.encode_to_vec())
}

/// One data frame, then the trailers (either may be absent).
#[derive(Default)]
pub struct GrpcBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for GrpcBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(data) = this.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}

#[derive(Clone, PartialEq, prost::Message)]
struct ExportTraceServiceResponse {
    #[prost(message, optional, tag = "1")]
    partial_success: Option<ExportTracePartialSuccess>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ExportTracePartialSuccess {
    #[prost(int64, tag = "1")]
    rejected_spans: i64,
    #[prost(string, tag = "2")]
    error_message: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<ProtoAny>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ProtoAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<ProtoDuration>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ProtoDuration {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_unframed_by_its_prefix() {
        assert_eq!(unframe(&[0, 0, 0, 0, 2, 7, 8]), Ok((false, &[7u8, 8][..])));
        assert_eq!(unframe(&[1, 0, 0, 0, 0]), Ok((true, &[][..])));
        assert_eq!(unframe(&[0, 0, 0, 0, 3, 7]).unwrap_err().0, Code::Internal);
        assert_eq!(unframe(&[0, 0]).unwrap_err().0, Code::Internal);
        assert_eq!(unframe(&[2, 0, 0, 0, 0]).unwrap_err().0, Code::Internal);
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(percent_encode("50% full: é"), "50%25 full: %C3%A9");
    }

    #[test]
    fn retry_details_decode_as_a_status_with_retry_info() {
        let encoded = retry_details(Code::ResourceExhausted, "full");
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(encoded)
            .unwrap();
        let status = RpcStatus::decode(&bytes[..]).unwrap();
        assert_eq!((status.code, status.message.as_str()), (8, "full"));
        let retry = RetryInfo::decode(&status.details[0].value[..]).unwrap();
        assert_eq!(retry.retry_delay.unwrap().seconds, 1);
    }
}
