//! Versioned value slots: a seqlock whose data words are atomics, plus a one-entry *stash*
//! that lets readers finish even while the writer is stopped half-way through a write.
//!
//! A slot is 48 bytes: a sequence word and five data words. The writer (one thread) makes
//! the sequence odd, stores the data, then makes it even again; a reader loads the
//! sequence, loads the data, and accepts it only if the sequence is even and unchanged.
//! Data words are atomics loaded and stored with `Relaxed`, bracketed by fences: a racy
//! read of plain memory would be undefined behaviour in Rust, an atomic one is not (this is
//! crossbeam's `AtomicCell` approach). The argument:
//!
//! * Writer: `seq = s+1 (Release)`; `fence(Release)`; data stores; `seq = s+2 (Release)`.
//! * Reader: `s1 = seq (Acquire)`; data loads; `fence(Acquire)`; `s2 = seq (Relaxed)`.
//! * If any data load saw a store of a write that began after `s1`, the reader's acquire
//!   fence synchronizes with that write's release fence, so the write's odd store happens
//!   before the `s2` load, and `s2 != s1`: the torn read is rejected. If `s2 == s1` (even),
//!   every data load saw exactly the write that stored `s1`, whose stores the `s1` acquire
//!   load made visible.
//!
//! A plain seqlock reader must spin while the sequence is odd, i.e. wait for the writer,
//! which a preempted writer could make arbitrarily long. The stash removes that wait:
//! before it touches a slot, the writer copies the slot's current value into the stash,
//! tagged with the slot's address, under the stash's own sequence. A reader that finds a
//! slot odd reads the stash instead and, if it is stable and tagged with this slot, returns
//! that value: the value before the write in progress, which is a correct linearization
//! (the read overlapped the write). The odd store is `Release`, so a reader that sees it
//! also sees the stash written for it. A reader retries only when the writer has moved on
//! (finished the write, or stashed for another one), so readers are lock-free.
//!
//! Slot addresses are unique among live slots and the reader is pinned (see `epoch`), so
//! the slot a stash tag names cannot be freed and reallocated under the reader.

use crate::sync::Canary;
use crate::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering, fence};

/// The rarely-set part of a value: the metadata string and an explicit expire timestamp
/// (OffsetCommit v1 only). Immutable once published; replaced (and retired) as a whole. A
/// null pointer in the slot means empty metadata and no expire timestamp, which keeps the
/// common value in the slot's six words and updates of it free of allocation.
pub(crate) struct Meta {
    pub(crate) canary: Canary,
    pub(crate) text: Box<str>,
    pub(crate) expire_timestamp_ms: i64,
}

/// The expire timestamp a null [`Meta`] pointer stands for (Kafka's "none").
pub(crate) const NO_EXPIRE_TIMESTAMP_MS: i64 = -1;

/// The value of a slot, decoded.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fields {
    pub(crate) present: bool,
    pub(crate) offset: i64,
    pub(crate) leader_epoch: i32,
    pub(crate) commit_timestamp_ms: i64,
    pub(crate) log_position: u64,
    /// Null when the metadata is empty and there is no expire timestamp (the common case:
    /// no allocation at all).
    pub(crate) meta: *mut Meta,
}

impl Fields {
    pub(crate) const ABSENT: Fields = Fields {
        present: false,
        offset: 0,
        leader_epoch: 0,
        commit_timestamp_ms: 0,
        log_position: 0,
        meta: std::ptr::null_mut(),
    };
}

const PRESENT: u64 = 1 << 32;

/// The five data words, shared by slots and the stash.
struct Words {
    offset: AtomicU64,
    commit: AtomicU64,
    log_position: AtomicU64,
    meta: AtomicPtr<Meta>,
    /// Low 32 bits: the leader epoch; bit 32: present.
    epoch_present: AtomicU64,
}

impl Words {
    fn new(f: &Fields) -> Self {
        Self {
            offset: AtomicU64::new(f.offset as u64),
            commit: AtomicU64::new(f.commit_timestamp_ms as u64),
            log_position: AtomicU64::new(f.log_position),
            meta: AtomicPtr::new(f.meta),
            epoch_present: AtomicU64::new(encode_epoch(f)),
        }
    }

    #[inline(always)]
    fn load(&self) -> Fields {
        let ep = self.epoch_present.load(Ordering::Relaxed);
        Fields {
            present: ep & PRESENT != 0,
            leader_epoch: ep as u32 as i32,
            offset: self.offset.load(Ordering::Relaxed) as i64,
            commit_timestamp_ms: self.commit.load(Ordering::Relaxed) as i64,
            log_position: self.log_position.load(Ordering::Relaxed),
            meta: self.meta.load(Ordering::Relaxed),
        }
    }

    #[inline(always)]
    fn store(&self, f: &Fields) {
        self.offset.store(f.offset as u64, Ordering::Relaxed);
        self.commit
            .store(f.commit_timestamp_ms as u64, Ordering::Relaxed);
        self.log_position.store(f.log_position, Ordering::Relaxed);
        self.meta.store(f.meta, Ordering::Relaxed);
        self.epoch_present.store(encode_epoch(f), Ordering::Relaxed);
    }
}

fn encode_epoch(f: &Fields) -> u64 {
    (f.leader_epoch as u32 as u64) | if f.present { PRESENT } else { 0 }
}

/// Opens a seqlock write: odd sequence, published with Release so that whatever the writer
/// did before (the stash) is visible to a reader that sees the odd value; the fence keeps
/// the data stores after the odd store for readers.
#[inline(always)]
fn begin_write(seq: &AtomicU64) -> u64 {
    let s = seq.load(Ordering::Relaxed);
    seq.store(s.wrapping_add(1), Ordering::Release);
    fence(Ordering::Release);
    s
}

/// One value, versioned by a seqlock. 48 bytes.
pub(crate) struct Slot {
    seq: AtomicU64,
    words: Words,
}

impl Slot {
    pub(crate) fn new(f: &Fields) -> Self {
        Self {
            seq: AtomicU64::new(0),
            words: Words::new(f),
        }
    }

    /// The current value, for the writer (the only thread that stores to slots, so its own
    /// relaxed loads see its latest stores).
    #[inline]
    pub(crate) fn load_own(&self) -> Fields {
        self.words.load()
    }

    /// Writer only: replaces the value. Allocates nothing.
    #[inline]
    pub(crate) fn write(&self, stash: &Stash, f: &Fields) {
        stash.put(self as *const Slot as usize, &self.words.load());
        let s = begin_write(&self.seq);
        self.words.store(f);
        // Release: a reader that acquires the even value sees all the data stores.
        self.seq.store(s.wrapping_add(2), Ordering::Release);
    }

    /// Writer only, and only for a slot no reader can reach yet (see `bulk`): replaces the
    /// value without the seqlock or the stash. The Release store that later publishes the
    /// structure holding the slot makes the value visible.
    #[inline]
    pub(crate) fn write_unpublished(&self, f: &Fields) {
        self.words.store(f);
    }

    /// Reader: a consistent value, never torn, never older than one this thread saw before.
    #[inline]
    pub(crate) fn read(&self, stash: &Stash) -> Fields {
        loop {
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 & 1 == 0 {
                let f = self.words.load();
                fence(Ordering::Acquire);
                if self.seq.load(Ordering::Relaxed) == s1 {
                    return f;
                }
            } else if let Some(f) = stash.get(self as *const Slot as usize) {
                return f;
            }
            // The writer made progress since our first load; look again. (Under loom this
            // yields, which is how loom lets a spinning thread's stale loads catch up.)
            crate::sync::spin_loop();
        }
    }
}

/// The value of the slot the writer is writing (or wrote last), tagged with its address.
///
/// Written on every update, so it gets cache lines of its own: sharing one with the
/// read-mostly root pointers every lookup loads would cost each reader a miss per update.
#[repr(align(128))]
pub(crate) struct Stash {
    seq: AtomicU64,
    slot: AtomicUsize,
    words: Words,
}

impl Stash {
    pub(crate) fn new() -> Self {
        Self {
            seq: AtomicU64::new(0),
            slot: AtomicUsize::new(0),
            words: Words::new(&Fields::ABSENT),
        }
    }

    fn put(&self, slot: usize, f: &Fields) {
        let s = begin_write(&self.seq);
        self.slot.store(slot, Ordering::Relaxed);
        self.words.store(f);
        self.seq.store(s.wrapping_add(2), Ordering::Release);
    }

    fn get(&self, slot: usize) -> Option<Fields> {
        let s1 = self.seq.load(Ordering::Acquire);
        if s1 & 1 != 0 {
            return None;
        }
        let tag = self.slot.load(Ordering::Relaxed);
        let f = self.words.load();
        fence(Ordering::Acquire);
        (self.seq.load(Ordering::Relaxed) == s1 && tag == slot).then_some(f)
    }
}
