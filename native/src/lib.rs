//! observer's trace core: the collector's trace path from OTLP bytes to encoded,
//! sampled traces, without a Python object per span. `observer/collector/pipeline.py`
//! drives it; `docs/architecture.md` says why it is native.

pub mod assemble;
pub mod core;
pub mod decode;
pub mod encode;
pub mod graph;
pub mod grpc;
pub mod intake;
pub mod model;
pub mod otlp;
#[cfg(feature = "python")]
mod python;
pub mod reconstruct;
pub mod sample;

// The core allocates many small strings (attribute keys and values) per span and frees
// them when a trace is emitted; glibc's malloc spent a third of the core's time on that.
// Built without transparent huge pages (feature no_thp): zeroing 2 MiB pages on first
// touch cost more system time than mimalloc saved.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
