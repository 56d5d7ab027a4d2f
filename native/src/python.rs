//! The Python module `observer.collector._core`: `TraceCore` and the traces it encodes.
//! Heavy calls release the GIL, so the receivers' threads decode the next requests
//! meanwhile.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::core::{EncodedTrace, Settings, TraceCore};
use crate::graph::HistogramSnapshot;

/// Spans refused at decoding, by reason ("invalid_span_id", …).
type RejectedSpans = Vec<(&'static str, u64)>;

#[pyclass(module = "observer.collector._core", name = "EncodedTrace", frozen)]
pub struct PyEncodedTrace {
    #[pyo3(get)]
    trace_id: String,
    #[pyo3(get)]
    start_ns: i64,
    #[pyo3(get)]
    end_ns: i64,
    #[pyo3(get)]
    late: bool,
    #[pyo3(get)]
    already_emitted: usize,
    #[pyo3(get)]
    span_count: usize,
    /// `{"completeness": …, "reasons": {…}}` as JSON.
    #[pyo3(get)]
    verdict: Py<PyBytes>,
    /// [(caller, callee, calls, errors, virtual)]
    #[pyo3(get)]
    edges: Py<PyList>,
    /// The span documents as one JSON array; empty when per-span documents were asked for.
    #[pyo3(get)]
    spans: Py<PyBytes>,
    /// [(document id, document JSON, searchable tags JSON, start_ns, duration_ns)]
    #[pyo3(get)]
    span_documents: Py<PyList>,
    /// [(service, first start_ns, last start_ns, longest duration_ns)]
    #[pyo3(get)]
    services: Py<PyList>,
    /// [(service, operation, kind)], each once.
    #[pyo3(get)]
    operations: Py<PyList>,
}

fn to_python(py: Python<'_>, encoded: EncodedTrace) -> PyResult<PyEncodedTrace> {
    let edges = PyList::empty(py);
    for edge in encoded.edges {
        edges.append((
            edge.caller,
            edge.callee,
            edge.calls,
            edge.errors,
            edge.is_virtual,
        ))?;
    }
    let documents = PyList::empty(py);
    for document in encoded.span_documents {
        documents.append((
            document.id,
            PyBytes::new(py, &document.body),
            PyBytes::new(py, &document.tags),
            document.start_ns,
            document.duration_ns,
        ))?;
    }
    let services = PyList::empty(py);
    for summary in encoded.services {
        services.append((
            summary.service,
            summary.first_start_ns,
            summary.last_start_ns,
            summary.longest_ns,
        ))?;
    }
    let operations = PyList::empty(py);
    for operation in encoded.operations {
        operations.append(operation)?;
    }
    Ok(PyEncodedTrace {
        trace_id: encoded.trace_id,
        start_ns: encoded.start_ns,
        end_ns: encoded.end_ns,
        late: encoded.late,
        already_emitted: encoded.already_emitted,
        span_count: encoded.span_count,
        verdict: PyBytes::new(py, &encoded.verdict).unbind(),
        edges: edges.unbind(),
        spans: PyBytes::new(py, &encoded.spans).unbind(),
        span_documents: documents.unbind(),
        services: services.unbind(),
        operations: operations.unbind(),
    })
}

fn to_list(py: Python<'_>, traces: Vec<EncodedTrace>) -> PyResult<Vec<PyEncodedTrace>> {
    traces
        .into_iter()
        .map(|trace| to_python(py, trace))
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
    ) -> PyResult<(RejectedSpans, Vec<PyEncodedTrace>)> {
        let core = &mut self.core;
        let added = py
            .allow_threads(|| core.add(request, now))
            .map_err(|error| PyValueError::new_err(error.to_string()))?;
        Ok((added.rejected, to_list(py, added.traces)?))
    }

    /// Up to `limit` traces due now, processed: how many (fewer than `limit` when none
    /// is left due), and the kept ones encoded.
    fn expire(
        &mut self,
        py: Python<'_>,
        now: f64,
        limit: usize,
    ) -> PyResult<(usize, Vec<PyEncodedTrace>)> {
        let core = &mut self.core;
        let (processed, traces) = py.allow_threads(|| core.expire(now, limit));
        Ok((processed, to_list(py, traces)?))
    }

    /// Every live trace (at shutdown): processed, and the kept ones returned encoded.
    fn drain(&mut self, py: Python<'_>, now: f64) -> PyResult<Vec<PyEncodedTrace>> {
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

#[pymodule]
fn _core(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<PyTraceCore>()?;
    module.add_class::<PyEncodedTrace>()?;
    Ok(())
}
