//! One-shot completions: the shard completes one once a commit is durable (or failed), or
//! once a group call has its response; the caller awaits it from any runtime, or blocks on it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use crate::error::{Error, Result};

struct SlotState<T> {
    result: Option<T>,
    waker: Option<Waker>,
}

struct Slot<T> {
    state: Mutex<SlotState<T>>,
    ready: Condvar,
}

impl<T> Slot<T> {
    fn new() -> Slot<T> {
        Slot {
            state: Mutex::new(SlotState {
                result: None,
                waker: None,
            }),
            ready: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SlotState<T>> {
        // The state is a plain value: a panic elsewhere cannot leave it half-written.
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Blocks until completed, or until `deadline` (then `None`).
    fn wait(&self, deadline: Option<Instant>) -> Option<T> {
        let mut state = self.lock();
        loop {
            if let Some(result) = state.result.take() {
                return Some(result);
            }
            state = match deadline {
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return None;
                    }
                    self.ready
                        .wait_timeout(state, deadline - now)
                        .unwrap_or_else(|poison| poison.into_inner())
                        .0
                }
                None => self
                    .ready
                    .wait(state)
                    .unwrap_or_else(|poison| poison.into_inner()),
            };
        }
    }

    /// The result if completed; else registers the task's waker.
    fn poll(&self, cx: &mut Context<'_>) -> Poll<T> {
        let mut state = self.lock();
        if let Some(result) = state.result.take() {
            return Poll::Ready(result);
        }
        match &state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    fn complete(&self, result: T) {
        let waker = {
            let mut state = self.lock();
            state.result = Some(result);
            state.waker.take()
        };
        self.ready.notify_all();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// What a completion resolves to when the shard drops it uncompleted (it stopped or unloaded
/// the partition), so no caller waits forever.
pub trait Abandoned {
    /// The value an abandoned call resolves to.
    fn abandoned() -> Self;
}

impl Abandoned for Result<()> {
    fn abandoned() -> Self {
        Err(Error::Closed)
    }
}

/// Resolves when a commit is durable (`Ok`) or has failed. Runtime-agnostic: await it from
/// any executor, or call [`CommitFuture::wait`] to block.
#[must_use = "a commit is only known durable once its future resolves"]
pub struct CommitFuture {
    ready: Option<Result<()>>,
    slot: Option<Arc<Slot<Result<()>>>>,
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
        let slot = Arc::new(Slot::new());
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
        let deadline = self.deadline.map(|(deadline, _)| deadline);
        slot.wait(deadline).unwrap_or_else(|| {
            let timeout_ms = self.deadline.map_or(0, |(_, timeout_ms)| timeout_ms);
            Err(Error::CommitTimeout { timeout_ms })
        })
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
        let polled = slot.poll(cx);
        if polled.is_ready() {
            self.slot = None;
        }
        polled
    }
}

/// Resolves to a group call's response (JoinGroup, SyncGroup, Heartbeat, LeaveGroup).
/// Runtime-agnostic like [`CommitFuture`]: await it, or [`wait`](GroupFuture::wait).
/// A JoinGroup may wait up to the group's rebalance timeout, as in Kafka.
#[must_use = "the response arrives through the future"]
pub struct GroupFuture<T> {
    ready: Option<T>,
    slot: Option<Arc<Slot<T>>>,
}

impl<T: Abandoned> GroupFuture<T> {
    /// A future already resolved.
    pub(crate) fn resolved(value: T) -> GroupFuture<T> {
        GroupFuture {
            ready: Some(value),
            slot: None,
        }
    }

    /// A pending future and the completer that resolves it.
    pub(crate) fn pending() -> (GroupFuture<T>, Completer<T>) {
        let slot = Arc::new(Slot::new());
        let future = GroupFuture {
            ready: None,
            slot: Some(Arc::clone(&slot)),
        };
        (future, Completer { slot: Some(slot) })
    }

    /// Blocks the calling thread until the response arrives.
    pub fn wait(mut self) -> T {
        if let Some(value) = self.ready.take() {
            return value;
        }
        match self.slot.take() {
            Some(slot) => slot.wait(None).unwrap_or_else(T::abandoned),
            None => T::abandoned(),
        }
    }
}

impl<T: Abandoned + Unpin> Future for GroupFuture<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        if let Some(value) = self.ready.take() {
            return Poll::Ready(value);
        }
        let Some(slot) = self.slot.as_ref() else {
            return Poll::Ready(T::abandoned());
        };
        let polled = slot.poll(cx);
        if polled.is_ready() {
            self.slot = None;
        }
        polled
    }
}

/// The shard's end of a [`CommitFuture`] or [`GroupFuture`]. Dropping it uncompleted
/// resolves the future with [`Abandoned::abandoned`] (`Error::Closed` for commits), so no
/// caller waits forever.
pub(crate) struct Completer<T: Abandoned = Result<()>> {
    slot: Option<Arc<Slot<T>>>,
}

impl<T: Abandoned> Completer<T> {
    /// Resolves the future.
    pub(crate) fn complete(mut self, result: T) {
        if let Some(slot) = self.slot.take() {
            slot.complete(result);
        }
    }
}

impl<T: Abandoned> Drop for Completer<T> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            slot.complete(T::abandoned());
        }
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
