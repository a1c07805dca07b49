//! The lock-free offset cache: (group, topic, partition) → committed offset, written by the
//! shard that owns an offsets partition and read by any thread without locks.
//!
//! The engine keeps **one cache per offsets partition**: the shard that owns the partition
//! holds the [`OffsetCache`] (the writer) and hands out [`OffsetCacheReader`]s. Listing the
//! groups of a partition is then a walk of one table, and unloading a partition (on
//! reassignment) drops one cache.
//!
//! * Readers never block and never take a lock: they pin an epoch (two atomic increments on
//!   a per-thread-striped counter) and walk immutable or atomic data.
//! * A reader never sees a torn value (the offset of one commit with the epoch or metadata
//!   of another): values live in seqlock-versioned slots of atomics (see `slot`).
//! * A reader never sees a key go back in time: every path to a key's value leads to the
//!   one slot the writer writes (or a frozen copy of it that was current when the reader
//!   loaded its pointer), and the writer publishes every new structure with Release.
//! * Updating an existing key allocates nothing when its metadata is unchanged or empty
//!   (and it carries no expire timestamp, which only OffsetCommit v1 sets).
//! * Group ids are stored once (in their group node); topic names once per cache (interned).
//!
//! See `docs/cache.md` for the design and the memory-ordering argument; the loom models in
//! `loom_tests.rs` check it.
//!
//! # Example
//!
//! ```
//! use coffer::cache::{OffsetCache, OffsetKey, OffsetValueRef};
//!
//! let mut cache = OffsetCache::new();
//! let reader = cache.reader(); // Clone + Send + Sync: hand it to any thread
//! let key = OffsetKey { group: "billing", topic: "invoices", partition: 3 };
//! let value = OffsetValueRef {
//!     offset: 42,
//!     leader_epoch: 7,
//!     commit_timestamp_ms: 1_700_000_000_000,
//!     expire_timestamp_ms: -1,
//!     metadata: "",
//! };
//! cache.upsert(key, value, /* log_position */ 1234)?;
//!
//! let got = reader.get("billing", "invoices", 3).expect("present");
//! assert_eq!(got.offset, 42);
//! assert_eq!(reader.groups(), vec!["billing".to_string()]);
//!
//! // Batch reads pin once.
//! let guard = reader.pin();
//! let mut n = 0;
//! guard.for_each_in_group("billing", |_topic, _partition, _value| n += 1);
//! assert_eq!(n, 1);
//! drop(guard);
//!
//! assert!(cache.remove(key)?);
//! assert!(reader.get("billing", "invoices", 3).is_none());
//! # Ok::<(), coffer::Error>(())
//! ```

mod bulk;
mod epoch;
mod intern;
mod slot;
mod table;

#[cfg(all(test, loom))]
mod loom_tests;
#[cfg(all(test, not(loom)))]
mod tests;

use std::ptr::{self, NonNull};

use crate::sync::atomic::{AtomicPtr, Ordering};
use crate::sync::{Arc, Canary, Mutex};
use crate::{Error, Result};

pub use bulk::BulkLoad;
use epoch::{Collector, Guard, Reclaimer};
use intern::Interner;
use slot::{Fields, Meta, NO_EXPIRE_TIMESTAMP_MS, Slot, Stash};
use table::{
    GroupNode, GroupTable, PartArray, TopicList, TopicNode, hash_group, is_node, tombstone,
};

/// The largest partition number (exclusive) the cache accepts by default. Partition arrays
/// are dense, so an absurd partition number would cost memory in proportion; Kafka topics
/// stay far below this.
pub const DEFAULT_MAX_PARTITIONS: i32 = 1 << 20;

/// Smallest group table.
const MIN_TABLE: usize = 8;

/// The key of a committed offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OffsetKey<'a> {
    /// Consumer group id.
    pub group: &'a str,
    /// Topic name.
    pub topic: &'a str,
    /// Partition number (non-negative).
    pub partition: i32,
}

/// A committed value, borrowing its metadata (from the caller on upsert, from the cache
/// while a [`ReadGuard`] is held on reads).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffsetValueRef<'a> {
    /// The committed offset: the offset of the next record to read. Stored as given.
    pub offset: i64,
    /// The leader epoch the client saw, or -1.
    pub leader_epoch: i32,
    /// When the commit was made, in ms since the epoch.
    pub commit_timestamp_ms: i64,
    /// When the commit expires, in ms since the epoch; -1 for none.
    pub expire_timestamp_ms: i64,
    /// Client metadata, possibly empty.
    pub metadata: &'a str,
}

/// A committed value with owned metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetValue {
    /// See [`OffsetValueRef::offset`].
    pub offset: i64,
    /// See [`OffsetValueRef::leader_epoch`].
    pub leader_epoch: i32,
    /// See [`OffsetValueRef::commit_timestamp_ms`].
    pub commit_timestamp_ms: i64,
    /// See [`OffsetValueRef::expire_timestamp_ms`].
    pub expire_timestamp_ms: i64,
    /// See [`OffsetValueRef::metadata`].
    pub metadata: String,
}

impl OffsetValueRef<'_> {
    /// Copies the value out, metadata included (allocates only for non-empty metadata).
    pub fn to_owned_value(&self) -> OffsetValue {
        OffsetValue {
            offset: self.offset,
            leader_epoch: self.leader_epoch,
            commit_timestamp_ms: self.commit_timestamp_ms,
            expire_timestamp_ms: self.expire_timestamp_ms,
            metadata: self.metadata.to_owned(),
        }
    }
}

impl OffsetValueRef<'_> {
    /// The slot fields of this value, present, with its log position and metadata pointer.
    fn fields(&self, log_position: u64, meta: *mut slot::Meta) -> Fields {
        Fields {
            present: true,
            offset: self.offset,
            leader_epoch: self.leader_epoch,
            commit_timestamp_ms: self.commit_timestamp_ms,
            log_position,
            meta,
        }
    }
}

impl OffsetValue {
    /// Borrows the value.
    pub fn as_ref(&self) -> OffsetValueRef<'_> {
        OffsetValueRef {
            offset: self.offset,
            leader_epoch: self.leader_epoch,
            commit_timestamp_ms: self.commit_timestamp_ms,
            expire_timestamp_ms: self.expire_timestamp_ms,
            metadata: &self.metadata,
        }
    }
}

/// One entry of [`OffsetCacheReader::group_offsets`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionOffset {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
    /// The committed value.
    pub value: OffsetValue,
}

/// Memory accounting of a cache, from [`OffsetCache::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Keys with a committed value.
    pub live_keys: usize,
    /// Groups with at least one live key.
    pub groups: usize,
    /// (group, topic) pairs with at least one live key.
    pub group_topics: usize,
    /// Distinct topic names interned.
    pub topic_names: usize,
    /// Heap bytes of the structure (tables, nodes, names, slots), metadata strings excluded.
    pub structure_bytes: usize,
    /// Heap bytes of metadata strings (and their headers).
    pub metadata_bytes: usize,
    /// Fixed bytes every cache has regardless of size (reader stripes, stash).
    pub fixed_bytes: usize,
    /// Retired objects not yet freed (waiting for readers to move on).
    pub pending_garbage: usize,
}

impl CacheStats {
    /// Structure bytes per live key (metadata and the fixed part excluded).
    pub fn bytes_per_key(&self) -> f64 {
        if self.live_keys == 0 {
            0.0
        } else {
            self.structure_bytes as f64 / self.live_keys as f64
        }
    }
}

/// What writer and readers share.
struct Shared {
    collector: Collector,
    stash: Stash,
    groups: AtomicPtr<GroupTable>,
    /// Garbage and the interner the writer leaves behind when it is dropped before its
    /// readers; freed with the last handle. Locked once, by the writer's drop.
    orphans: Mutex<Vec<Box<dyn Send>>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The last handle is going: no reader is pinned, nothing can be reached any more.
        table::free_tree(self.groups.load(Ordering::Acquire));
        // `orphans` (garbage, then the interner with the topic names) drops after this.
    }
}

/// The writer of an offset cache: owned by the shard thread that owns the offsets
/// partition. `Send` (it may be built on one thread and moved to its shard), not `Clone`
/// and not `Sync`: there is exactly one writer.
pub struct OffsetCache {
    shared: Arc<Shared>,
    reclaim: Reclaimer,
    interner: Interner,
    groups_live: usize,
    /// Group-table slots used: live groups plus tombstones.
    groups_used: usize,
    group_topics: usize,
    live_keys: usize,
    max_partitions: i32,
}

/// A reader of an offset cache: `Clone + Send + Sync`, usable from any thread, never blocks.
#[derive(Clone)]
pub struct OffsetCacheReader {
    shared: Arc<Shared>,
}

/// A pinned read session: values and names read through it borrow from the cache and stay
/// valid while it lives. Holding one for long delays memory reclamation (never the writer).
pub struct ReadGuard<'a> {
    shared: &'a Shared,
    _pin: Guard<'a>,
}

impl Default for OffsetCache {
    fn default() -> Self {
        Self::new()
    }
}

/// Updates to one (group, topic) of an [`OffsetCache`]: see
/// [`OffsetCache::topic_writer`]. It holds the cache mutably, so the topic cannot be removed
/// while it lives.
pub struct TopicWriter<'c> {
    cache: &'c mut OffsetCache,
    topic: *const TopicNode,
}

impl TopicWriter<'_> {
    /// [`OffsetCache::replace`] for `partition` of this writer's group and topic.
    ///
    /// # Errors
    /// As for [`OffsetCache::upsert`].
    pub fn replace(
        &mut self,
        partition: i32,
        value: OffsetValueRef<'_>,
        log_position: u64,
    ) -> Result<Option<u64>> {
        let p = self.cache.check_partition(partition)?;
        // SAFETY: writer access (the cache is borrowed mutably); the topic is live, since
        // only the writer removes topics and it is borrowed here.
        self.cache.ensure_len(unsafe { &*self.topic }, p);
        Ok(self.cache.replace_in(self.topic, p, value, log_position))
    }
}

impl OffsetCache {
    /// An empty cache accepting partitions `0..DEFAULT_MAX_PARTITIONS`.
    pub fn new() -> Self {
        Self::with_max_partitions(DEFAULT_MAX_PARTITIONS)
    }

    /// An empty cache accepting partitions `0..max_partitions`.
    pub fn with_max_partitions(max_partitions: i32) -> Self {
        let table = Box::new(GroupTable::with_capacity(MIN_TABLE));
        Self {
            shared: Arc::new(Shared {
                collector: Collector::new(),
                stash: Stash::new(),
                groups: AtomicPtr::new(Box::into_raw(table)),
                orphans: Mutex::new(Vec::new()),
            }),
            reclaim: Reclaimer::new(),
            interner: Interner::default(),
            groups_live: 0,
            groups_used: 0,
            group_topics: 0,
            live_keys: 0,
            max_partitions: max_partitions.max(1),
        }
    }

    /// A new reader handle.
    pub fn reader(&self) -> OffsetCacheReader {
        OffsetCacheReader {
            shared: self.shared.clone(),
        }
    }

    fn table(&self) -> &GroupTable {
        // SAFETY: the writer is the only thread that replaces or frees tables, and it
        // frees them only through `reclaim`, after they are unlinked.
        unsafe { &*self.shared.groups.load(Ordering::Acquire) }
    }

    fn find_topic(&self, group: &str, topic: &str) -> Option<(&GroupNode, &TopicNode)> {
        // SAFETY: writer access (see `table`).
        unsafe {
            let g = self.table().find(group, hash_group(group))?;
            let t = g.topics().find(topic)?;
            Some((g, t))
        }
    }

    fn check_partition(&self, partition: i32) -> Result<usize> {
        if partition < 0 {
            return Err(Error::InvalidPartition(partition));
        }
        if partition >= self.max_partitions {
            return Err(Error::InvalidRequest(
                "partition number beyond the offset cache's max_partitions",
            ));
        }
        Ok(partition as usize)
    }

    /// Stores `value` as the committed value of `key`, with the log position of the record
    /// that carries it (for the compactor; see [`OffsetCache::log_position`]).
    ///
    /// Updating an existing key allocates nothing unless its metadata changes to a
    /// different non-empty string. Inserting a key may allocate (a group, a topic, a larger
    /// partition array).
    ///
    /// # Errors
    /// [`Error::InvalidPartition`] for a negative partition, [`Error::InvalidRequest`] for
    /// one at or beyond the cache's `max_partitions`.
    pub fn upsert(
        &mut self,
        key: OffsetKey<'_>,
        value: OffsetValueRef<'_>,
        log_position: u64,
    ) -> Result<()> {
        self.replace(key, value, log_position).map(|_| ())
    }

    /// [`upsert`](Self::upsert), returning the log position of the value it replaced (the
    /// record that is now dead, for the compactor's accounting).
    ///
    /// # Errors
    /// As for [`OffsetCache::upsert`].
    pub fn replace(
        &mut self,
        key: OffsetKey<'_>,
        value: OffsetValueRef<'_>,
        log_position: u64,
    ) -> Result<Option<u64>> {
        let p = self.check_partition(key.partition)?;
        let topic = self.topic_for_insert(key.group, key.topic, p);
        Ok(self.replace_in(topic, p, value, log_position))
    }

    /// A writer for a run of updates to one (group, topic), found (or created) once: what
    /// [`replace`](Self::replace) does per key, without its group and topic lookups. A flush
    /// applies a request's partitions of one topic back to back, so most of its updates
    /// take this path.
    ///
    /// # Errors
    /// As for [`OffsetCache::upsert`], for `first_partition`.
    ///
    /// # Example
    /// ```
    /// use coffer::cache::{OffsetCache, OffsetValueRef};
    /// let mut cache = OffsetCache::new();
    /// let value = |offset| OffsetValueRef {
    ///     offset,
    ///     leader_epoch: 1,
    ///     commit_timestamp_ms: 1_700_000_000_000,
    ///     expire_timestamp_ms: -1,
    ///     metadata: "",
    /// };
    /// let mut orders = cache.topic_writer("billing", "orders", 0)?;
    /// for partition in 0..4 {
    ///     orders.replace(partition, value(100 + i64::from(partition)), 7)?;
    /// }
    /// let reader = cache.reader();
    /// assert_eq!(reader.get("billing", "orders", 3).map(|v| v.offset), Some(103));
    /// # Ok::<(), coffer::Error>(())
    /// ```
    pub fn topic_writer(
        &mut self,
        group: &str,
        topic: &str,
        first_partition: i32,
    ) -> Result<TopicWriter<'_>> {
        let p = self.check_partition(first_partition)?;
        let topic = self.topic_for_insert(group, topic, p);
        Ok(TopicWriter { cache: self, topic })
    }

    /// The update of partition `p` of `topic` (live, and its array at least `p + 1` long):
    /// the value it replaced's log position, if there was one.
    fn replace_in(
        &mut self,
        topic: *const TopicNode,
        p: usize,
        value: OffsetValueRef<'_>,
        log_position: u64,
    ) -> Option<u64> {
        // SAFETY: writer access; the caller's `topic` is live.
        let topic = unsafe { &*topic };
        // SAFETY: writer access.
        let parts = unsafe { topic.parts() };
        let slot = &parts.slots[p];
        let old = slot.load_own();
        let meta = self.meta_for(old.meta, value.metadata, value.expire_timestamp_ms);
        slot.write(&self.shared.stash, &value.fields(log_position, meta));
        if !old.meta.is_null() && old.meta != meta {
            // SAFETY: unlinked from the slot just now (and from the stash once the writer
            // stashes anything else; readers that could see the stash copy are pinned no
            // later than this retirement).
            self.retire(unsafe { Box::from_raw(old.meta) });
        }
        if !old.present {
            topic.set_live(topic.live() + 1);
            self.live_keys += 1;
            return None;
        }
        Some(old.log_position)
    }

    /// Removes `key` (a tombstone). Returns whether it was present.
    ///
    /// # Errors
    /// As for [`OffsetCache::upsert`].
    pub fn remove(&mut self, key: OffsetKey<'_>) -> Result<bool> {
        self.take(key).map(|position| position.is_some())
    }

    /// [`remove`](Self::remove), returning the log position of the removed value.
    ///
    /// # Errors
    /// As for [`OffsetCache::upsert`].
    pub fn take(&mut self, key: OffsetKey<'_>) -> Result<Option<u64>> {
        let p = self.check_partition(key.partition)?;
        let Some((group, topic)) = self.find_topic(key.group, key.topic) else {
            return Ok(None);
        };
        let (group, topic) = (group as *const GroupNode, topic as *const TopicNode);
        // SAFETY: writer access; both live.
        let (group, topic) = unsafe { (&*group, &*topic) };
        // SAFETY: writer access.
        let parts = unsafe { topic.parts() };
        let Some(slot) = parts.slots.get(p) else {
            return Ok(None);
        };
        let old = slot.load_own();
        if !old.present {
            return Ok(None);
        }
        slot.write(&self.shared.stash, &Fields::ABSENT);
        if !old.meta.is_null() {
            // SAFETY: unlinked just now.
            self.retire(unsafe { Box::from_raw(old.meta) });
        }
        self.live_keys -= 1;
        let live = topic.live() - 1;
        topic.set_live(live);
        if live == 0 {
            self.unlink_topic(group, topic);
        }
        Ok(Some(old.log_position))
    }

    /// The log position stored with `key`'s current value: the compactor keeps a record iff
    /// this equals the record's position. `None` for an absent key or invalid partition.
    pub fn log_position(&self, key: OffsetKey<'_>) -> Option<u64> {
        let p = usize::try_from(key.partition).ok()?;
        let (_, topic) = self.find_topic(key.group, key.topic)?;
        // SAFETY: writer access.
        let f = unsafe { topic.parts() }.slots.get(p)?.load_own();
        f.present.then_some(f.log_position)
    }

    /// Calls `f` with the log position of every live key (writer side, any order): the
    /// records a compaction of the whole log would keep. O(groups + partitions).
    pub fn for_each_log_position(&self, mut f: impl FnMut(u64)) {
        for slot in self.table().slots.iter() {
            let g = slot.load(Ordering::Relaxed);
            if !is_node(g) {
                continue;
            }
            // SAFETY: writer access; a linked group node is live.
            let list = unsafe { (*g).topics() };
            for t in list.iter() {
                // SAFETY: writer access; a listed topic's partition array is live.
                for part in unsafe { t.parts() }.slots.iter() {
                    let fields = part.load_own();
                    if fields.present {
                        f(fields.log_position);
                    }
                }
            }
        }
    }

    /// Live keys.
    pub fn len(&self) -> usize {
        self.live_keys
    }

    /// Whether the cache holds no key.
    pub fn is_empty(&self) -> bool {
        self.live_keys == 0
    }

    /// Frees whatever retired memory readers have moved past. The writer also does this on
    /// every retirement; call it when idle to finish the job. Never waits; returns whether
    /// retired memory is still waiting for a pinned reader.
    pub fn collect(&mut self) -> bool {
        if self.reclaim.pending() == 0 {
            return false;
        }
        // Two advances free everything retired before the first one, if readers allow.
        for _ in 0..2 {
            if !self.reclaim.try_advance(&self.shared.collector) {
                break;
            }
        }
        self.reclaim.pending() > 0
    }

    /// Retired objects not yet freed (readers may still hold them).
    pub fn garbage_pending(&self) -> usize {
        self.reclaim.pending()
    }

    /// Trims every partition array to its highest live partition, undoing the slack that
    /// geometric growth leaves (up to a half). Meant for after a bulk load such as recovery;
    /// O(groups + partitions), allocates the trimmed copies, retires the old arrays.
    pub fn shrink_to_fit(&mut self) {
        let mut topics: Vec<*const TopicNode> = Vec::new();
        for slot in self.table().slots.iter() {
            let g = slot.load(Ordering::Relaxed);
            if is_node(g) {
                // SAFETY: writer access.
                topics.extend(
                    unsafe { (*g).topics() }
                        .iter()
                        .map(|t| t as *const TopicNode),
                );
            }
        }
        for t in topics {
            // SAFETY: writer access; live topic.
            let t = unsafe { &*t };
            let parts = unsafe { t.parts() };
            let used = parts.used_len();
            if used < parts.slots.len() {
                self.resize_parts(t, used);
            }
        }
    }

    /// Memory accounting (walks the structure: O(groups + partitions)).
    pub fn stats(&self) -> CacheStats {
        use std::mem::size_of;
        let table = self.table();
        let mut s = CacheStats {
            live_keys: self.live_keys,
            groups: self.groups_live,
            group_topics: self.group_topics,
            topic_names: self.interner.len(),
            structure_bytes: size_of::<GroupTable>() + table.slots.len() * size_of::<usize>(),
            metadata_bytes: 0,
            fixed_bytes: size_of::<Shared>() + self.shared.collector.heap_bytes(),
            pending_garbage: self.reclaim.pending(),
        };
        s.structure_bytes += self.interner.heap_bytes();
        for slot in table.slots.iter() {
            let g = slot.load(Ordering::Acquire);
            if !is_node(g) {
                continue;
            }
            // SAFETY: writer access.
            let g = unsafe { &*g };
            let list = unsafe { g.topics() };
            s.structure_bytes += size_of::<GroupNode>()
                + g.name.len()
                + size_of::<TopicList>()
                + list.topics.len() * size_of::<usize>();
            for t in list.iter() {
                let parts = unsafe { t.parts() };
                s.structure_bytes += size_of::<TopicNode>()
                    + size_of::<PartArray>()
                    + parts.slots.len() * size_of::<Slot>();
                for slot in parts.slots.iter() {
                    let m = slot.load_own().meta;
                    if !m.is_null() {
                        // SAFETY: live metadata, writer access.
                        let m = unsafe { &*m };
                        s.metadata_bytes += size_of::<Meta>() + m.text.len();
                    }
                }
            }
        }
        s
    }

    fn retire(&mut self, garbage: Box<dyn Send>) {
        self.reclaim.retire(&self.shared.collector, garbage);
    }

    /// The metadata pointer for a new value: null for empty metadata without an expire
    /// timestamp, the current one when both are unchanged (no allocation either way).
    fn meta_for(&self, current: *mut Meta, text: &str, expire_timestamp_ms: i64) -> *mut Meta {
        if text.is_empty() && expire_timestamp_ms == NO_EXPIRE_TIMESTAMP_MS {
            return ptr::null_mut();
        }
        if !current.is_null() {
            // SAFETY: the current metadata is live (writer access).
            let current_meta = unsafe { &*current };
            if &*current_meta.text == text
                && current_meta.expire_timestamp_ms == expire_timestamp_ms
            {
                return current;
            }
        }
        Box::into_raw(Box::new(Meta {
            canary: Canary::new(),
            text: text.into(),
            expire_timestamp_ms,
        }))
    }

    /// The topic node for (`group`, `topic`), created if needed, with a partition array
    /// long enough for `p`.
    fn topic_for_insert(&mut self, group: &str, topic: &str, p: usize) -> *const TopicNode {
        let hash = hash_group(group);
        // SAFETY: writer access.
        let existing = unsafe { self.table().find(group, hash) }.map(|g| g as *const GroupNode);
        let t = match existing {
            Some(g) => {
                // SAFETY: writer access, live group.
                let g = unsafe { &*g };
                match unsafe { g.topics().find(topic) } {
                    Some(t) => t as *const TopicNode,
                    None => self.add_topic(g, topic, p),
                }
            }
            None => self.add_group(group, hash, topic, p),
        };
        // SAFETY: writer access, live topic.
        self.ensure_len(unsafe { &*t }, p);
        t
    }

    fn new_topic(&mut self, topic: &str, p: usize) -> NonNull<TopicNode> {
        self.group_topics += 1;
        TopicNode::new_unlinked(self.interner.acquire(topic), p + 1)
    }

    fn add_topic(&mut self, group: &GroupNode, topic: &str, p: usize) -> *const TopicNode {
        let node = self.new_topic(topic, p);
        // SAFETY: writer access.
        let topics = unsafe { group.topics() }.with_topic(node);
        self.replace_topics(group, topics);
        node.as_ptr()
    }

    /// Publishes a new topic list for `group` and retires the old one.
    fn replace_topics(&mut self, group: &GroupNode, topics: Vec<NonNull<TopicNode>>) {
        let list = Box::into_raw(Box::new(TopicList {
            canary: Canary::new(),
            topics: topics.into_boxed_slice(),
        }));
        // Release: a reader that loads the new list sees it (and its nodes) initialized.
        let old = group.topics.swap(list, Ordering::Release);
        // SAFETY: unlinked just now.
        self.retire(unsafe { Box::from_raw(old) });
    }

    fn add_group(&mut self, group: &str, hash: u64, topic: &str, p: usize) -> *const TopicNode {
        let t = self.new_topic(topic, p);
        let list = Box::new(TopicList {
            canary: Canary::new(),
            topics: vec![t].into_boxed_slice(),
        });
        let node = Box::into_raw(Box::new(GroupNode {
            canary: Canary::new(),
            hash,
            name: group.into(),
            topics: AtomicPtr::new(Box::into_raw(list)),
        }));
        if (self.groups_used + 1) * 4 > self.table().slots.len() * 3 {
            self.rebuild_table();
        }
        let table = self.table();
        let mut i = hash as usize & table.mask;
        let mut target = None;
        loop {
            let p = table.slots[i].load(Ordering::Relaxed);
            if p == tombstone() {
                target.get_or_insert(i);
            } else if p.is_null() {
                break;
            }
            i = (i + 1) & table.mask;
        }
        let reused = target.is_some();
        let at = target.unwrap_or(i);
        // Release: publishes the fully built node (and its list and topic).
        table.slots[at].store(node, Ordering::Release);
        if !reused {
            self.groups_used += 1;
        }
        self.groups_live += 1;
        t.as_ptr()
    }

    /// Replaces the group table with a fresh one sized for the live groups (twice as many
    /// slots, at least), dropping tombstones.
    fn rebuild_table(&mut self) {
        let cap = ((self.groups_live + 1) * 2)
            .next_power_of_two()
            .max(MIN_TABLE);
        let new = GroupTable::with_capacity(cap);
        for slot in self.table().slots.iter() {
            let g = slot.load(Ordering::Relaxed);
            if is_node(g) {
                new.place_unpublished(g);
            }
        }
        // Release: readers that load the new table see its slots filled.
        let old = self
            .shared
            .groups
            .swap(Box::into_raw(Box::new(new)), Ordering::Release);
        self.groups_used = self.groups_live;
        // SAFETY: unlinked just now; the nodes it points at are still live (shared with the
        // new table), and dropping a table does not drop its nodes.
        self.retire(unsafe { Box::from_raw(old) });
    }

    /// Grows `topic`'s partition array to cover partition `p`: a copy, published with
    /// Release, the old array retired. Geometric (×1.5) so sequential partitions are cheap.
    fn ensure_len(&mut self, topic: &TopicNode, p: usize) {
        // SAFETY: writer access.
        let parts = unsafe { topic.parts() };
        let len = parts.slots.len();
        if p < len {
            return;
        }
        let new_len = (p + 1).max(len + len / 2).min(self.max_partitions as usize);
        self.resize_parts(topic, new_len);
    }

    /// Replaces `topic`'s partition array with a copy of length `new_len` (which must keep
    /// every live partition), published with Release; the old array is retired.
    fn resize_parts(&mut self, topic: &TopicNode, new_len: usize) {
        // SAFETY: writer access.
        let new = Box::into_raw(unsafe { topic.parts() }.copy_with_len(new_len));
        // Release: readers that load the new array see the copied values. The writer no
        // longer writes the old one, so readers still on it see values frozen at the copy,
        // which were current when they loaded its pointer.
        let old = topic.parts.swap(new, Ordering::Release);
        // SAFETY: unlinked just now. The metadata pointers it holds are now owned by the new
        // array; dropping a `PartArray` frees no metadata.
        self.retire(unsafe { Box::from_raw(old) });
    }

    /// Unlinks a topic whose last partition was removed, and its group if that was the
    /// group's last topic.
    fn unlink_topic(&mut self, group: &GroupNode, topic: &TopicNode) {
        self.group_topics -= 1;
        // SAFETY: writer access.
        let list = unsafe { group.topics() };
        let rest: Vec<NonNull<TopicNode>> = list
            .topics
            .iter()
            .copied()
            .filter(|t| !ptr::eq(t.as_ptr(), topic))
            .collect();
        if rest.is_empty() {
            self.unlink_group(group);
        } else {
            self.replace_topics(group, rest);
        }
        let name = topic.name;
        let parts = topic.parts.load(Ordering::Relaxed);
        // SAFETY: the topic is unreachable from the live structure now (and so is its
        // partition array, whose slots are all absent: no metadata to free).
        unsafe {
            self.retire(Box::from_raw(parts));
            self.retire(Box::from_raw(topic as *const TopicNode as *mut TopicNode));
        }
        if let Some(name) = self.interner.release(name) {
            self.retire(name);
        }
    }

    fn unlink_group(&mut self, group: &GroupNode) {
        let table = self.table();
        let mut i = group.hash as usize & table.mask;
        loop {
            let p = table.slots[i].load(Ordering::Relaxed);
            if p.is_null() {
                // Not in the table: cannot happen for a group found through it.
                debug_assert!(false, "group missing from its table");
                return;
            }
            if ptr::eq(p, group) {
                // A tombstone, not null, so probes for groups placed after it go on.
                table.slots[i].store(tombstone(), Ordering::Release);
                break;
            }
            i = (i + 1) & table.mask;
        }
        self.groups_live -= 1;
        let list = group.topics.load(Ordering::Relaxed);
        // SAFETY: unlinked just now; the list's topic is retired by the caller.
        unsafe {
            self.retire(Box::from_raw(list));
            self.retire(Box::from_raw(group as *const GroupNode as *mut GroupNode));
        }
    }
}

impl Drop for OffsetCache {
    fn drop(&mut self) {
        // Readers may outlive the writer: hand garbage and interned names to the last owner.
        let mut orphans = self
            .shared
            .orphans
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        orphans.extend(self.reclaim.take_all());
        orphans.push(Box::new(std::mem::take(&mut self.interner)));
    }
}

impl OffsetCacheReader {
    /// Pins this thread for a batch of reads. Never blocks.
    #[inline]
    pub fn pin(&self) -> ReadGuard<'_> {
        ReadGuard {
            shared: &self.shared,
            _pin: self.shared.collector.pin(),
        }
    }

    /// The committed value of (`group`, `topic`, `partition`), if any.
    #[inline]
    pub fn get(&self, group: &str, topic: &str, partition: i32) -> Option<OffsetValue> {
        self.pin()
            .get(group, topic, partition)
            .map(|v| v.to_owned_value())
    }

    /// All committed offsets of `group`, in no particular order.
    pub fn group_offsets(&self, group: &str) -> Vec<PartitionOffset> {
        let mut out = Vec::new();
        self.pin().for_each_in_group(group, |topic, partition, v| {
            out.push(PartitionOffset {
                topic: topic.to_owned(),
                partition,
                value: v.to_owned_value(),
            })
        });
        out
    }

    /// The groups with at least one committed offset in this cache (offsets partition).
    pub fn groups(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.pin().for_each_group(|g| out.push(g.to_owned()));
        out
    }
}

impl<'a> ReadGuard<'a> {
    fn table(&self) -> &GroupTable {
        // SAFETY: pinned; the table pointer is never null.
        let t = unsafe { &*self.shared.groups.load(Ordering::Acquire) };
        t.canary.touch();
        t
    }

    /// The committed value of (`group`, `topic`, `partition`), if any.
    #[inline]
    pub fn get(&self, group: &str, topic: &str, partition: i32) -> Option<OffsetValueRef<'_>> {
        let p = usize::try_from(partition).ok()?;
        // SAFETY (all derefs below): pinned, so nothing reached can be freed meanwhile.
        unsafe {
            let g = self.table().find(group, hash_group(group))?;
            let t = g.topics().find(topic)?;
            let slot = t.parts().slots.get(p)?;
            self.value(slot)
        }
    }

    /// Calls `f` with every committed offset of `group`.
    pub fn for_each_in_group(&self, group: &str, mut f: impl FnMut(&str, i32, OffsetValueRef<'_>)) {
        // SAFETY: pinned.
        unsafe {
            let Some(g) = self.table().find(group, hash_group(group)) else {
                return;
            };
            for t in g.topics().iter() {
                let name = t.name();
                for (p, slot) in t.parts().slots.iter().enumerate() {
                    if let Some(v) = self.value(slot) {
                        f(name, p as i32, v);
                    }
                }
            }
        }
    }

    /// Calls `f` with every group that has a committed offset.
    pub fn for_each_group(&self, mut f: impl FnMut(&str)) {
        for slot in self.table().slots.iter() {
            let g = slot.load(Ordering::Acquire);
            if is_node(g) {
                // SAFETY: pinned.
                let g = unsafe { &*g };
                g.canary.touch();
                f(&g.name);
            }
        }
    }

    /// Decodes a slot. Safety: pinned, `slot` reached under the pin.
    #[inline]
    unsafe fn value(&self, slot: &Slot) -> Option<OffsetValueRef<'_>> {
        let f = slot.read(&self.shared.stash);
        if !f.present {
            return None;
        }
        let (metadata, expire_timestamp_ms): (&str, i64) = if f.meta.is_null() {
            ("", NO_EXPIRE_TIMESTAMP_MS)
        } else {
            // SAFETY: read under the pin; retired metadata outlives every pin that saw it.
            let m = unsafe { &*f.meta };
            m.canary.touch();
            (&m.text, m.expire_timestamp_ms)
        };
        Some(OffsetValueRef {
            offset: f.offset,
            leader_epoch: f.leader_epoch,
            commit_timestamp_ms: f.commit_timestamp_ms,
            expire_timestamp_ms,
            metadata,
        })
    }
}
