//! A bounded free list shared between threads: objects are taken by the thread that starts a
//! request and given back by the thread that finishes it, so the hot path reuses their heap
//! buffers instead of allocating.

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, bounded};

/// A bounded multi-producer, multi-consumer free list. Cloning it is one reference-count
/// increment; taking and giving back never allocate (crossbeam's array channel).
pub(crate) struct FreeList<T> {
    channel: Arc<(Sender<T>, Receiver<T>)>,
}

impl<T> Clone for FreeList<T> {
    fn clone(&self) -> Self {
        FreeList {
            channel: Arc::clone(&self.channel),
        }
    }
}

impl<T> FreeList<T> {
    /// A free list keeping at most `capacity` objects (at least one).
    pub(crate) fn new(capacity: usize) -> FreeList<T> {
        FreeList {
            channel: Arc::new(bounded(capacity.max(1))),
        }
    }

    /// A kept object, if any.
    pub(crate) fn take(&self) -> Option<T> {
        self.channel.1.try_recv().ok()
    }

    /// Keeps `object` for reuse; when the list is full it is dropped instead.
    pub(crate) fn give_back(&self, object: T) {
        let _ = self.channel.0.try_send(object);
    }

    /// Objects kept now.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn len(&self) -> usize {
        self.channel.1.len()
    }
}
