//! Bulk loading: recovery fills an empty cache with a whole offsets partition's log.
//!
//! A compacted log holds each key about once, so recovery is one insert per record. The
//! writer's normal path pays, per insert, for what concurrent readers need: seqlock and stash
//! writes, partition arrays grown ×1.5 by copy and retired through the epoch scheme, a group
//! lookup through a table of bare pointers (every probe dereferences a node). A bulk load
//! builds the structure privately instead: nothing it builds is reachable from the shared
//! root until [`BulkLoad::finish`] publishes the finished group table with one Release store.
//! So it writes slots without the seqlock and stash, frees what it replaces at once, grows
//! partition arrays to powers of two and trims them once at the end, finds groups through a
//! private index that keeps their hashes, and finds the topic of a run of records of one
//! (group, topic) — the records of one commit usually are — without any lookup. Readers
//! meanwhile see the cache as it was before the load (empty), then everything at once.

use std::ptr::{self, NonNull};

use super::intern::Interner;
use super::slot::Fields;
use super::table::{
    GroupNode, GroupTable, TopicList, TopicNode, free_group, free_topic, hash_group,
};
use super::{MIN_TABLE, OffsetCache, OffsetKey, OffsetValueRef};
use crate::Result;
use crate::sync::Canary;
use crate::sync::atomic::{AtomicPtr, Ordering};

/// Smallest partition array a bulk load allocates: small topics reach their final length
/// without a copy; `finish` trims the slack.
const BULK_PARTS_MIN: usize = 8;

/// An in-progress bulk load of an empty [`OffsetCache`], from
/// [`OffsetCache::bulk_load`]. Dropping it without [`finish`](BulkLoad::finish) discards
/// what it loaded and leaves the cache empty.
///
/// ```
/// use coffer::cache::{OffsetCache, OffsetKey, OffsetValueRef};
///
/// let mut cache = OffsetCache::new();
/// let reader = cache.reader();
/// let mut load = cache.bulk_load();
/// let value = OffsetValueRef {
///     offset: 42,
///     leader_epoch: 7,
///     commit_timestamp_ms: 1_700_000_000_000,
///     expire_timestamp_ms: -1,
///     metadata: "",
/// };
/// for partition in 0..3 {
///     let key = OffsetKey { group: "billing", topic: "invoices", partition };
///     load.replace(key, value, partition as u64)?;
/// }
/// // Not published yet: readers still see the empty cache.
/// assert!(reader.get("billing", "invoices", 1).is_none());
/// load.finish();
/// assert_eq!(reader.get("billing", "invoices", 1).map(|v| v.offset), Some(42));
/// assert_eq!(cache.len(), 3);
/// # Ok::<(), coffer::Error>(())
/// ```
pub struct BulkLoad<'c> {
    cache: &'c mut OffsetCache,
    index: GroupIndex,
    /// The topic the last record named, with its group.
    last: Option<(NonNull<GroupNode>, NonNull<TopicNode>)>,
    published: bool,
}

impl OffsetCache {
    /// Starts a bulk load (recovery's replay) into this cache, which must hold no key.
    ///
    /// # Panics
    /// If the cache holds keys (a bulk load replaces the whole structure).
    pub fn bulk_load(&mut self) -> BulkLoad<'_> {
        assert!(
            self.live_keys == 0 && self.groups_live == 0 && self.interner.len() == 0,
            "a bulk load needs an empty offset cache"
        );
        BulkLoad {
            cache: self,
            index: GroupIndex::new(),
            last: None,
            published: false,
        }
    }
}

impl BulkLoad<'_> {
    /// As [`OffsetCache::replace`]: stores `value` for `key` and returns the log position
    /// of the value it replaced.
    ///
    /// # Errors
    /// As for [`OffsetCache::upsert`].
    pub fn replace(
        &mut self,
        key: OffsetKey<'_>,
        value: OffsetValueRef<'_>,
        log_position: u64,
    ) -> Result<Option<u64>> {
        let p = self.cache.check_partition(key.partition)?;
        let topic = self.topic_for_insert(key.group, key.topic, p);
        // SAFETY: a private node of this load, alive until `finish` or the drop.
        let topic = unsafe { topic.as_ref() };
        // SAFETY: private (the writer's access rules hold trivially).
        let slot = &unsafe { topic.parts() }.slots[p];
        let old = slot.load_own();
        let meta = self
            .cache
            .meta_for(old.meta, value.metadata, value.expire_timestamp_ms);
        slot.write_unpublished(&value.fields(log_position, meta));
        if !old.meta.is_null() && old.meta != meta {
            // SAFETY: unlinked just now, and never reachable by a reader.
            drop(unsafe { Box::from_raw(old.meta) });
        }
        if !old.present {
            topic.set_live(topic.live() + 1);
            return Ok(None);
        }
        Ok(Some(old.log_position))
    }

    /// As [`OffsetCache::take`]: removes `key` (a tombstone) and returns the log position
    /// of the removed value.
    ///
    /// # Errors
    /// As for [`OffsetCache::upsert`].
    pub fn take(&mut self, key: OffsetKey<'_>) -> Result<Option<u64>> {
        let p = self.cache.check_partition(key.partition)?;
        let Some(topic) = self.find_topic(key.group, key.topic) else {
            return Ok(None);
        };
        // SAFETY: private node of this load.
        let topic = unsafe { topic.as_ref() };
        // SAFETY: private.
        let Some(slot) = unsafe { topic.parts() }.slots.get(p) else {
            return Ok(None);
        };
        let old = slot.load_own();
        if !old.present {
            return Ok(None);
        }
        slot.write_unpublished(&Fields::ABSENT);
        if !old.meta.is_null() {
            // SAFETY: unlinked just now, never reachable by a reader.
            drop(unsafe { Box::from_raw(old.meta) });
        }
        // Emptied topics stay until `finish` drops them: a later record may refill them.
        topic.set_live(topic.live() - 1);
        Ok(Some(old.log_position))
    }

    /// Trims the partition arrays, drops emptied topics and groups, and publishes the
    /// loaded structure to the readers with one Release store.
    pub fn finish(mut self) {
        let mut survivors: Vec<NonNull<GroupNode>> = Vec::with_capacity(self.index.len);
        let (mut group_topics, mut live_keys) = (0usize, 0usize);
        for g in self.index.drain() {
            // SAFETY: private node of this load.
            let (topics, keys) = unsafe { self.settle_group(g) };
            if topics == 0 {
                // SAFETY: private, and its topic list is empty now.
                unsafe { free_group(g.as_ptr()) };
                continue;
            }
            group_topics += topics;
            live_keys += keys;
            survivors.push(g);
        }
        let capacity = ((survivors.len() + 1) * 2)
            .next_power_of_two()
            .max(MIN_TABLE);
        let table = GroupTable::with_capacity(capacity);
        for g in &survivors {
            table.place_unpublished(g.as_ptr());
        }
        let cache = &mut *self.cache;
        // Release: a reader that loads the new table sees everything loaded into it.
        let old = cache
            .shared
            .groups
            .swap(Box::into_raw(Box::new(table)), Ordering::Release);
        // SAFETY: unlinked just now; it held no group (the cache was empty), only perhaps
        // tombstones, and readers may still be walking it.
        cache.retire(unsafe { Box::from_raw(old) });
        cache.groups_live = survivors.len();
        cache.groups_used = survivors.len();
        cache.group_topics = group_topics;
        cache.live_keys = live_keys;
        self.published = true;
    }

    /// Drops `g`'s emptied topics and trims the others' partition arrays to their highest
    /// live partition; returns the topics and keys left.
    ///
    /// # Safety
    /// `g` is a private node of this load.
    unsafe fn settle_group(&mut self, g: NonNull<GroupNode>) -> (usize, usize) {
        // SAFETY: private (contract).
        let group = unsafe { g.as_ref() };
        let list = unsafe { group.topics() };
        let listed = list.topics.len();
        let mut kept = Vec::with_capacity(listed);
        let mut keys = 0usize;
        for &t in list.topics.iter() {
            // SAFETY: private.
            let topic = unsafe { t.as_ref() };
            if topic.live() == 0 {
                let name = topic.name;
                // SAFETY: private; unlinked from the list below.
                unsafe { free_topic(t.as_ptr()) };
                // No reader ever saw the name: free it at once.
                drop(self.cache.interner.release(name));
                continue;
            }
            // SAFETY: private.
            let parts = unsafe { topic.parts() };
            let used = parts.used_len();
            if used < parts.slots.len() {
                resize_private(topic, used);
            }
            keys += topic.live() as usize;
            kept.push(t);
        }
        let topics = kept.len();
        if topics != listed {
            replace_list(group, kept);
        }
        (topics, keys)
    }

    /// The memoized topic when `group` and `topic` are the last record's.
    fn memo(&self, group: &str, topic: &str) -> Option<NonNull<TopicNode>> {
        let (g, t) = self.last?;
        // SAFETY: private nodes of this load.
        let same = unsafe { &*g.as_ref().name == group && t.as_ref().name() == topic };
        same.then_some(t)
    }

    fn find_topic(&mut self, group: &str, topic: &str) -> Option<NonNull<TopicNode>> {
        if let Some(t) = self.memo(group, topic) {
            return Some(t);
        }
        let g = self.index.find(group, hash_group(group))?;
        // SAFETY: private node.
        let t = NonNull::from(unsafe { g.as_ref().topics().find(topic) }?);
        self.last = Some((g, t));
        Some(t)
    }

    /// The topic node for (`group`, `topic`), created if needed, with a partition array
    /// long enough for `p`.
    fn topic_for_insert(&mut self, group: &str, topic: &str, p: usize) -> NonNull<TopicNode> {
        let t = match self.memo(group, topic) {
            Some(t) => t,
            None => {
                let hash = hash_group(group);
                let g = match self.index.find(group, hash) {
                    Some(g) => g,
                    None => self.add_group(group, hash),
                };
                // SAFETY: private node.
                let found = unsafe { g.as_ref().topics().find(topic) };
                let t = match found {
                    Some(t) => NonNull::from(t),
                    None => self.add_topic(g, topic, p),
                };
                self.last = Some((g, t));
                t
            }
        };
        // SAFETY: private node.
        let node = unsafe { t.as_ref() };
        // SAFETY: private.
        if p >= unsafe { node.parts() }.slots.len() {
            resize_private(node, self.parts_len(p));
        }
        t
    }

    /// Partition array length for a load that reached partition `p`.
    fn parts_len(&self, p: usize) -> usize {
        (p + 1)
            .next_power_of_two()
            .max(BULK_PARTS_MIN)
            .min(self.cache.max_partitions as usize)
    }

    fn add_group(&mut self, group: &str, hash: u64) -> NonNull<GroupNode> {
        let list = Box::new(TopicList {
            canary: Canary::new(),
            topics: Box::new([]),
        });
        let node = NonNull::from(Box::leak(Box::new(GroupNode {
            canary: Canary::new(),
            hash,
            name: group.into(),
            topics: AtomicPtr::new(Box::into_raw(list)),
        })));
        self.index.insert(hash, node);
        node
    }

    fn add_topic(&mut self, g: NonNull<GroupNode>, topic: &str, p: usize) -> NonNull<TopicNode> {
        let name = self.cache.interner.acquire(topic);
        let node = TopicNode::new_unlinked(name, self.parts_len(p));
        // SAFETY: private node.
        let group = unsafe { g.as_ref() };
        replace_list(group, unsafe { group.topics() }.with_topic(node));
        node
    }
}

impl Drop for BulkLoad<'_> {
    fn drop(&mut self) {
        if self.published {
            return;
        }
        // Abandoned: free what was loaded; the cache is as empty as it was before.
        for g in self.index.drain() {
            // SAFETY: private node of this load, freed once.
            unsafe { free_group(g.as_ptr()) };
        }
        // The cache held no name before the load: every name left is this load's.
        self.cache.interner = Interner::default();
    }
}

/// Replaces a private group's topic list, freeing the old list (not its topics).
fn replace_list(group: &GroupNode, topics: Vec<NonNull<TopicNode>>) {
    let list = Box::into_raw(Box::new(TopicList {
        canary: Canary::new(),
        topics: topics.into_boxed_slice(),
    }));
    let old = group.topics.swap(list, Ordering::Relaxed);
    // SAFETY: private, unlinked just now; dropping a list does not drop its topics.
    drop(unsafe { Box::from_raw(old) });
}

/// Replaces a private topic's partition array with a copy of length `new_len` (which keeps
/// every live partition), freeing the old one (its metadata moves to the copy).
fn resize_private(topic: &TopicNode, new_len: usize) {
    // SAFETY: private.
    let new = Box::into_raw(unsafe { topic.parts() }.copy_with_len(new_len));
    let old = topic.parts.swap(new, Ordering::Relaxed);
    // SAFETY: private, unlinked just now; dropping a `PartArray` frees no metadata.
    drop(unsafe { Box::from_raw(old) });
}

/// The load's private group index: open addressing over (hash, node), so a probe compares
/// hashes without touching nodes. At most half full; empty slots hold a null node.
struct GroupIndex {
    slots: Vec<(u64, *mut GroupNode)>,
    len: usize,
}

impl GroupIndex {
    fn new() -> Self {
        GroupIndex {
            slots: vec![(0, ptr::null_mut()); MIN_TABLE],
            len: 0,
        }
    }

    fn find(&self, group: &str, hash: u64) -> Option<NonNull<GroupNode>> {
        let mask = self.slots.len() - 1;
        let mut i = hash as usize & mask;
        // Bounded: at most half the slots are used, so a null ends every probe.
        loop {
            let (h, node) = self.slots[i];
            let node = NonNull::new(node)?;
            // SAFETY: a private node of the load.
            if h == hash && &*unsafe { node.as_ref() }.name == group {
                return Some(node);
            }
            i = (i + 1) & mask;
        }
    }

    fn insert(&mut self, hash: u64, node: NonNull<GroupNode>) {
        if (self.len + 1) * 2 > self.slots.len() {
            let bigger = vec![(0, ptr::null_mut()); self.slots.len() * 2];
            let old = std::mem::replace(&mut self.slots, bigger);
            for (h, n) in old {
                if !n.is_null() {
                    self.place(h, n);
                }
            }
        }
        self.place(hash, node.as_ptr());
        self.len += 1;
    }

    fn place(&mut self, hash: u64, node: *mut GroupNode) {
        let mask = self.slots.len() - 1;
        let mut i = hash as usize & mask;
        while !self.slots[i].1.is_null() {
            i = (i + 1) & mask;
        }
        self.slots[i] = (hash, node);
    }

    /// Empties the index, yielding every node once.
    fn drain(&mut self) -> impl Iterator<Item = NonNull<GroupNode>> + use<> {
        self.len = 0;
        let slots = std::mem::replace(&mut self.slots, vec![(0, ptr::null_mut()); MIN_TABLE]);
        slots.into_iter().filter_map(|(_, n)| NonNull::new(n))
    }
}
