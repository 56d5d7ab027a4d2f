//! observer's trace core: the collector's trace path from OTLP bytes to encoded,
//! sampled traces, without a Python object per span. `observer/collector/pipeline.py`
//! drives it; `docs/architecture.md` says why it is native.

pub mod assemble;
pub mod core;
pub mod decode;
pub mod encode;
pub mod graph;
pub mod model;
pub mod otlp;
#[cfg(feature = "python")]
mod python;
pub mod reconstruct;
pub mod sample;
