//! Epoch-based reclamation for one writer and any number of readers.
//!
//! Readers *pin* before they follow any pointer into the cache and unpin when done. The
//! writer *retires* what it unlinks (an old table, a replaced metadata string, a removed
//! node) instead of freeing it, and frees it only once no reader can still hold it.
//!
//! The scheme is a two-parity quiescence counter, striped to keep readers on different
//! cores off each other's cache lines:
//!
//! * A global epoch `E`, advanced only by the writer.
//! * Per stripe, two counters `active[0]` and `active[1]`: the number of readers pinned in an
//!   epoch of that parity.
//! * Pin: load `e`, increment `active[e % 2]`, re-load the epoch; if it moved, undo and retry.
//!   Unpin: decrement (Release).
//! * The writer keeps two bags: what it retired in the current epoch `E` and in `E - 1`. It
//!   advances `E → E + 1` only when every `active[(E - 1) % 2]` reads zero; at that moment
//!   it frees the bag of `E - 1`.
//!
//! Why that is safe: an object retired in epoch `X` was unlinked before the writer stored
//! `X + 1`. A reader whose pin validated epoch `Y ≥ X + 1` acquired that store, so it
//! also sees the unlink and can never reach the object. Readers pinned at `Y ≤ X` may hold
//! it; the bag of `X` is freed only on the advance from `X + 1` to `X + 2`, which requires
//! `active[X % 2] == 0` (readers pinned at `X` are gone) and, by induction, readers pinned
//! at `X - 1` were already gone when `X + 1` was published. The increment of the pin and the
//! writer's check form a store-load (Dekker) pattern, closed by a SeqCst fence on each side,
//! so either the writer sees the increment, or the reader's re-load sees the new epoch and
//! retries. A stalled reader that increments a stale parity only delays reclamation; it
//! never touches shared data before its re-check succeeds. The unpin's Release decrement
//! and the writer's Acquire fence after it reads zero order every read of the reader
//! before the free.
//!
//! Readers never wait for the writer: a pin retries only when the writer advanced the epoch
//! in between, and the writer never waits for readers: if a parity has not drained it just
//! keeps its garbage and tries again later.

use crate::sync::atomic::{AtomicU64, AtomicUsize, Ordering, fence};
use crate::sync::thread_local;

/// Number of reader stripes. More stripes spread reader threads over more cache lines at
/// the price of a longer scan when the writer tries to advance.
#[cfg(not(loom))]
const STRIPES: usize = 32;
#[cfg(loom)]
const STRIPES: usize = 2;

/// Retirements between two attempts to advance the epoch.
const RETIRE_BATCH: usize = 64;

/// A pair of reader counters on its own cache line(s), so readers on different stripes
/// never invalidate each other's line.
#[repr(align(128))]
struct Stripe {
    active: [AtomicUsize; 2],
}

/// The shared half of the scheme: the epoch and the reader counters.
pub(crate) struct Collector {
    epoch: AtomicU64,
    stripes: Box<[Stripe]>,
}

/// Proof that the current thread is pinned; unpins on drop.
pub(crate) struct Guard<'a> {
    counter: &'a AtomicUsize,
}

impl Drop for Guard<'_> {
    #[inline]
    fn drop(&mut self) {
        // Release: every read this reader made under the pin happens before the writer's
        // load that sees the counter drained, and so before the free.
        self.counter.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(not(loom))]
thread_local! {
    static STRIPE_ANCHOR: u8 = const { 0 };
}

/// The stripe for the calling thread: a hash of the address of a thread-local, so threads
/// spread over the stripes without any shared counter. Collisions only cost contention.
#[cfg(not(loom))]
#[inline]
fn thread_stripe() -> usize {
    let addr = STRIPE_ANCHOR.with(|a| a as *const u8 as usize);
    // Fibonacci hashing; thread-local blocks are page-aligned, so the low bits carry little.
    (addr.wrapping_mul(0x9E37_79B9_7F4A_7C15_u64 as usize) >> 40) % STRIPES
}

// Under loom the stripe must be the same in every execution of a model (addresses and loom
// thread ids are not), so threads take stripes in the order they first pin, from a counter
// that loom resets per execution. It starts at 1 so a lone reader exercises the writer's
// scan past stripe 0.
#[cfg(loom)]
crate::sync::lazy_static! {
    static ref NEXT_STRIPE: AtomicUsize = AtomicUsize::new(1);
}
#[cfg(loom)]
thread_local! {
    static STRIPE: usize = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES;
}

#[cfg(loom)]
fn thread_stripe() -> usize {
    STRIPE.with(|s| *s)
}

impl Collector {
    pub(crate) fn new() -> Self {
        Self {
            epoch: AtomicU64::new(0),
            stripes: (0..STRIPES)
                .map(|_| Stripe {
                    active: [AtomicUsize::new(0), AtomicUsize::new(0)],
                })
                .collect(),
        }
    }

    /// Heap bytes of the reader stripes.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.stripes.len() * std::mem::size_of::<Stripe>()
    }

    /// Pins the calling thread. Never blocks: it retries only if the writer advanced the
    /// epoch between the load and the re-check.
    #[inline]
    pub(crate) fn pin(&self) -> Guard<'_> {
        let stripe = &self.stripes[thread_stripe()];
        let mut e = self.epoch.load(Ordering::Relaxed);
        loop {
            let counter = &stripe.active[(e & 1) as usize];
            counter.fetch_add(1, Ordering::Relaxed);
            // The reader's half of the store-load (Dekker) pattern with `try_advance`: the
            // increment is ordered before the epoch re-load by a SeqCst fence. (A SeqCst fence
            // rather than SeqCst accesses: loom models SeqCst fences exactly, and on x86 the
            // locked increment already is the barrier.)
            fence(Ordering::SeqCst);
            // Acquire: pairs with the writer's Release epoch store, so a reader pinned at `E`
            // sees every unlink the writer made before publishing `E`.
            let now = self.epoch.load(Ordering::Acquire);
            if now == e {
                return Guard { counter };
            }
            // Touched nothing under this pin: just undo it.
            counter.fetch_sub(1, Ordering::Relaxed);
            e = now;
            crate::sync::spin_loop();
        }
    }
}

/// The writer's half: garbage bags, one per epoch parity. Not shared.
pub(crate) struct Reclaimer {
    /// The writer's copy of the global epoch (only the writer stores it).
    epoch: u64,
    /// `bags[E % 2]`: retired in the current epoch; `bags[(E + 1) % 2]`: retired in `E - 1`.
    bags: [Vec<Box<dyn Send>>; 2],
}

impl Reclaimer {
    pub(crate) fn new() -> Self {
        Self {
            epoch: 0,
            bags: [Vec::new(), Vec::new()],
        }
    }

    /// Hands `garbage` to the scheme; it is dropped once no pinned reader can reach it.
    /// The caller must already have unlinked it from everything readers can reach.
    pub(crate) fn retire(&mut self, collector: &Collector, garbage: Box<dyn Send>) {
        let bag = &mut self.bags[(self.epoch & 1) as usize];
        bag.push(garbage);
        // Try to advance once a batch has piled up: scanning the stripes costs a cache miss
        // per stripe, so it is amortized over many retirements. A busy reader just leaves
        // the garbage for a later call (or for `OffsetCache::collect`).
        if bag.len() >= RETIRE_BATCH {
            self.try_advance(collector);
        }
    }

    /// Number of objects retired and not yet freed.
    pub(crate) fn pending(&self) -> usize {
        self.bags[0].len() + self.bags[1].len()
    }

    /// Advances the epoch if readers of the previous parity have drained, freeing what was
    /// retired in the previous epoch. Returns whether it advanced. Never waits.
    pub(crate) fn try_advance(&mut self, collector: &Collector) -> bool {
        let prev = ((self.epoch + 1) & 1) as usize;
        // The writer's half of the Dekker pattern: our last epoch store is ordered before the
        // counter loads. Either a pinning reader's fence comes first in the SeqCst order, and
        // we see its increment, or ours does, and its re-load sees the new epoch.
        fence(Ordering::SeqCst);
        let drained = collector
            .stripes
            .iter()
            .all(|s| s.active[prev].load(Ordering::Relaxed) == 0);
        if !drained {
            return false;
        }
        // Acquire: pairs with the readers' Release unpins, so all their reads happen before
        // the frees below.
        fence(Ordering::Acquire);
        // Readers pinned at E - 1 or earlier are gone: the bag of E - 1 is unreachable.
        self.bags[prev].clear();
        self.epoch += 1;
        // Release: publishes every unlink made so far to readers that pin at the new epoch.
        // From here new pins land on the parity we just drained and emptied; the bag of the
        // old current epoch becomes the previous one.
        collector.epoch.store(self.epoch, Ordering::Release);
        true
    }

    /// Gives up all garbage without freeing it, for the last owner of the cache to drop.
    pub(crate) fn take_all(&mut self) -> Vec<Box<dyn Send>> {
        let mut all = std::mem::take(&mut self.bags[0]);
        all.append(&mut self.bags[1]);
        all
    }
}
