//! Pieces the benchmark binaries share: latency histograms, and collecting the acks of a
//! window of commits kept in flight.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use coffer::CommitFuture;
use hdrhistogram::Histogram;

/// Highest latency the histograms track (60 s, in µs); longer ones saturate.
pub const LATENCY_US_MAX: u64 = 60_000_000;

/// An empty latency histogram (µs, 3 significant digits).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("constant histogram bounds are valid")
}

/// Records `elapsed` in µs, clamped into the histogram's range.
pub fn record_us(histogram: &mut Histogram<u64>, elapsed: Duration) {
    let micros = (elapsed.as_micros() as u64).clamp(1, LATENCY_US_MAX);
    let _ = histogram.record(micros);
}

/// Hands every commit at the front of `queue` that has already resolved to `complete`, in
/// order, stopping at the first still pending: a flush acknowledges many requests at once.
pub fn drain_resolved<E>(
    queue: &mut VecDeque<(Instant, CommitFuture)>,
    cx: &mut Context<'_>,
    complete: &mut impl FnMut(Instant, coffer::Result<()>) -> Result<(), E>,
) -> Result<(), E> {
    while let Some((issued, future)) = queue.front_mut() {
        let issued = *issued;
        match Pin::new(future).poll(cx) {
            Poll::Ready(result) => {
                queue.pop_front();
                complete(issued, result)?;
            }
            Poll::Pending => break,
        }
    }
    Ok(())
}
