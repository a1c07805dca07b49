//! A one-shot completion: the shard completes it once a commit is durable (or failed); the
//! caller awaits it from any runtime, or blocks on it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use crate::error::{Error, Result};

#[derive(Default)]
struct SlotState {
    result: Option<Result<()>>,
    waker: Option<Waker>,
}

#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    ready: Condvar,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        // The state is a plain value: a panic elsewhere cannot leave it half-written.
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// Resolves when a commit is durable (`Ok`) or has failed. Runtime-agnostic: await it from
/// any executor, or call [`CommitFuture::wait`] to block.
#[must_use = "a commit is only known durable once its future resolves"]
pub struct CommitFuture {
    ready: Option<Result<()>>,
    slot: Option<Arc<Slot>>,
    /// `offsets.commit.timeout.ms` after acceptance, and the timeout itself, for `wait`.
    deadline: Option<(Instant, u64)>,
}

impl CommitFuture {
    /// A future already resolved (validation errors, empty commits).
    pub(crate) fn resolved(result: Result<()>) -> CommitFuture {
        CommitFuture {
            ready: Some(result),
            slot: None,
            deadline: None,
        }
    }

    /// A pending future and the completer that resolves it.
    pub(crate) fn pending(deadline: Instant, timeout_ms: u64) -> (CommitFuture, Completer) {
        // One allocation per commit, for the slot shared with the shard thread. A pool of
        // slots recycled by the shard would remove it; see issue 3.
        let slot = Arc::new(Slot::default());
        let future = CommitFuture {
            ready: None,
            slot: Some(Arc::clone(&slot)),
            deadline: Some((deadline, timeout_ms)),
        };
        (future, Completer { slot: Some(slot) })
    }

    /// Blocks the calling thread until the commit is durable or has failed, or until
    /// `offsets.commit.timeout.ms` has passed since it was accepted: then it fails with
    /// [`Error::CommitTimeout`] (retriable; the commit may still become durable, as in Kafka).
    ///
    /// Awaiting the future has no timer of its own: async callers wrap it in their runtime's
    /// timeout.
    pub fn wait(mut self) -> Result<()> {
        if let Some(result) = self.ready.take() {
            return result;
        }
        let Some(slot) = self.slot.take() else {
            return Err(Error::Closed);
        };
        let mut state = slot.lock();
        loop {
            if let Some(result) = state.result.take() {
                return result;
            }
            state = match self.deadline {
                Some((deadline, timeout_ms)) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(Error::CommitTimeout { timeout_ms });
                    }
                    slot.ready
                        .wait_timeout(state, deadline - now)
                        .unwrap_or_else(|poison| poison.into_inner())
                        .0
                }
                None => slot
                    .ready
                    .wait(state)
                    .unwrap_or_else(|poison| poison.into_inner()),
            };
        }
    }
}

impl Future for CommitFuture {
    type Output = Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if let Some(result) = self.ready.take() {
            return Poll::Ready(result);
        }
        let Some(slot) = self.slot.as_ref() else {
            return Poll::Ready(Err(Error::Closed));
        };
        let mut state = slot.lock();
        if let Some(result) = state.result.take() {
            drop(state);
            self.slot = None;
            return Poll::Ready(result);
        }
        match &state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

/// The shard's end of a [`CommitFuture`]. Dropping it uncompleted fails the commit with
/// [`Error::Closed`], so no caller waits forever.
pub(crate) struct Completer {
    slot: Option<Arc<Slot>>,
}

impl Completer {
    /// Resolves the future.
    pub(crate) fn complete(mut self, result: Result<()>) {
        self.finish(result);
    }

    fn finish(&mut self, result: Result<()>) {
        let Some(slot) = self.slot.take() else {
            return;
        };
        let waker = {
            let mut state = slot.lock();
            state.result = Some(result);
            state.waker.take()
        };
        slot.ready.notify_all();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Drop for Completer {
    fn drop(&mut self) {
        self.finish(Err(Error::Closed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn far_deadline() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn wait_returns_the_completed_result_across_threads() {
        let (future, completer) = CommitFuture::pending(far_deadline(), 60_000);
        let thread = std::thread::spawn(move || completer.complete(Ok(())));
        assert!(future.wait().is_ok());
        thread.join().unwrap();
    }

    #[test]
    fn dropped_completer_fails_the_commit() {
        let (future, completer) = CommitFuture::pending(far_deadline(), 60_000);
        drop(completer);
        assert!(matches!(future.wait(), Err(Error::Closed)));
    }

    #[test]
    fn wait_gives_up_at_the_commit_deadline() {
        let deadline = Instant::now() + Duration::from_millis(20);
        let (future, completer) = CommitFuture::pending(deadline, 20);
        let started = Instant::now();
        assert!(matches!(
            future.wait(),
            Err(Error::CommitTimeout { timeout_ms: 20 })
        ));
        assert!(started.elapsed() >= Duration::from_millis(15));
        // The shard's late completion goes nowhere and does not panic.
        completer.complete(Ok(()));
    }
}
