//! Tail sampling (port of observer/collector/sample.py, whose docstring gives the
//! policies and why the probabilistic one is OpenTelemetry's consistent sampling).

use crate::model::Trace;

pub const ERROR: &str = "error";
pub const LATENCY: &str = "latency";
pub const PROBABILISTIC: &str = "probabilistic";
pub const KEPT: &str = "kept";
pub const DROPPED: &str = "dropped";

/// The rightmost bits of a trace id that are its randomness R.
const RANDOM_BITS: u32 = 56;

#[derive(Debug)]
pub struct Sampler {
    pub keep_errors: bool,
    /// None switches the latency policy off.
    pub latency_threshold_ns: Option<i64>,
    /// T: a trace is kept by the share when its randomness R ≥ T.
    pub rejection_threshold: u64,
    // Decisions by (decision, policy); a field each, as only these four are ever made.
    kept_error: u64,
    kept_latency: u64,
    kept_probabilistic: u64,
    dropped_probabilistic: u64,
}

impl Sampler {
    /// Err when the share is outside [0, 1].
    pub fn new(
        keep_errors: bool,
        latency_threshold_ns: Option<i64>,
        probabilistic_share: f64,
    ) -> Result<Sampler, String> {
        // Written so NaN fails too, as it does in Python.
        if !(0.0..=1.0).contains(&probabilistic_share) {
            return Err(format!(
                "probabilistic_share must be within [0, 1]: {probabilistic_share:?}"
            ));
        }
        // Python's round() rounds ties to even; the product is within [0, 2⁵⁶], so exact
        // in u64.
        let rejection_threshold =
            ((1.0 - probabilistic_share) * (1u64 << RANDOM_BITS) as f64).round_ties_even() as u64;
        Ok(Sampler {
            keep_errors,
            latency_threshold_ns,
            rejection_threshold,
            kept_error: 0,
            kept_latency: 0,
            kept_probabilistic: 0,
            dropped_probabilistic: 0,
        })
    }

    /// The first policy that keeps the trace, or None when it is dropped; counted.
    pub fn sample(&mut self, trace: &Trace) -> Option<&'static str> {
        let policy = self.keeping_policy(trace);
        *match policy {
            Some(ERROR) => &mut self.kept_error,
            Some(LATENCY) => &mut self.kept_latency,
            Some(_) => &mut self.kept_probabilistic,
            None => &mut self.dropped_probabilistic,
        } += 1;
        policy
    }

    /// The first policy that keeps the trace, or None when it is dropped; not counted.
    pub fn keeping_policy(&self, trace: &Trace) -> Option<&'static str> {
        let spans = &trace.spans;
        if self.keep_errors && spans.iter().any(|span| span.is_error()) {
            return Some(ERROR);
        }
        if let Some(threshold) = self.latency_threshold_ns {
            if !spans.is_empty() {
                let (first_start, last_end) = spans
                    .iter()
                    .fold((i64::MAX, i64::MIN), |(start, end), span| {
                        (start.min(span.start_ns), end.max(span.end_ns))
                    });
                // Python's integers do not overflow; nonsense timestamps must not wrap here.
                if i128::from(last_end) - i128::from(first_start) > i128::from(threshold) {
                    return Some(LATENCY);
                }
            }
        }
        if randomness(&trace.trace_id) >= self.rejection_threshold {
            return Some(PROBABILISTIC);
        }
        None
    }

    /// (decision "kept"|"dropped", policy) → traces, sorted; only decisions made.
    pub fn counts(&self) -> Vec<((&'static str, &'static str), u64)> {
        // Already in sorted order: "dropped" < "kept", "error" < "latency" < "probabilistic".
        [
            ((DROPPED, PROBABILISTIC), self.dropped_probabilistic),
            ((KEPT, ERROR), self.kept_error),
            ((KEPT, LATENCY), self.kept_latency),
            ((KEPT, PROBABILISTIC), self.kept_probabilistic),
        ]
        .into_iter()
        .filter(|&(_, traces)| traces > 0)
        .collect()
    }
}

/// R: the trace id's rightmost 56 bits (its last 7 bytes, big-endian).
fn randomness(trace_id: &[u8; 16]) -> u64 {
    let mut bytes = [0u8; 8];
    bytes[1..].copy_from_slice(&trace_id[16 - 7..]);
    u64::from_be_bytes(bytes)
}

#[cfg(test)]
mod tests {
    //! tests/unit/test_collector_sample.py, test for test.
    use std::collections::HashSet;
    use std::sync::Arc;

    use super::*;
    use crate::model::{Attributes, Resource, Span, SpanKind, Status};

    const MS: i64 = 1_000_000;
    const T0: i64 = 1_700_000_000_000_000_000;

    fn span(trace_id: [u8; 16], id: u8, start_ms: i64, end_ms: i64, error: bool) -> Span {
        Span {
            trace_id,
            span_id: [0, 0, 0, 0, 0, 0, 0, id],
            parent_span_id: (id > 1).then_some([0, 0, 0, 0, 0, 0, 0, 1]),
            name: "op".into(),
            kind: SpanKind::Internal,
            start_ns: T0 + start_ms * MS,
            end_ns: T0 + end_ms * MS,
            status: if error { Status::Error } else { Status::Unset },
            status_message: String::new(),
            attributes: Attributes::default(),
            resource: Arc::new(Resource {
                attributes: Attributes::default(),
                service: "svc".into(),
                clock: "svc".into(),
            }),
            events: Vec::new(),
            links: Vec::new(),
            skew_adjustment_ns: 0,
        }
    }

    fn trace(trace_id: [u8; 16], error: bool, duration_ms: i64) -> Trace {
        Trace {
            trace_id,
            spans: vec![
                span(trace_id, 1, 0, duration_ms, false),
                span(trace_id, 2, 1, 2, error),
            ],
            ..Trace::default()
        }
    }

    fn ordinary(trace_id: [u8; 16]) -> Trace {
        trace(trace_id, false, 10)
    }

    /// Random 128-bit ids (splitmix64: Python's Mersenne Twister is not worth porting for
    /// ids that only need to be random).
    fn random_ids(count: usize, seed: u64) -> Vec<[u8; 16]> {
        let mut state = seed;
        let mut next = move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        (0..count)
            .map(|_| ((u128::from(next()) << 64) | u128::from(next())).to_be_bytes())
            .collect()
    }

    /// Python's `Sampler.sample` over many traces: the kept ones, in order.
    fn kept(sampler: &mut Sampler, traces: impl IntoIterator<Item = Trace>) -> Vec<[u8; 16]> {
        traces
            .into_iter()
            .filter(|trace| sampler.sample(trace).is_some())
            .map(|trace| trace.trace_id)
            .collect()
    }

    #[test]
    fn every_trace_with_an_error_is_kept_whatever_the_share() {
        let mut sampler = Sampler::new(true, None, 0.0).unwrap();
        let ids = random_ids(50, 7);
        assert_eq!(
            kept(&mut sampler, ids.iter().map(|&id| trace(id, true, 10))),
            ids
        );
        assert_eq!(sampler.counts(), [((KEPT, ERROR), 50)]);
    }

    #[test]
    fn every_trace_slower_than_the_threshold_is_kept() {
        let mut sampler = Sampler::new(true, Some(500 * MS), 0.0).unwrap();
        let slow = trace([0xaa; 16], false, 501);
        let fast = trace([0xbb; 16], false, 499);
        assert_eq!(kept(&mut sampler, [slow, fast]), [[0xaa; 16]]);
        assert_eq!(
            sampler.counts(),
            [((DROPPED, PROBABILISTIC), 1), ((KEPT, LATENCY), 1)]
        );
    }

    #[test]
    fn the_share_of_ordinary_traces_kept_is_close_to_the_configured_share() {
        let mut sampler = Sampler::new(true, None, 0.25).unwrap();
        let count = kept(
            &mut sampler,
            random_ids(20_000, 7).into_iter().map(ordinary),
        )
        .len();
        assert!((count as f64 / 20_000.0 - 0.25).abs() < 0.02, "{count}");
    }

    #[test]
    fn the_probabilistic_decision_depends_on_the_trace_id_alone() {
        let ids = random_ids(500, 7);
        let mut first = Sampler::new(false, None, 0.3).unwrap();
        let mut second = Sampler::new(false, None, 0.3).unwrap();
        let mut backwards = kept(&mut second, ids.iter().rev().copied().map(ordinary));
        backwards.reverse();
        assert_eq!(
            kept(&mut first, ids.iter().copied().map(ordinary)),
            backwards
        );
    }

    #[test]
    fn a_trace_kept_at_a_smaller_share_is_kept_at_a_larger_one() {
        let ids = random_ids(2_000, 7);
        let mut small = Sampler::new(false, None, 0.1).unwrap();
        let mut large = Sampler::new(false, None, 0.4).unwrap();
        let kept_small: HashSet<_> = kept(&mut small, ids.iter().copied().map(ordinary))
            .into_iter()
            .collect();
        let kept_large: HashSet<_> = kept(&mut large, ids.iter().copied().map(ordinary))
            .into_iter()
            .collect();
        assert!(!kept_small.is_empty());
        assert!(kept_small.is_subset(&kept_large) && kept_small != kept_large);
    }

    #[test]
    fn a_share_of_one_keeps_everything_and_zero_keeps_only_what_policies_keep() {
        let ids = random_ids(200, 7);
        let mut everything = Sampler::new(false, None, 1.0).unwrap();
        let mut nothing = Sampler::new(false, None, 0.0).unwrap();
        assert_eq!(
            kept(&mut everything, ids.iter().copied().map(ordinary)).len(),
            200
        );
        assert_eq!(
            kept(&mut nothing, ids.iter().copied().map(ordinary)),
            Vec::<[u8; 16]>::new()
        );
        assert_eq!(nothing.counts(), [((DROPPED, PROBABILISTIC), 200)]);
    }

    #[test]
    fn the_threshold_and_randomness_are_pythons() {
        // round((1 - 0.25) * (1 << 56)) in Python; R is int(trace_id[-14:], 16).
        let sampler = Sampler::new(false, None, 0.25).unwrap();
        assert_eq!(sampler.rejection_threshold, 54_043_195_528_445_952);
        let mut id = [0xff; 16];
        id[9..].copy_from_slice(&54_043_195_528_445_952u64.to_be_bytes()[1..]);
        assert_eq!(sampler.keeping_policy(&ordinary(id)), Some(PROBABILISTIC));
        id[9..].copy_from_slice(&54_043_195_528_445_951u64.to_be_bytes()[1..]);
        assert_eq!(sampler.keeping_policy(&ordinary(id)), None);
    }

    #[test]
    fn errors_are_not_kept_when_the_policy_is_off_and_an_empty_trace_has_no_latency() {
        let sampler = Sampler::new(false, Some(0), 0.0).unwrap();
        assert_eq!(
            sampler.keeping_policy(&trace([0; 16], true, 0)),
            Some(LATENCY)
        );
        assert_eq!(sampler.keeping_policy(&Trace::default()), None);
    }

    #[test]
    fn a_share_outside_zero_to_one_is_refused() {
        for share in [-0.1, 1.5, f64::NAN] {
            assert!(Sampler::new(true, None, share).is_err());
        }
    }
}
