//! The one place the engine's concurrent structures get their synchronization primitives from.
//!
//! Under `--cfg loom` every item here is loom's model of it, so a loom test explores all
//! interleavings (and weak-memory reorderings) of the code built on top; otherwise the items
//! are the standard library's, at no cost. Concurrent code must import atomics, fences, `Arc`,
//! `Mutex`, cells and thread spawning from here and nowhere else, or loom silently stops
//! seeing part of the structure (the same approach as tokio's `src/loom/` and bytes'
//! `src/loom.rs`).

#[cfg(loom)]
pub(crate) use loom::sync::{Arc, Mutex};
#[cfg(not(loom))]
pub(crate) use std::sync::{Arc, Mutex};

/// Atomic integers, pointers and fences.
pub(crate) mod atomic {
    #[cfg(loom)]
    pub(crate) use loom::sync::atomic::{
        AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence,
    };
    #[cfg(not(loom))]
    pub(crate) use std::sync::atomic::{
        AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence,
    };
}

/// Thread spawning (loom models spawn model threads; the stress tests use real ones).
#[allow(unused_imports)]
pub(crate) mod thread {
    #[cfg(loom)]
    pub(crate) use loom::thread::{spawn, yield_now};
    #[cfg(not(loom))]
    pub(crate) use std::thread::{spawn, yield_now};
}

#[cfg(loom)]
pub(crate) use loom::{lazy_static, thread_local};
#[cfg(not(loom))]
pub(crate) use std::thread_local;

/// Interior mutability with loom's access tracking: `with` is a read access, `with_mut` a
/// write access. Under loom a read and a write that are not ordered by happens-before fail
/// the model ("causality violation"); outside loom this is a plain `UnsafeCell`.
pub(crate) mod cell {
    #[cfg(loom)]
    pub(crate) use loom::cell::UnsafeCell;

    /// `std::cell::UnsafeCell` with loom's closure-based API.
    #[cfg(not(loom))]
    #[derive(Debug, Default)]
    pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

    #[cfg(not(loom))]
    impl<T> UnsafeCell<T> {
        pub(crate) const fn new(value: T) -> Self {
            Self(std::cell::UnsafeCell::new(value))
        }

        /// Runs `f` with a shared pointer to the contents.
        #[inline(always)]
        pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
            f(self.0.get())
        }

        /// Runs `f` with an exclusive pointer to the contents.
        #[inline(always)]
        pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }
}

/// A liveness marker embedded in every object that lock-free readers reach through a
/// pointer and that the writer later frees.
///
/// Outside loom it is a zero-sized no-op. Under loom it is a tracked cell plus a tracked
/// allocation: readers call [`Canary::touch`] (a read access) whenever they use the object,
/// and dropping it is a write access. So a free that is not ordered after every reader's use
/// (a use after free) fails the model with a causality violation, a reader that sees an
/// object whose initialization was not published to it fails likewise, and an object never
/// freed fails the model as a leak.
#[derive(Debug, Default)]
pub(crate) struct Canary {
    #[cfg(loom)]
    cell: loom::cell::UnsafeCell<()>,
    #[cfg(loom)]
    _alloc: Option<loom::alloc::Track<()>>,
}

impl Canary {
    /// A fresh canary; under loom its creation counts as the object's initializing write.
    #[inline(always)]
    #[track_caller]
    pub(crate) fn new() -> Self {
        Self {
            #[cfg(loom)]
            cell: loom::cell::UnsafeCell::new(()),
            #[cfg(loom)]
            _alloc: Some(loom::alloc::Track::new(())),
        }
    }

    /// Records a read of the object this canary lives in.
    #[inline(always)]
    #[track_caller]
    pub(crate) fn touch(&self) {
        #[cfg(loom)]
        self.cell.with(|_| ());
    }
}

impl Drop for Canary {
    #[inline(always)]
    fn drop(&mut self) {
        // The free is modelled as a write to the object: it must happen after every read.
        #[cfg(loom)]
        self.cell.with_mut(|_| ());
    }
}

/// Tells the processor (or loom's scheduler) that this thread is waiting for another.
#[inline(always)]
#[allow(dead_code)]
pub(crate) fn spin_loop() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::hint::spin_loop();
}
