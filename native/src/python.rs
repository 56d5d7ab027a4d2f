//! The Python module `observer.collector._core`: `TraceCore` and the traces it encodes.
//! Heavy calls release the GIL, so the receivers' threads decode the next requests
//! meanwhile.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::PyOSError;

use crate::core::{EncodedTrace, Settings, TraceCore};
use crate::decode::decode_request;
use crate::graph::HistogramSnapshot;
use crate::grpc;
use crate::intake::{Admission, IntakeQueue};
use crate::model::Span;

/// Spans refused at decoding, by reason ("invalid_span_id", …).
type RejectedSpans = Vec<(&'static str, u64)>;

/// An encoded trace. Its fields become Python objects when read, not before: a store reads
/// some of them once, and the rest never (the embedded store no span documents,
/// Elasticsearch no record).
#[pyclass(module = "observer.collector._core", name = "EncodedTrace", frozen)]
pub struct PyEncodedTrace {
    trace: EncodedTrace,
}

#[pymethods]
impl PyEncodedTrace {
    #[getter]
    fn trace_id(&self) -> &str {
        &self.trace.trace_id
    }

    #[getter]
    fn start_ns(&self) -> i64 {
        self.trace.start_ns
    }

    #[getter]
    fn end_ns(&self) -> i64 {
        self.trace.end_ns
    }

    #[getter]
    fn late(&self) -> bool {
        self.trace.late
    }

    #[getter]
    fn already_emitted(&self) -> usize {
        self.trace.already_emitted
    }

    #[getter]
    fn span_count(&self) -> usize {
        self.trace.span_count
    }

    /// `{"completeness": …, "reasons": {…}}` as JSON.
    #[getter]
    fn verdict<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.trace.verdict)
    }

    /// The embedded store's record (`encode::trace_record`), packed; empty when per-span
    /// documents were asked for.
    #[getter]
    fn record<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.trace.record)
    }

    /// [(caller, callee, calls, errors, virtual)]
    #[getter]
    fn edges(&self) -> Vec<(&str, &str, u64, u64, bool)> {
        self.trace
            .edges
            .iter()
            .map(|e| (&*e.caller, &*e.callee, e.calls, e.errors, e.is_virtual))
            .collect()
    }

    /// [(document id, document JSON, searchable tags JSON, start_ns, duration_ns)]
    #[getter]
    #[allow(clippy::type_complexity)]
    fn span_documents<'py>(
        &self,
        py: Python<'py>,
    ) -> Vec<(&str, Bound<'py, PyBytes>, Bound<'py, PyBytes>, i64, i64)> {
        self.trace
            .span_documents
            .iter()
            .map(|d| {
                (
                    &*d.id,
                    PyBytes::new(py, &d.body),
                    PyBytes::new(py, &d.tags),
                    d.start_ns,
                    d.duration_ns,
                )
            })
            .collect()
    }

    /// [(service, first start_ns, last start_ns, longest duration_ns)]
    #[getter]
    fn services(&self) -> Vec<(&str, i64, i64, i64)> {
        self.trace
            .services
            .iter()
            .map(|s| (&*s.service, s.first_start_ns, s.last_start_ns, s.longest_ns))
            .collect()
    }

    /// [(service, operation, kind)], each once.
    #[getter]
    fn operations(&self) -> Vec<(&str, &str, &'static str)> {
        self.trace
            .operations
            .iter()
            .map(|(service, operation, kind)| (&**service, &**operation, *kind))
            .collect()
    }
}

/// The valid spans of one OTLP request, decoded by `decode_spans`, until they are queued
/// (`IntakeQueue.push`, once); with how many were refused for invalid ids and why the
/// first was, for the receiver's answer.
#[pyclass(module = "observer.collector._core", name = "DecodedSpans")]
pub struct PyDecodedSpans {
    spans: Option<Vec<Span>>,
    #[pyo3(get)]
    span_count: usize,
    #[pyo3(get)]
    rejected: u64,
    #[pyo3(get)]
    reason: String,
}

/// An OTLP `ExportTraceServiceRequest`'s bytes decoded, spans with invalid ids refused
/// one by one; ValueError when the bytes are not a request.
#[pyfunction]
fn decode_spans(py: Python<'_>, request: &[u8]) -> PyResult<PyDecodedSpans> {
    let decoded = py
        .allow_threads(|| decode_request(request))
        .map_err(|error| PyValueError::new_err(error.to_string()))?;
    Ok(PyDecodedSpans {
        span_count: decoded.spans.len(),
        rejected: decoded.rejected_spans(),
        reason: decoded.first_problem.unwrap_or_default(),
        spans: Some(decoded.spans),
    })
}

/// The bounded queue of decoded requests between the receivers and the core
/// (native/src/intake.rs). `wake_fd`: a socket the queue writes a byte to when it stops
/// being empty (it keeps a duplicate; non-blocking).
#[pyclass(module = "observer.collector._core", name = "IntakeQueue", frozen)]
pub struct PyIntakeQueue {
    queue: Arc<IntakeQueue>,
}

#[pymethods]
impl PyIntakeQueue {
    #[new]
    fn new(max_spans: usize, wake_fd: i32) -> PyResult<Self> {
        // SAFETY: the caller's descriptor is open for the call; the queue keeps a duplicate.
        let borrowed = unsafe { BorrowedFd::borrow_raw(wake_fd) };
        let wake = UnixStream::from(borrowed.try_clone_to_owned()?);
        wake.set_nonblocking(true)?;
        Ok(PyIntakeQueue {
            queue: Arc::new(IntakeQueue::new(max_spans, Some(wake))),
        })
    }

    /// Queue the spans (taken from `decoded`): "accepted", "full" or "closed".
    fn push(&self, decoded: &Bound<'_, PyDecodedSpans>) -> PyResult<&'static str> {
        let spans = decoded
            .borrow_mut()
            .spans
            .take()
            .ok_or_else(|| PyValueError::new_err("these spans were queued or added already"))?;
        Ok(match self.queue.push(spans) {
            Admission::Accepted => "accepted",
            Admission::Full => "full",
            Admission::Closed => "closed",
        })
    }

    /// Take nothing more; what is queued stays for the core.
    fn close(&self) {
        self.queue.close();
    }

    #[getter]
    fn queued_spans(&self) -> usize {
        self.queue.queued_spans()
    }

    /// Spans refused since the start (the queue full, or closed).
    #[getter]
    fn refused_spans(&self) -> u64 {
        self.queue.refused_spans()
    }
}

/// The native OTLP/gRPC server (native/src/grpc.rs), pushing into an `IntakeQueue`.
#[pyclass(module = "observer.collector._core", name = "OtlpGrpcServer")]
pub struct PyOtlpGrpcServer {
    server: grpc::Server,
}

#[pymethods]
impl PyOtlpGrpcServer {
    /// Listen on `listen` (host:port) and serve on a thread of its own; OSError when the
    /// address cannot be bound.
    #[new]
    fn new(
        listen: &str,
        max_request_bytes: usize,
        max_concurrent_requests: usize,
        queue: &PyIntakeQueue,
    ) -> PyResult<Self> {
        let server = grpc::Server::start(
            listen,
            max_request_bytes,
            max_concurrent_requests,
            Arc::clone(&queue.queue),
        )
        .map_err(|error| PyOSError::new_err(format!("cannot listen on {listen}: {error}")))?;
        Ok(PyOtlpGrpcServer { server })
    }

    #[getter]
    fn port(&self) -> u16 {
        self.server.port
    }

    /// Spans accepted since the last call.
    fn take_accepted(&self) -> u64 {
        self.server.stats.take_accepted()
    }

    /// Refusals since the last call: (reason, spans or None, detail, peer or None).
    fn take_refusals(&self) -> Vec<(&'static str, Option<u64>, String, Option<String>)> {
        self.server
            .stats
            .take_refusals()
            .into_iter()
            .map(|r| (r.reason, r.spans, r.detail, r.peer))
            .collect()
    }

    /// Stop taking calls; calls in progress get `grace` seconds. Blocks until stopped.
    fn stop(&mut self, py: Python<'_>, grace: f64) {
        let server = &mut self.server;
        py.allow_threads(|| server.stop(Duration::from_secs_f64(grace.max(0.0))));
    }
}

/// Every (service, operation, kind) of these traces once, with the latest start of a
/// trace it is in, sorted: the rows of the embedded store's operation list, made without a
/// Python object per span name.
#[pyfunction]
fn operations_of(
    traces: Vec<Bound<'_, PyEncodedTrace>>,
) -> Vec<(String, String, &'static str, i64)> {
    let mut latest: foldhash::HashMap<(&str, &str, &'static str), i64> = Default::default();
    for trace in &traces {
        let trace = &trace.get().trace;
        for (service, operation, kind) in &trace.operations {
            let start = latest
                .entry((service, operation, kind))
                .or_insert(trace.start_ns);
            *start = (*start).max(trace.start_ns);
        }
    }
    let mut rows: Vec<_> = latest
        .into_iter()
        .map(|((service, operation, kind), start)| {
            (service.to_owned(), operation.to_owned(), kind, start)
        })
        .collect();
    rows.sort_unstable();
    rows
}

fn to_list(py: Python<'_>, traces: Vec<EncodedTrace>) -> PyResult<Vec<Py<PyEncodedTrace>>> {
    traces
        .into_iter()
        .map(|trace| Py::new(py, PyEncodedTrace { trace }))
        .collect()
}

#[pyclass(module = "observer.collector._core", name = "TraceCore")]
pub struct PyTraceCore {
    core: TraceCore,
}

#[pymethods]
impl PyTraceCore {
    #[new]
    #[pyo3(signature = (*, idle_timeout, max_age, late_window, max_live_traces, max_live_spans,
        max_skew_ns, keep_errors, latency_threshold_ns, probabilistic_share, request_buckets,
        latency_buckets, max_series, span_documents))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        idle_timeout: f64,
        max_age: f64,
        late_window: f64,
        max_live_traces: usize,
        max_live_spans: usize,
        max_skew_ns: i64,
        keep_errors: bool,
        latency_threshold_ns: Option<i64>,
        probabilistic_share: f64,
        request_buckets: Vec<f64>,
        latency_buckets: Vec<f64>,
        max_series: usize,
        span_documents: bool,
    ) -> PyResult<Self> {
        let core = TraceCore::new(Settings {
            idle_timeout,
            max_age,
            late_window,
            max_live_traces,
            max_live_spans,
            max_skew_ns,
            keep_errors,
            latency_threshold_ns,
            probabilistic_share,
            request_buckets,
            latency_buckets,
            max_series,
            span_documents,
        })
        .map_err(PyValueError::new_err)?;
        Ok(PyTraceCore { core })
    }

    /// Take an OTLP `ExportTraceServiceRequest`'s bytes. Returns the spans refused by
    /// reason and the kept traces the assembly bounds forced out; ValueError when the
    /// bytes are not a request.
    fn add(
        &mut self,
        py: Python<'_>,
        request: &[u8],
        now: f64,
    ) -> PyResult<(RejectedSpans, Vec<Py<PyEncodedTrace>>)> {
        let core = &mut self.core;
        let added = py
            .allow_threads(|| core.add(request, now))
            .map_err(|error| PyValueError::new_err(error.to_string()))?;
        Ok((added.rejected, to_list(py, added.traces)?))
    }

    /// Take up to `limit` queued requests: how many were taken (0 when the queue was
    /// empty), and the kept traces the assembly bounds forced out.
    fn add_queued(
        &mut self,
        py: Python<'_>,
        queue: &PyIntakeQueue,
        now: f64,
        limit: usize,
    ) -> PyResult<(usize, Vec<Py<PyEncodedTrace>>)> {
        let core = &mut self.core;
        let intake = &queue.queue;
        let (taken, traces) = py.allow_threads(|| {
            let mut traces = Vec::new();
            let mut taken = 0;
            while taken < limit {
                let Some(spans) = intake.pop() else { break };
                taken += 1;
                traces.extend(core.add_spans(spans, now));
            }
            (taken, traces)
        });
        Ok((taken, to_list(py, traces)?))
    }

    /// Up to `limit` traces due now, processed: how many (fewer than `limit` when none
    /// is left due), and the kept ones encoded.
    fn expire(
        &mut self,
        py: Python<'_>,
        now: f64,
        limit: usize,
    ) -> PyResult<(usize, Vec<Py<PyEncodedTrace>>)> {
        let core = &mut self.core;
        let (processed, traces) = py.allow_threads(|| core.expire(now, limit));
        Ok((processed, to_list(py, traces)?))
    }

    /// Every live trace (at shutdown): processed, and the kept ones returned encoded.
    fn drain(&mut self, py: Python<'_>, now: f64) -> PyResult<Vec<Py<PyEncodedTrace>>> {
        let core = &mut self.core;
        let traces = py.allow_threads(|| core.drain(now));
        to_list(py, traces)
    }

    #[getter]
    fn live_traces(&self) -> usize {
        self.core.assembler.live_traces()
    }

    #[getter]
    fn live_spans(&self) -> usize {
        self.core.assembler.live_spans()
    }

    #[getter]
    fn retained_traces(&self) -> usize {
        self.core.assembler.retained_traces()
    }

    #[getter]
    fn retained_spans(&self) -> usize {
        self.core.assembler.retained_spans()
    }

    /// What the bounds forced since the last call, for one log line; None when nothing.
    fn take_bounds_report<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(report) = self.core.take_bounds_report() else {
            return Ok(None);
        };
        let fields = PyDict::new(py);
        fields.set_item("emitted_early_for_traces", report.emitted_early_for_traces)?;
        fields.set_item("emitted_early_for_spans", report.emitted_early_for_spans)?;
        fields.set_item("retained_forgotten", report.retained_forgotten)?;
        fields.set_item("live_traces", report.live_traces)?;
        fields.set_item("held_spans", report.held_spans)?;
        Ok(Some(fields))
    }

    /// Metric families that reached `max_series` since the last call.
    fn take_overflow_warnings(&mut self) -> Vec<&'static str> {
        self.core.graph.take_overflow_warnings()
    }

    /// Counters of assembly, verdicts and sampling, read at scrape time.
    fn counts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let assembly = self.core.assembly_counts();
        let counts = &self.core.counts;
        let result = PyDict::new(py);
        result.set_item("spans_in", assembly.spans_in)?;
        result.set_item("duplicate_spans", assembly.duplicate_spans)?;
        result.set_item("late_spans", assembly.late_spans)?;
        result.set_item("emitted", assembly.emitted.clone())?;
        result.set_item("reemitted", assembly.reemitted)?;
        result.set_item("forgotten_early", assembly.forgotten_early)?;
        result.set_item("complete", counts.complete)?;
        result.set_item("partial", counts.partial)?;
        result.set_item("partial_reasons", counts.partial_reasons.clone())?;
        result.set_item("sampled", self.core.sampler.counts())?;
        Ok(result)
    }

    /// The service-graph and RED series: (requests, server seconds, client seconds,
    /// unpaired, calls, latency, overflow); histograms as (bounds, [(labels, bucket
    /// counts, sum)]) with counts per bucket, not cumulative.
    #[allow(clippy::type_complexity)]
    fn graph_snapshot(
        &self,
    ) -> (
        Vec<([String; 3], u64, u64)>,
        (Vec<f64>, Vec<(Vec<String>, Vec<u64>, f64)>),
        (Vec<f64>, Vec<(Vec<String>, Vec<u64>, f64)>),
        Vec<([String; 3], u64)>,
        Vec<([String; 4], u64)>,
        (Vec<f64>, Vec<(Vec<String>, Vec<u64>, f64)>),
        Vec<(&'static str, u64)>,
    ) {
        let snapshot = self.core.graph_snapshot();
        let histogram = |h: HistogramSnapshot| (h.bounds, h.series);
        (
            snapshot.requests,
            histogram(snapshot.server_seconds),
            histogram(snapshot.client_seconds),
            snapshot.unpaired,
            snapshot.calls,
            histogram(snapshot.latency),
            snapshot.overflow,
        )
    }
}

/// A trace record's JSON, packed as the core packs the records it encodes.
#[pyfunction]
fn pack_record<'py>(py: Python<'py>, record: &[u8]) -> Bound<'py, PyBytes> {
    PyBytes::new(py, &py.allow_threads(|| crate::encode::pack_record(record)))
}

/// A packed trace record's JSON; ValueError when `packed` is not a packed record.
#[pyfunction]
fn unpack_record<'py>(py: Python<'py>, packed: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    let record = py
        .allow_threads(|| crate::encode::unpack_record(packed))
        .map_err(|error| PyValueError::new_err(format!("not a packed trace record: {error}")))?;
    Ok(PyBytes::new(py, &record))
}

#[pymodule]
fn _core(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<PyTraceCore>()?;
    module.add_class::<PyEncodedTrace>()?;
    module.add_class::<PyDecodedSpans>()?;
    module.add_class::<PyIntakeQueue>()?;
    module.add_class::<PyOtlpGrpcServer>()?;
    module.add_function(wrap_pyfunction!(decode_spans, module)?)?;
    module.add_function(wrap_pyfunction!(pack_record, module)?)?;
    module.add_function(wrap_pyfunction!(unpack_record, module)?)?;
    module.add_function(wrap_pyfunction!(operations_of, module)?)?;
    Ok(())
}
