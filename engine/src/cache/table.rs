//! The shared structure readers walk: group table → group → topic list → topic → partition
//! array → slot.
//!
//! * [`GroupTable`]: open addressing with linear probing, slots are pointers to
//!   [`GroupNode`]s. Empty is null, a removed group leaves [`tombstone`] so probes for other
//!   groups keep going past it. At most 3/4 of the slots are used (live or tombstone), so a
//!   probe always ends at a null. The table is never resized in place: the writer builds a
//!   bigger (or tombstone-free) copy, publishes it with one Release store, and retires the
//!   old one.
//! * [`GroupNode`]: the group id (stored once: this is its interned copy) and a pointer to an
//!   immutable [`TopicList`], replaced copy-on-write when a topic is added or removed (rare,
//!   and groups have few topics, so a linear scan beats a hash table here).
//! * [`TopicNode`]: the interned topic name and a pointer to a dense [`PartArray`] indexed by
//!   partition number, Kafka partitions being `0..n`. A slot is the key's whole cost.
//!
//! Everything a reader reaches is either immutable after its Release publication or an
//! atomic; everything the writer unlinks is retired, never freed directly.

use std::ptr::{self, NonNull};

use super::intern::Interned;
use super::slot::{Fields, Meta, Slot};
use crate::sync::Canary;
use crate::sync::atomic::{AtomicPtr, Ordering};
use crate::sync::cell::UnsafeCell;

/// The marker a removed group leaves in its table slot. Never dereferenced.
pub(crate) fn tombstone() -> *mut GroupNode {
    ptr::without_provenance_mut(1)
}

/// Whether a group-table slot value points at a node.
#[inline(always)]
pub(crate) fn is_node(p: *mut GroupNode) -> bool {
    !p.is_null() && p != tombstone()
}

/// Hash of a group id (xxh64: fast on the short strings group ids are).
#[inline]
pub(crate) fn hash_group(group: &str) -> u64 {
    xxhash_rust::xxh64::xxh64(group.as_bytes(), 0)
}

pub(crate) struct GroupTable {
    pub(crate) canary: Canary,
    pub(crate) mask: usize,
    pub(crate) slots: Box<[AtomicPtr<GroupNode>]>,
}

pub(crate) struct GroupNode {
    pub(crate) canary: Canary,
    pub(crate) hash: u64,
    pub(crate) name: Box<str>,
    pub(crate) topics: AtomicPtr<TopicList>,
}

pub(crate) struct TopicList {
    pub(crate) canary: Canary,
    pub(crate) topics: Box<[NonNull<TopicNode>]>,
}

pub(crate) struct TopicNode {
    pub(crate) canary: Canary,
    pub(crate) name: NonNull<Interned>,
    pub(crate) parts: AtomicPtr<PartArray>,
    /// Live partitions in `parts`; read and written by the writer only.
    pub(crate) live: UnsafeCell<u32>,
}

pub(crate) struct PartArray {
    pub(crate) canary: Canary,
    pub(crate) slots: Box<[Slot]>,
}

// SAFETY (all five): the raw pointers inside are owned by the cache and only followed by
// pinned readers (see `epoch`) or the writer; shared state is atomics or immutable-after-
// publication data; the writer-only `live` cell is touched by the writer alone.
unsafe impl Send for GroupTable {}
unsafe impl Sync for GroupTable {}
unsafe impl Send for GroupNode {}
unsafe impl Sync for GroupNode {}
unsafe impl Send for TopicList {}
unsafe impl Sync for TopicList {}
unsafe impl Send for TopicNode {}
unsafe impl Sync for TopicNode {}
unsafe impl Send for PartArray {}
unsafe impl Sync for PartArray {}
// SAFETY: `Meta` is immutable text plus a canary.
unsafe impl Send for Meta {}

impl GroupTable {
    pub(crate) fn with_capacity(cap: usize) -> Self {
        debug_assert!(cap.is_power_of_two());
        Self {
            canary: Canary::new(),
            mask: cap - 1,
            slots: (0..cap).map(|_| AtomicPtr::new(ptr::null_mut())).collect(),
        }
    }

    /// The node of `group`, if present.
    ///
    /// # Safety
    /// The caller is pinned, or is the writer; `self` was reached under that protection.
    #[inline]
    pub(crate) unsafe fn find(&self, group: &str, hash: u64) -> Option<&GroupNode> {
        self.canary.touch();
        let mut i = hash as usize & self.mask;
        loop {
            // Acquire: pairs with the Release that published the node, so its fields are
            // initialized.
            let p = self.slots[i].load(Ordering::Acquire);
            if p.is_null() {
                return None;
            }
            if p != tombstone() {
                // SAFETY: non-null, non-tombstone slots point at live or retired-but-
                // protected nodes.
                let node = unsafe { &*p };
                node.canary.touch();
                if node.hash == hash && &*node.name == group {
                    return Some(node);
                }
            }
            i = (i + 1) & self.mask;
        }
    }
}

impl GroupTable {
    /// Places `node` in this table, which is not yet published and holds no tombstone.
    pub(crate) fn place_unpublished(&self, node: *mut GroupNode) {
        // SAFETY: nodes placed in a table are live.
        let hash = unsafe { (*node).hash };
        let mut i = hash as usize & self.mask;
        while !self.slots[i].load(Ordering::Relaxed).is_null() {
            i = (i + 1) & self.mask;
        }
        self.slots[i].store(node, Ordering::Relaxed);
    }
}

impl GroupNode {
    /// The topic list. Safety as for [`GroupTable::find`].
    #[inline]
    pub(crate) unsafe fn topics(&self) -> &TopicList {
        // SAFETY: never null once published; protected by the caller's pin.
        let list = unsafe { &*self.topics.load(Ordering::Acquire) };
        list.canary.touch();
        list
    }
}

impl TopicList {
    /// A copy of this list's topics with `topic` added.
    pub(crate) fn with_topic(&self, topic: NonNull<TopicNode>) -> Vec<NonNull<TopicNode>> {
        let mut topics = Vec::with_capacity(self.topics.len() + 1);
        topics.extend_from_slice(&self.topics);
        topics.push(topic);
        topics
    }

    /// The node of `topic` in this list. Safety as for [`GroupTable::find`].
    #[inline]
    pub(crate) unsafe fn find(&self, topic: &str) -> Option<&TopicNode> {
        self.topics.iter().find_map(|t| {
            // SAFETY: list entries are live or protected nodes.
            let t = unsafe { t.as_ref() };
            (unsafe { t.name() } == topic).then_some(t)
        })
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &TopicNode> {
        // SAFETY: as in `find`.
        self.topics.iter().map(|t| unsafe { t.as_ref() })
    }
}

impl TopicNode {
    /// A new topic node named `name` with `len` absent partitions, not yet linked anywhere.
    pub(crate) fn new_unlinked(name: NonNull<Interned>, len: usize) -> NonNull<TopicNode> {
        NonNull::from(Box::leak(Box::new(TopicNode {
            canary: Canary::new(),
            name,
            parts: AtomicPtr::new(Box::into_raw(Box::new(PartArray::absent(len)))),
            live: UnsafeCell::new(0),
        })))
    }

    /// The topic name. Safety as for [`GroupTable::find`].
    #[inline]
    pub(crate) unsafe fn name(&self) -> &str {
        self.canary.touch();
        // SAFETY: the interned name outlives every topic node using it, plus a grace period.
        let name = unsafe { self.name.as_ref() };
        name.canary.touch();
        &name.text
    }

    /// The partition array. Safety as for [`GroupTable::find`].
    #[inline]
    pub(crate) unsafe fn parts(&self) -> &PartArray {
        // SAFETY: never null once published; protected by the caller's pin.
        let parts = unsafe { &*self.parts.load(Ordering::Acquire) };
        parts.canary.touch();
        parts
    }

    pub(crate) fn live(&self) -> u32 {
        self.live.with(|p| unsafe { *p })
    }

    pub(crate) fn set_live(&self, n: u32) {
        self.live.with_mut(|p| unsafe { *p = n })
    }
}

impl PartArray {
    pub(crate) fn absent(len: usize) -> Self {
        Self {
            canary: Canary::new(),
            slots: (0..len).map(|_| Slot::new(&Fields::ABSENT)).collect(),
        }
    }

    /// Slots up to and including the highest present one: the length `shrink_to_fit` trims
    /// to.
    pub(crate) fn used_len(&self) -> usize {
        self.slots
            .iter()
            .rposition(|s| s.load_own().present)
            .map_or(0, |i| i + 1)
    }

    /// A copy `len` slots long (writer only): the values of the first `len` slots, absent
    /// beyond this array's end. The metadata pointers are shared with this array, which
    /// must then be dropped without freeing them (dropping a `PartArray` frees none).
    pub(crate) fn copy_with_len(&self, len: usize) -> Box<PartArray> {
        let slots: Box<[Slot]> = (0..len)
            .map(|i| match self.slots.get(i) {
                Some(s) => Slot::new(&s.load_own()),
                None => Slot::new(&Fields::ABSENT),
            })
            .collect();
        Box::new(PartArray {
            canary: Canary::new(),
            slots,
        })
    }
}

/// Frees a whole group-table tree. Only for the last owner of the cache (no readers left).
pub(crate) fn free_tree(table: *mut GroupTable) {
    if table.is_null() {
        return;
    }
    // SAFETY: exclusive access: every handle to the cache is gone. Each node is reachable
    // from exactly one place in the current tree (retired ones are in the garbage bags).
    unsafe {
        let table = Box::from_raw(table);
        for slot in table.slots.iter() {
            let g = slot.load(Ordering::Acquire);
            if is_node(g) {
                free_group(g);
            }
        }
    }
}

/// Frees a group node with its topic list, topic nodes, partition arrays and metadata (not
/// the interned topic names, which the interner owns).
///
/// # Safety
/// `g` came from `Box::into_raw`, and no reader can reach it or anything under it.
pub(crate) unsafe fn free_group(g: *mut GroupNode) {
    // SAFETY: exclusive ownership, per the contract; each object is freed once.
    unsafe {
        let g = Box::from_raw(g);
        let list = Box::from_raw(g.topics.load(Ordering::Acquire));
        for t in list.topics.iter() {
            free_topic(t.as_ptr());
        }
    }
}

/// Frees a topic node, its partition array and the metadata its slots hold.
///
/// # Safety
/// As for [`free_group`].
pub(crate) unsafe fn free_topic(t: *mut TopicNode) {
    // SAFETY: exclusive ownership, per the contract.
    unsafe {
        let t = Box::from_raw(t);
        let parts = Box::from_raw(t.parts.load(Ordering::Acquire));
        for s in parts.slots.iter() {
            let meta = s.load_own().meta;
            if !meta.is_null() {
                drop(Box::from_raw(meta));
            }
        }
    }
}
