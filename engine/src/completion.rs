//! A one-shot completion: the shard completes it once a commit is durable (or failed); the
//! caller awaits it from any runtime, or blocks on it.
//!
//! Completion slots are pooled: a slot is shared by a [`CommitFuture`] and the shard's
//! [`Completer`], and whichever of the two lets go of it last (see [`ReleaseGate`]) resets it
//! and hands it back to the engine's [`CompletionPool`]. In steady state a commit therefore
//! allocates no slot; the pool only allocates while it warms up, or when callers hold more
//! futures than it keeps.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::pool::FreeList;
use crate::sync::atomic::{AtomicU32, Ordering};

/// Most completion slots an engine keeps for reuse. Beyond this, released slots are freed;
/// it bounds the pool's memory (a slot is under 128 bytes).
pub(crate) const COMPLETIONS_POOLED_MAX: usize = 64 * 1024;

/// Decides which of a slot's two users (future, completer) releases it last.
///
/// Each side calls [`release`](Self::release) once, after its last access to the slot's
/// state. The `AcqRel` increment orders the first side's accesses before the second side's
/// reset, so the reset never races a late read or write.
pub(crate) struct ReleaseGate {
    sides_released: AtomicU32,
}

impl ReleaseGate {
    pub(crate) fn new() -> ReleaseGate {
        ReleaseGate {
            sides_released: AtomicU32::new(0),
        }
    }

    /// Returns true for the second (last) side to release.
    pub(crate) fn release(&self) -> bool {
        let before = self.sides_released.fetch_add(1, Ordering::AcqRel);
        debug_assert!(before < 2, "a completion slot released three times");
        before == 1
    }

    /// Re-arms the gate for the slot's next use; only the last releaser calls it.
    pub(crate) fn rearm(&self) {
        self.sides_released.store(0, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct SlotState {
    result: Option<Result<()>>,
    waker: Option<Waker>,
}

struct Slot {
    state: Mutex<SlotState>,
    ready: Condvar,
    gate: ReleaseGate,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            state: Mutex::new(SlotState::default()),
            ready: Condvar::new(),
            gate: ReleaseGate::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SlotState> {
        // The state is a plain value: a panic elsewhere cannot leave it half-written.
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// The engine's free list of completion slots (bounded, see [`COMPLETIONS_POOLED_MAX`]).
#[derive(Clone)]
pub(crate) struct CompletionPool {
    free: FreeList<Arc<Slot>>,
}

impl CompletionPool {
    pub(crate) fn new(capacity: usize) -> CompletionPool {
        CompletionPool {
            free: FreeList::new(capacity.min(COMPLETIONS_POOLED_MAX)),
        }
    }

    fn take(&self) -> Arc<Slot> {
        // Allocates only while the pool warms up or when every pooled slot is in use.
        self.free.take().unwrap_or_else(|| Arc::new(Slot::new()))
    }

    /// Slots waiting for reuse.
    #[cfg(all(test, not(loom)))]
    fn pooled(&self) -> usize {
        self.free.len()
    }

    /// One side is done with `slot`; the last side resets it and returns it to the pool.
    fn release(&self, slot: Arc<Slot>) {
        if !slot.gate.release() {
            return;
        }
        *slot.lock() = SlotState::default();
        slot.gate.rearm();
        self.free.give_back(slot);
    }
}

/// A pooled slot plus the pool it goes back to.
struct PooledSlot {
    slot: Arc<Slot>,
    pool: CompletionPool,
}

impl PooledSlot {
    fn release(self) {
        self.pool.release(self.slot);
    }
}

/// Resolves when a commit is durable (`Ok`) or has failed. Runtime-agnostic: await it from
/// any executor, or call [`CommitFuture::wait`] to block.
#[must_use = "a commit is only known durable once its future resolves"]
pub struct CommitFuture {
    ready: Option<Result<()>>,
    slot: Option<PooledSlot>,
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

    /// A pending future and the completer that resolves it, sharing a slot from `pool`.
    pub(crate) fn pending(
        deadline: Instant,
        timeout_ms: u64,
        pool: &CompletionPool,
    ) -> (CommitFuture, Completer) {
        let slot = pool.take();
        let future = CommitFuture {
            ready: None,
            slot: Some(PooledSlot {
                slot: Arc::clone(&slot),
                pool: pool.clone(),
            }),
            deadline: Some((deadline, timeout_ms)),
        };
        let completer = Completer {
            slot: Some(PooledSlot {
                slot,
                pool: pool.clone(),
            }),
        };
        (future, completer)
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
        let Some(pooled) = self.slot.take() else {
            return Err(Error::Closed);
        };
        let result = wait_for_result(&pooled.slot, self.deadline);
        pooled.release();
        result
    }
}

impl Future for CommitFuture {
    type Output = Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if let Some(result) = self.ready.take() {
            return Poll::Ready(result);
        }
        let Some(pooled) = self.slot.as_ref() else {
            return Poll::Ready(Err(Error::Closed));
        };
        let mut state = pooled.slot.lock();
        if let Some(result) = state.result.take() {
            drop(state);
            if let Some(pooled) = self.slot.take() {
                pooled.release();
            }
            return Poll::Ready(result);
        }
        match &state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for CommitFuture {
    fn drop(&mut self) {
        if let Some(pooled) = self.slot.take() {
            pooled.release();
        }
    }
}

/// Blocks until `slot` holds a result or the deadline passes.
fn wait_for_result(slot: &Slot, deadline: Option<(Instant, u64)>) -> Result<()> {
    let mut state = slot.lock();
    loop {
        if let Some(result) = state.result.take() {
            return result;
        }
        state = match deadline {
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

/// The shard's end of a [`CommitFuture`]. Dropping it uncompleted fails the commit with
/// [`Error::Closed`], so no caller waits forever.
pub(crate) struct Completer {
    slot: Option<PooledSlot>,
}

impl Completer {
    /// Resolves the future.
    pub(crate) fn complete(mut self, result: Result<()>) {
        self.finish(result);
    }

    fn finish(&mut self, result: Result<()>) {
        let Some(pooled) = self.slot.take() else {
            return;
        };
        let waker = {
            let mut state = pooled.slot.lock();
            state.result = Some(result);
            state.waker.take()
        };
        pooled.slot.ready.notify_all();
        if let Some(waker) = waker {
            waker.wake();
        }
        pooled.release();
    }
}

impl Drop for Completer {
    fn drop(&mut self) {
        self.finish(Err(Error::Closed));
    }
}

/// The release protocol under loom: whichever order the two sides release in, exactly one
/// of them resets the slot, and its reset happens after the other side's last access (loom's
/// causality check on the cell fails if the gate's ordering were too weak).
#[cfg(all(test, loom))]
mod loom_tests {
    use super::ReleaseGate;
    use crate::sync::Arc;
    use crate::sync::cell::UnsafeCell;
    use crate::sync::thread;

    struct SharedSlot {
        gate: ReleaseGate,
        /// Stand for the slot's state as each side last touches it (the real state is
        /// behind a mutex; these cells are not, so loom checks the gate alone orders them).
        sides: [UnsafeCell<u64>; 2],
    }

    // SAFETY: access to `sides` is ordered by the gate, which is what the model checks.
    unsafe impl Sync for SharedSlot {}

    fn side(slot: &SharedSlot, index: usize) -> bool {
        // SAFETY: each side writes only its own cell before releasing.
        slot.sides[index].with_mut(|cell| unsafe { *cell = 1 });
        if !slot.gate.release() {
            return false;
        }
        for cell in &slot.sides {
            // SAFETY: both sides have released; loom's causality check fails this access if
            // the other side's write is not ordered before it.
            cell.with_mut(|cell| unsafe {
                assert_eq!(*cell, 1, "the reset sees both sides' last writes");
                *cell = 0;
            });
        }
        slot.gate.rearm();
        true
    }

    #[test]
    fn exactly_one_side_resets_after_both_released() {
        loom::model(|| {
            let slot = Arc::new(SharedSlot {
                gate: ReleaseGate::new(),
                sides: [UnsafeCell::new(0), UnsafeCell::new(0)],
            });
            let other = Arc::clone(&slot);
            let completer = thread::spawn(move || side(&other, 0));
            let future_reset = side(&slot, 1);
            let completer_reset = completer.join().unwrap();
            assert!(future_reset ^ completer_reset, "exactly one side resets");
        });
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::time::Duration;

    fn far_deadline() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    fn pending(deadline: Instant, timeout_ms: u64) -> (CommitFuture, Completer) {
        CommitFuture::pending(deadline, timeout_ms, &CompletionPool::new(16))
    }

    #[test]
    fn a_slot_is_reused_once_both_sides_released_it_in_either_order() {
        let pool = CompletionPool::new(16);
        let (future, completer) = CommitFuture::pending(far_deadline(), 60_000, &pool);
        let first = Arc::as_ptr(&future.slot.as_ref().unwrap().slot);
        completer.complete(Ok(()));
        assert_eq!(pool.pooled(), 0, "the future still holds the slot");
        assert!(future.wait().is_ok());
        assert_eq!(pool.pooled(), 1);

        // Future dropped first, completer later: still recycled, and clean for reuse.
        let (future, completer) = CommitFuture::pending(far_deadline(), 60_000, &pool);
        assert_eq!(Arc::as_ptr(&future.slot.as_ref().unwrap().slot), first);
        drop(future);
        assert_eq!(pool.pooled(), 0);
        completer.complete(Err(Error::Closed));
        assert_eq!(pool.pooled(), 1);
        let (future, completer) = CommitFuture::pending(far_deadline(), 60_000, &pool);
        assert_eq!(Arc::as_ptr(&future.slot.as_ref().unwrap().slot), first);
        completer.complete(Ok(()));
        assert!(
            future.wait().is_ok(),
            "no stale result or gate from the last use"
        );
    }

    #[test]
    fn a_full_pool_frees_released_slots() {
        let pool = CompletionPool::new(1);
        let a = CommitFuture::pending(far_deadline(), 60_000, &pool);
        let b = CommitFuture::pending(far_deadline(), 60_000, &pool);
        for (future, completer) in [a, b] {
            completer.complete(Ok(()));
            assert!(future.wait().is_ok());
        }
        assert_eq!(pool.pooled(), 1);
    }

    #[test]
    fn wait_returns_the_completed_result_across_threads() {
        let (future, completer) = pending(far_deadline(), 60_000);
        let thread = std::thread::spawn(move || completer.complete(Ok(())));
        assert!(future.wait().is_ok());
        thread.join().unwrap();
    }

    #[test]
    fn dropped_completer_fails_the_commit() {
        let (future, completer) = pending(far_deadline(), 60_000);
        drop(completer);
        assert!(matches!(future.wait(), Err(Error::Closed)));
    }

    #[test]
    fn wait_gives_up_at_the_commit_deadline() {
        let deadline = Instant::now() + Duration::from_millis(20);
        let (future, completer) = pending(deadline, 20);
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
