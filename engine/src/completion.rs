//! One-shot completions: the shard completes one once a commit is durable (or failed), or
//! once a group call has its response; the caller awaits it from any runtime, or blocks on it.
//!
//! Commit completion slots are pooled: a slot is shared by a [`CommitFuture`] and the shard's
//! [`Completer`], and whichever of the two lets go of it last (see [`ReleaseGate`]) resets it
//! and hands it back to the engine's [`CompletionPool`]. In steady state a commit therefore
//! allocates no slot; the pool only allocates while it warms up, or when callers hold more
//! futures than it keeps. Group calls (join, sync, heartbeat, leave) use unpooled slots.

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

struct SlotState<T> {
    result: Option<T>,
    waker: Option<Waker>,
    /// A thread is (about to be) blocked in `wait`: only then does completing need the
    /// condvar's notify, a futex syscall even when nobody waits.
    waiting: bool,
}

struct Slot<T> {
    state: Mutex<SlotState<T>>,
    ready: Condvar,
    gate: ReleaseGate,
}

impl<T> Slot<T> {
    fn new() -> Slot<T> {
        Slot {
            state: Mutex::new(SlotState {
                result: None,
                waker: None,
                waiting: false,
            }),
            ready: Condvar::new(),
            gate: ReleaseGate::new(),
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
            // Set under the lock the completer takes, so it cannot miss this waiter.
            state.waiting = true;
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
        let (waker, waiting) = self.store(result);
        if waiting {
            self.ready.notify_all();
        }
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Stores the result; returns the waker to wake and whether a thread waits on the
    /// condvar.
    fn store(&self, result: T) -> (Option<Waker>, bool) {
        let mut state = self.lock();
        state.result = Some(result);
        (state.waker.take(), std::mem::take(&mut state.waiting))
    }
}

/// A slot's condvar, type-erased so one list can hold the slots of every result type.
trait Notify: Send + Sync {
    fn notify(&self);
}

impl<T: Send> Notify for Slot<T> {
    fn notify(&self) {
        self.ready.notify_all();
    }
}

/// Most wakeups [`DeferredWakes`] holds of each kind; one more wakes those held first.
pub(crate) const WAKES_DEFERRED_MAX: usize = 4096;

/// Wakeups owed by completions made in a row, fired together by [`wake_all`](DeferredWakes::wake_all)
/// (Self::wake_all).
///
/// Waking a caller blocked on another core is a futex syscall and an interrupt to that
/// core, a few microseconds on a VM. A caller that waits for answers in turn (a heartbeat
/// loop waiting for each of a burst) is otherwise woken once per answer, as the shard
/// answers the burst while the caller runs: at 200,000 heartbeats/s that cost the shard
/// about 5 % of its CPU (benchmarks.md). Deferred to the end of the run of completions, it
/// is woken once and finds them all answered.
pub(crate) struct DeferredWakes {
    notify: Vec<Arc<dyn Notify>>,
    wakers: Vec<Waker>,
}

impl Drop for DeferredWakes {
    /// A shard that unwinds still wakes the callers it answered.
    fn drop(&mut self) {
        self.wake_all();
    }
}

impl DeferredWakes {
    /// Room for [`WAKES_DEFERRED_MAX`] of each kind, allocated here, never grown.
    pub(crate) fn new() -> DeferredWakes {
        DeferredWakes {
            notify: Vec::with_capacity(WAKES_DEFERRED_MAX),
            wakers: Vec::with_capacity(WAKES_DEFERRED_MAX),
        }
    }

    /// Fires every wakeup owed. Call before anything that may block, and at the end of the
    /// run of completions that owes them.
    pub(crate) fn wake_all(&mut self) {
        for slot in self.notify.drain(..) {
            slot.notify();
        }
        for waker in self.wakers.drain(..) {
            waker.wake();
        }
    }

    /// Whether no wakeup is owed.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn is_empty(&self) -> bool {
        self.notify.is_empty() && self.wakers.is_empty()
    }

    fn defer<T: Send + 'static>(
        &mut self,
        slot: &Arc<Slot<T>>,
        waker: Option<Waker>,
        waiting: bool,
    ) {
        // Full: the ones held are woken now (a long run of requests must not hold them), and
        // the list takes the new one.
        let full = |len: usize| len >= WAKES_DEFERRED_MAX;
        if (waiting && full(self.notify.len())) || (waker.is_some() && full(self.wakers.len())) {
            self.wake_all();
        }
        if waiting {
            // An `Arc` clone, no allocation: the list's capacity is reserved.
            self.notify.push(Arc::clone(slot) as Arc<dyn Notify>);
        }
        if let Some(waker) = waker {
            self.wakers.push(waker);
        }
    }
}

/// A free list of completion slots (bounded, see [`COMPLETIONS_POOLED_MAX`]): commits use
/// `CompletionPool<Result<()>>`, heartbeats through the engine handle their own.
pub(crate) struct CompletionPool<T = Result<()>> {
    free: FreeList<Arc<Slot<T>>>,
}

impl<T> Clone for CompletionPool<T> {
    fn clone(&self) -> Self {
        CompletionPool {
            free: self.free.clone(),
        }
    }
}

impl<T> CompletionPool<T> {
    pub(crate) fn new(capacity: usize) -> CompletionPool<T> {
        CompletionPool {
            free: FreeList::new(capacity.min(COMPLETIONS_POOLED_MAX)),
        }
    }

    /// A pool holding `capacity` slots from the start (everything allocated up front): a
    /// slot is back in the pool only once both its future and its completer let go, and
    /// the completer's side can lag behind the woken caller's next request, so a pool that
    /// grows on demand could still allocate after any warm-up.
    pub(crate) fn prefilled(capacity: usize) -> CompletionPool<T> {
        let pool = CompletionPool::new(capacity);
        for _ in 0..capacity.min(COMPLETIONS_POOLED_MAX) {
            pool.free.give_back(Arc::new(Slot::new()));
        }
        pool
    }

    fn take(&self) -> Arc<Slot<T>> {
        // Allocates only when every pooled slot is in use (or for a pool not prefilled).
        self.free.take().unwrap_or_else(|| Arc::new(Slot::new()))
    }

    /// Slots waiting for reuse.
    #[cfg(all(test, not(loom)))]
    fn pooled(&self) -> usize {
        self.free.len()
    }
}

/// One side's hold on a slot, and the free list the slot goes back to, if pooled.
struct SlotHandle<T> {
    slot: Arc<Slot<T>>,
    pool: Option<FreeList<Arc<Slot<T>>>>,
}

impl<T> SlotHandle<T> {
    fn pair(slot: Arc<Slot<T>>, pool: Option<FreeList<Arc<Slot<T>>>>) -> (Self, Self) {
        let first = SlotHandle {
            slot: Arc::clone(&slot),
            pool: pool.clone(),
        };
        (first, SlotHandle { slot, pool })
    }

    /// This side is done with the slot; the last side of a pooled slot resets it and
    /// returns it to the pool.
    fn release(self) {
        let Some(pool) = self.pool else {
            return;
        };
        if !self.slot.gate.release() {
            return;
        }
        {
            let mut state = self.slot.lock();
            state.result = None;
            state.waker = None;
            state.waiting = false;
        }
        self.slot.gate.rearm();
        pool.give_back(self.slot);
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
    slot: Option<SlotHandle<Result<()>>>,
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
        let (mine, theirs) = SlotHandle::pair(pool.take(), Some(pool.free.clone()));
        let future = CommitFuture {
            ready: None,
            slot: Some(mine),
            deadline: Some((deadline, timeout_ms)),
        };
        (future, Completer { slot: Some(theirs) })
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
        let Some(handle) = self.slot.take() else {
            return Err(Error::Closed);
        };
        let deadline = self.deadline.map(|(deadline, _)| deadline);
        let result = handle.slot.wait(deadline).unwrap_or_else(|| {
            let timeout_ms = self.deadline.map_or(0, |(_, timeout_ms)| timeout_ms);
            Err(Error::CommitTimeout { timeout_ms })
        });
        handle.release();
        result
    }
}

impl Future for CommitFuture {
    type Output = Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if let Some(result) = self.ready.take() {
            return Poll::Ready(result);
        }
        let Some(handle) = self.slot.as_ref() else {
            return Poll::Ready(Err(Error::Closed));
        };
        let polled = handle.slot.poll(cx);
        if polled.is_ready()
            && let Some(handle) = self.slot.take()
        {
            handle.release();
        }
        polled
    }
}

impl Drop for CommitFuture {
    fn drop(&mut self) {
        if let Some(handle) = self.slot.take() {
            handle.release();
        }
    }
}

/// Resolves to a group call's response (JoinGroup, SyncGroup, Heartbeat, LeaveGroup).
/// Runtime-agnostic like [`CommitFuture`]: await it, or [`wait`](GroupFuture::wait).
/// A JoinGroup may wait up to the group's rebalance timeout, as in Kafka.
#[must_use = "the response arrives through the future"]
pub struct GroupFuture<T> {
    ready: Option<T>,
    slot: Option<SlotHandle<T>>,
}

impl<T: Abandoned> GroupFuture<T> {
    /// A future already resolved.
    pub(crate) fn resolved(value: T) -> GroupFuture<T> {
        GroupFuture {
            ready: Some(value),
            slot: None,
        }
    }

    /// A pending future and the completer that resolves it (an unpooled slot).
    pub(crate) fn pending() -> (GroupFuture<T>, Completer<T>) {
        GroupFuture::with_slot(Arc::new(Slot::new()), None)
    }

    /// A pending future sharing a slot from `pool` with its completer (heartbeats: no
    /// allocation once the pool is warm).
    pub(crate) fn pending_pooled(pool: &CompletionPool<T>) -> (GroupFuture<T>, Completer<T>) {
        GroupFuture::with_slot(pool.take(), Some(pool.free.clone()))
    }

    fn with_slot(
        slot: Arc<Slot<T>>,
        pool: Option<FreeList<Arc<Slot<T>>>>,
    ) -> (GroupFuture<T>, Completer<T>) {
        let (mine, theirs) = SlotHandle::pair(slot, pool);
        let future = GroupFuture {
            ready: None,
            slot: Some(mine),
        };
        (future, Completer { slot: Some(theirs) })
    }

    /// Blocks the calling thread until the response arrives.
    pub fn wait(mut self) -> T {
        if let Some(value) = self.ready.take() {
            return value;
        }
        let Some(handle) = self.slot.take() else {
            return T::abandoned();
        };
        let value = handle.slot.wait(None).unwrap_or_else(T::abandoned);
        handle.release();
        value
    }
}

impl<T: Abandoned + Unpin> Future for GroupFuture<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        if let Some(value) = self.ready.take() {
            return Poll::Ready(value);
        }
        let Some(handle) = self.slot.as_ref() else {
            return Poll::Ready(T::abandoned());
        };
        let polled = handle.slot.poll(cx);
        if polled.is_ready()
            && let Some(handle) = self.slot.take()
        {
            handle.release();
        }
        polled
    }
}

impl<T> Drop for GroupFuture<T> {
    fn drop(&mut self) {
        if let Some(handle) = self.slot.take() {
            handle.release();
        }
    }
}

/// The shard's end of a [`CommitFuture`] or [`GroupFuture`]. Dropping it uncompleted
/// resolves the future with [`Abandoned::abandoned`] (`Error::Closed` for commits), so no
/// caller waits forever.
pub(crate) struct Completer<T: Abandoned = Result<()>> {
    slot: Option<SlotHandle<T>>,
}

impl<T: Abandoned> Completer<T> {
    /// Resolves the future.
    pub(crate) fn complete(mut self, result: T) {
        self.finish(result);
    }

    fn finish(&mut self, result: T) {
        if let Some(handle) = self.slot.take() {
            handle.slot.complete(result);
            handle.release();
        }
    }
}

impl<T: Abandoned + Send + 'static> Completer<T> {
    /// Resolves the future now but wakes its caller only at `wakes`'s next
    /// [`wake_all`](DeferredWakes::wake_all). A caller that polls or waits meanwhile sees the
    /// result at once; only a caller already blocked waits for the wakeup.
    pub(crate) fn complete_deferred(mut self, result: T, wakes: &mut DeferredWakes) {
        if let Some(handle) = self.slot.take() {
            let (waker, waiting) = handle.slot.store(result);
            // Before the release: a slot back in the pool may be reset and reused, and a
            // late notify of a reused slot only wakes its waiter spuriously (it re-checks).
            wakes.defer(&handle.slot, waker, waiting);
            handle.release();
        }
    }
}

impl<T: Abandoned> Drop for Completer<T> {
    fn drop(&mut self) {
        if self.slot.is_some() {
            self.finish(T::abandoned());
        }
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

    /// A waker that counts its wakes.
    struct CountingWaker(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn a_deferred_completion_is_visible_at_once_and_wakes_only_at_wake_all() {
        let counter = Arc::new(CountingWaker(std::sync::atomic::AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&counter));
        let mut cx = Context::from_waker(&waker);
        let wakes_seen = || counter.0.load(std::sync::atomic::Ordering::SeqCst);
        let mut wakes = DeferredWakes::new();

        let (mut future, completer) = pending(far_deadline(), 60_000);
        assert!(Pin::new(&mut future).poll(&mut cx).is_pending());
        completer.complete_deferred(Ok(()), &mut wakes);
        assert_eq!(wakes_seen(), 0, "woken before wake_all");
        assert!(!wakes.is_empty());
        // A caller that looks meanwhile sees the result without the wakeup.
        assert!(matches!(
            Pin::new(&mut future).poll(&mut cx),
            Poll::Ready(Ok(()))
        ));
        wakes.wake_all();
        assert_eq!(wakes_seen(), 1);
        assert!(wakes.is_empty());

        // Nobody waiting: nothing owed.
        let (future, completer) = pending(far_deadline(), 60_000);
        completer.complete_deferred(Ok(()), &mut wakes);
        assert!(wakes.is_empty());
        assert!(future.wait().is_ok());
    }

    #[test]
    fn a_blocked_waiter_gets_a_deferred_result_at_wake_all() {
        let (future, completer) = pending(far_deadline(), 60_000);
        let slot = Arc::clone(&future.slot.as_ref().unwrap().slot);
        let waiter = std::thread::spawn(move || future.wait());
        // Bounded: the waiter marks itself waiting as soon as it runs.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !slot.lock().waiting {
            assert!(Instant::now() < deadline, "the waiter never blocked");
            std::thread::yield_now();
        }
        let mut wakes = DeferredWakes::new();
        completer.complete_deferred(Ok(()), &mut wakes);
        assert!(!wakes.is_empty(), "a blocked waiter is owed a wakeup");
        wakes.wake_all();
        assert!(waiter.join().unwrap().is_ok());
    }

    #[test]
    fn past_its_bound_a_deferred_completion_wakes_the_ones_held_first() {
        let counter = Arc::new(CountingWaker(std::sync::atomic::AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&counter));
        let mut cx = Context::from_waker(&waker);
        let pool = CompletionPool::new(WAKES_DEFERRED_MAX + 1);
        let mut wakes = DeferredWakes::new();
        let mut futures = Vec::new();
        for _ in 0..=WAKES_DEFERRED_MAX {
            let (mut future, completer) = CommitFuture::pending(far_deadline(), 60_000, &pool);
            assert!(Pin::new(&mut future).poll(&mut cx).is_pending());
            completer.complete_deferred(Ok(()), &mut wakes);
            futures.push(future);
        }
        let woken = || counter.0.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(
            woken(),
            WAKES_DEFERRED_MAX,
            "the one past the bound woke those held"
        );
        assert!(!wakes.is_empty(), "and took its own place");
        wakes.wake_all();
        assert_eq!(woken(), WAKES_DEFERRED_MAX + 1);
    }
}
