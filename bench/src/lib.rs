//! Pieces the benchmark binaries share: latency histograms, collecting the acks of a
//! window of commits kept in flight, and a thread's CPU time.

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

/// CPU time the calling thread has used (`CLOCK_THREAD_CPUTIME_ID`): time it was
/// descheduled does not count, time it stalled on memory does.
pub fn thread_cpu_time() -> std::io::Result<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a pointer to a timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
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

/// CPU time used so far by this process's threads whose name starts with each of
/// `prefixes` (one sum per prefix), from `/proc/self/task/*/schedstat` (time on CPU, ns).
/// Threads that ended are not counted: take it around a window the threads outlive.
pub fn threads_cpu_time(prefixes: &[&str]) -> std::io::Result<Vec<Duration>> {
    let mut sums = vec![Duration::ZERO; prefixes.len()];
    for task in std::fs::read_dir("/proc/self/task")? {
        let path = task?.path();
        // A thread may end between the listing and the reads: skip it then.
        let Ok(name) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        let Some(index) = prefixes.iter().position(|p| name.starts_with(p)) else {
            continue;
        };
        let Ok(schedstat) = std::fs::read_to_string(path.join("schedstat")) else {
            continue;
        };
        let on_cpu_ns: u64 = schedstat
            .split_whitespace()
            .next()
            .and_then(|field| field.parse().ok())
            .ok_or_else(|| std::io::Error::other("unexpected /proc schedstat format"))?;
        sums[index] += Duration::from_nanos(on_cpu_ns);
    }
    Ok(sums)
}
