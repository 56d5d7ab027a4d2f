//! The bounded queue between the receivers and the trace core's worker.
//!
//! Receivers push decoded requests (the native OTLP/gRPC server from its own thread, the
//! Python receivers from the event loop) and the pipeline's worker pops them. The bound is
//! in spans: a request that does not fit is refused, and the receiver answers the
//! protocol's retryable "slow down" so that the sender keeps the spans. An empty queue
//! takes any request, so that one larger than the bound is not refused forever.
//!
//! The worker sleeps on the event loop; a push that makes the queue non-empty writes a
//! byte to `wake`, whose other end the loop watches (one byte per wake-up, not per push).

use std::collections::VecDeque;
use std::io::Write as _;
use std::os::unix::net::UnixStream;
use std::sync::Mutex;

use crate::model::Span;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Accepted,
    /// No room: retry later.
    Full,
    /// Closing: nothing more is taken.
    Closed,
}

struct Queue {
    batches: VecDeque<Vec<Span>>,
    queued_spans: usize,
    closed: bool,
    /// Spans refused since the start, full or closed.
    refused_spans: u64,
}

pub struct IntakeQueue {
    queue: Mutex<Queue>,
    max_spans: usize,
    wake: Option<UnixStream>,
}

impl IntakeQueue {
    /// A queue of at most `max_spans` spans; `wake` (non-blocking) gets a byte when the
    /// queue stops being empty.
    pub fn new(max_spans: usize, wake: Option<UnixStream>) -> IntakeQueue {
        IntakeQueue {
            queue: Mutex::new(Queue {
                batches: VecDeque::new(),
                queued_spans: 0,
                closed: false,
                refused_spans: 0,
            }),
            max_spans,
            wake,
        }
    }

    pub fn push(&self, spans: Vec<Span>) -> Admission {
        let count = spans.len();
        let was_empty = {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            if queue.closed {
                queue.refused_spans += count as u64;
                return Admission::Closed;
            }
            if queue.queued_spans > 0 && queue.queued_spans + count > self.max_spans {
                queue.refused_spans += count as u64;
                return Admission::Full;
            }
            queue.queued_spans += count;
            queue.batches.push_back(spans);
            queue.batches.len() == 1
        };
        if was_empty {
            if let Some(mut wake) = self.wake.as_ref() {
                // A full socket buffer means the loop has wake-ups unread already.
                let _ = wake.write(&[1]);
            }
        }
        Admission::Accepted
    }

    /// The oldest request's spans, or None when the queue is empty.
    pub fn pop(&self) -> Option<Vec<Span>> {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let spans = queue.batches.pop_front()?;
        queue.queued_spans -= spans.len();
        Some(spans)
    }

    /// Take nothing more; what is queued can still be popped.
    pub fn close(&self) {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
    }

    pub fn refused_spans(&self) -> u64 {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .refused_spans
    }

    pub fn queued_spans(&self) -> usize {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .queued_spans
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode_request;
    use std::io::Read as _;

    fn spans(count: usize) -> Vec<Span> {
        let mut request = Vec::new();
        for index in 0..count {
            let mut span = vec![0x0a, 16];
            span.extend([1u8; 16]);
            span.extend([0x12, 8]);
            span.extend((index as u64 + 1).to_be_bytes());
            // ResourceSpans { scope_spans { spans [span] } }
            let scope = [&[0x12, span.len() as u8][..], &span].concat();
            let resource = [&[0x12, scope.len() as u8][..], &scope].concat();
            request.extend([0x0a, resource.len() as u8]);
            request.extend(resource);
        }
        decode_request(&request).unwrap().spans
    }

    #[test]
    fn refuses_past_the_bound_but_an_empty_queue_takes_anything() {
        let queue = IntakeQueue::new(3, None);
        assert_eq!(queue.push(spans(5)), Admission::Accepted);
        assert_eq!(queue.push(spans(1)), Admission::Full);
        assert_eq!(queue.pop().map(|s| s.len()), Some(5));
        assert_eq!(queue.push(spans(2)), Admission::Accepted);
        assert_eq!(queue.push(spans(1)), Admission::Accepted);
        assert_eq!(queue.push(spans(1)), Admission::Full);
        assert_eq!(queue.queued_spans(), 3);
        queue.close();
        assert_eq!(queue.push(spans(1)), Admission::Closed);
        assert_eq!(queue.refused_spans(), 3);
        assert_eq!(queue.pop().map(|s| s.len()), Some(2));
        assert_eq!(queue.pop().map(|s| s.len()), Some(1));
        assert!(queue.pop().is_none());
    }

    #[test]
    fn wakes_once_when_the_queue_stops_being_empty() {
        let (sender, mut receiver) = UnixStream::pair().unwrap();
        sender.set_nonblocking(true).unwrap();
        receiver.set_nonblocking(true).unwrap();
        let queue = IntakeQueue::new(100, Some(sender));
        queue.push(spans(1));
        queue.push(spans(1));
        let mut buffer = [0u8; 8];
        assert_eq!(receiver.read(&mut buffer).unwrap(), 1);
        queue.pop();
        queue.pop();
        queue.push(spans(1));
        assert_eq!(receiver.read(&mut buffer).unwrap(), 1);
    }
}
