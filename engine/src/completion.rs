//! A one-shot completion: the shard completes it once a commit is durable (or failed); the
//! caller awaits it from any runtime, or blocks on it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

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
}

impl CommitFuture {
    /// A future already resolved (validation errors, empty commits).
    pub(crate) fn resolved(result: Result<()>) -> CommitFuture {
        CommitFuture {
            ready: Some(result),
            slot: None,
        }
    }

    /// A pending future and the completer that resolves it.
    pub(crate) fn pending() -> (CommitFuture, Completer) {
        // One allocation per commit, for the slot shared with the shard thread. A pool of
        // slots recycled by the shard would remove it; see issue 3.
        let slot = Arc::new(Slot::default());
        let future = CommitFuture {
            ready: None,
            slot: Some(Arc::clone(&slot)),
        };
        (future, Completer { slot: Some(slot) })
    }

    /// Blocks the calling thread until the commit is durable or has failed.
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
            state = slot
                .ready
                .wait(state)
                .unwrap_or_else(|poison| poison.into_inner());
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

    #[test]
    fn wait_returns_the_completed_result_across_threads() {
        let (future, completer) = CommitFuture::pending();
        let thread = std::thread::spawn(move || completer.complete(Ok(())));
        assert!(future.wait().is_ok());
        thread.join().unwrap();
    }

    #[test]
    fn dropped_completer_fails_the_commit() {
        let (future, completer) = CommitFuture::pending();
        drop(completer);
        assert!(matches!(future.wait(), Err(Error::Closed)));
    }
}
