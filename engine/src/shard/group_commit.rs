//! The group-commit batch: commits collected while the previous flush was in flight,
//! coalesced per key (last wins) and encoded as one RecordBatch per offsets partition.
//!
//! A pending offset may be a tombstone (offset deletion, group deletion, retention expiry):
//! it goes through the same batch, so coalescing treats it like any commit of its key — a
//! tombstone after a commit of the same key in one batch wins, and a commit after a
//! tombstone wins — and it is acknowledged only once durable.

use std::time::Instant;

use crate::completion::Completer;
use crate::format::{BatchParams, BatchWriter, OffsetCommitKey, OffsetCommitValue};
use crate::log::reader::PARTITION_FLUSH_BYTES_MAX;
use crate::pool::FreeList;

/// Upper bound of a record's framing: length, attributes, timestamp and offset deltas, key
/// and value lengths, header count, all as worst-case varints.
const RECORD_FRAMING_BYTES_MAX: usize = 5 + 1 + 10 + 5 + 5 + 5 + 5;
/// Upper bound of an OffsetCommitValue's fixed fields in any version we write: version,
/// offset, leader epoch, metadata length, commit and expire timestamps.
const VALUE_FIXED_BYTES_MAX: usize = 2 + 8 + 4 + 2 + 8 + 8;
/// Key fixed fields: version, two string lengths, partition.
const KEY_FIXED_BYTES: usize = 2 + 2 + 2 + 4;

/// Upper bound of the encoded bytes of one offset commit record.
pub(crate) fn commit_record_bytes_max(group: &str, topic: &str, metadata: &str) -> usize {
    RECORD_FRAMING_BYTES_MAX
        + KEY_FIXED_BYTES
        + group.len()
        + topic.len()
        + VALUE_FIXED_BYTES_MAX
        + metadata.len()
}

/// Upper bound of one partition's batch: the batch header plus its records.
pub(crate) const PARTITION_BATCH_BYTES_MAX: usize = PARTITION_FLUSH_BYTES_MAX;

/// One partition offset of a pending commit, owned because it crossed threads.
#[derive(Debug)]
pub(crate) struct PendingOffset {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: Option<i32>,
    pub metadata: String,
    /// Explicit expiry (v1 value), or -1.
    pub expire_timestamp_ms: i64,
    /// Write a tombstone (null value) for the key instead of a value.
    pub tombstone: bool,
    /// Hash of the topic, computed on the caller's thread so the shard sorts a flush's keys
    /// by integers (see [`string_hash`]).
    pub topic_hash: u64,
}

/// The hash a flush sorts groups and topics by: (group hash, topic hash, partition) keeps
/// one group's, and one topic's, records together in a batch (recovery decodes a run of
/// records of one group and topic once) without comparing strings. Equal strings hash
/// equally; two keys whose hashes collide only lose their coalescing (both are written, in
/// arrival order, and the later wins on replay).
pub(crate) fn string_hash(string: &str) -> u64 {
    xxhash_rust::xxh64::xxh64(string.as_bytes(), 0)
}

impl PendingOffset {
    /// A tombstone for (`topic`, `partition`).
    pub(crate) fn tombstone(topic: &str, partition: i32) -> PendingOffset {
        PendingOffset {
            topic: topic.to_owned(),
            partition,
            offset: -1,
            leader_epoch: None,
            metadata: String::new(),
            expire_timestamp_ms: -1,
            tombstone: true,
            topic_hash: 0,
        }
    }
}

/// A validated commit waiting for its flush.
///
/// Commits are pooled ([`CommitPool`]): the shard hands a completed one back, and the next
/// request refills its strings and offsets in place, so a steady stream of commits allocates
/// nothing once their strings' capacities have grown to fit.
pub(crate) struct PendingCommit {
    pub group: String,
    /// Hash of `group` ([`string_hash`]), computed on the caller's thread.
    group_hash: u64,
    pub offsets_partition: u32,
    /// The request's offsets are `offsets[..offsets_len]`; entries past that are kept only
    /// for their string capacity.
    offsets: Vec<PendingOffset>,
    offsets_len: usize,
    /// Upper bound of the bytes its records encode to.
    pub bytes_max: usize,
    /// When the engine accepted it.
    pub accepted: Instant,
    /// `offsets.commit.timeout.ms` after it was accepted.
    pub deadline: Instant,
    /// Taken when the commit is answered.
    completer: Option<Completer>,
    /// The committer's generation and member, checked on the shard; `None`: a simple
    /// commit. Boxed so simple commits stay small; the box is kept for reuse.
    fence: Option<Box<crate::group::CommitFence>>,
    fenced: bool,
}

/// Largest number of offsets a pooled commit keeps room for; bigger ones are freed after use.
const POOLED_COMMIT_OFFSETS_MAX: usize = 64;
/// Largest string capacity (group, topics, metadata, fence ids) a pooled commit keeps.
const POOLED_COMMIT_STRING_BYTES_MAX: usize = 16 * 1024;
/// Most commits a [`CommitPool`] keeps for reuse.
pub(crate) const COMMITS_POOLED_MAX: usize = 64 * 1024;

impl PendingCommit {
    /// An empty commit, for a pool that has none to reuse.
    fn empty() -> PendingCommit {
        let now = Instant::now();
        PendingCommit {
            group: String::new(),
            group_hash: 0,
            offsets_partition: 0,
            offsets: Vec::new(),
            offsets_len: 0,
            bytes_max: 0,
            accepted: now,
            deadline: now,
            completer: None,
            fence: None,
            fenced: false,
        }
    }

    /// Copies a validated request in, reusing this commit's buffers.
    pub(crate) fn fill(
        &mut self,
        group: &str,
        offsets_partition: u32,
        offsets: &[crate::offsets::OffsetCommit<'_>],
        bytes_max: usize,
        expire_timestamp_ms: i64,
    ) {
        self.group.clear();
        self.group.push_str(group);
        self.offsets_partition = offsets_partition;
        self.group_hash = string_hash(group);
        for (index, commit) in offsets.iter().enumerate() {
            if index == self.offsets.len() {
                // Grows only until the pooled commits have seen the largest requests.
                self.offsets.push(PendingOffset::tombstone("", 0));
            }
            let slot = &mut self.offsets[index];
            slot.topic.clear();
            slot.topic.push_str(commit.topic);
            slot.partition = commit.partition;
            slot.offset = commit.offset;
            slot.leader_epoch = commit.leader_epoch;
            slot.metadata.clear();
            slot.metadata.push_str(commit.metadata);
            slot.expire_timestamp_ms = expire_timestamp_ms;
            slot.tombstone = false;
            slot.topic_hash = string_hash(commit.topic);
        }
        self.offsets_len = offsets.len();
        self.bytes_max = bytes_max;
        self.fenced = false;
    }

    /// Takes a request's offsets as built (tombstones: a rare path, so they arrive owned).
    pub(crate) fn fill_owned(
        &mut self,
        group: &str,
        offsets_partition: u32,
        mut offsets: Vec<PendingOffset>,
        bytes_max: usize,
    ) {
        self.group.clear();
        self.group.push_str(group);
        self.offsets_partition = offsets_partition;
        self.group_hash = string_hash(group);
        for offset in &mut offsets {
            offset.topic_hash = string_hash(&offset.topic);
        }
        self.offsets_len = offsets.len();
        self.offsets = offsets;
        self.bytes_max = bytes_max;
        self.fenced = false;
    }

    /// Sets the commit's fence (`None`: a simple commit), reusing the kept box and strings.
    pub(crate) fn set_fence(&mut self, fence: Option<&crate::group::CommitFence>) {
        self.fenced = fence.is_some();
        let Some(fence) = fence else {
            return;
        };
        let Some(kept) = self.fence.as_mut() else {
            // Allocates only until this pooled commit has carried one fence.
            self.fence = Some(Box::new(fence.clone()));
            return;
        };
        kept.generation_id = fence.generation_id;
        kept.member_id.clear();
        kept.member_id.push_str(&fence.member_id);
        match (&mut kept.group_instance_id, &fence.group_instance_id) {
            (Some(kept_id), Some(id)) => {
                kept_id.clear();
                kept_id.push_str(id);
            }
            (kept_id, id) => *kept_id = id.clone(),
        }
    }

    /// The commit's fence, if it is not a simple commit.
    pub(crate) fn fence(&self) -> Option<&crate::group::CommitFence> {
        self.fence.as_deref().filter(|_| self.fenced)
    }

    /// Arms the commit: its acceptance time, deadline and completer.
    pub(crate) fn arm(&mut self, accepted: Instant, deadline: Instant, completer: Completer) {
        self.accepted = accepted;
        self.deadline = deadline;
        self.completer = Some(completer);
    }

    /// The request's offsets.
    pub(crate) fn offsets(&self) -> &[PendingOffset] {
        &self.offsets[..self.offsets_len]
    }

    /// Answers the request (once; later calls do nothing).
    pub(crate) fn complete(&mut self, result: crate::error::Result<()>) {
        if let Some(completer) = self.completer.take() {
            completer.complete(result);
        }
    }

    /// Whether keeping this commit's buffers is worth their memory.
    fn is_worth_pooling(&self) -> bool {
        let strings: usize = self
            .offsets
            .iter()
            .map(|o| o.topic.capacity() + o.metadata.capacity())
            .sum();
        let fence = self.fence.as_ref().map_or(0, |fence| {
            fence.member_id.capacity()
                + fence.group_instance_id.as_ref().map_or(0, String::capacity)
        });
        self.offsets.capacity() <= POOLED_COMMIT_OFFSETS_MAX
            && strings + fence + self.group.capacity() <= POOLED_COMMIT_STRING_BYTES_MAX
    }
}

/// A bounded free list of [`PendingCommit`]s shared by the engine handle (which takes) and
/// the shards (which give back answered commits).
#[derive(Clone)]
pub(crate) struct CommitPool {
    free: FreeList<PendingCommit>,
}

impl CommitPool {
    pub(crate) fn new(capacity: usize) -> CommitPool {
        CommitPool {
            free: FreeList::new(capacity.min(COMMITS_POOLED_MAX)),
        }
    }

    /// A commit to fill: a pooled one if any (allocates only while the pool warms up).
    pub(crate) fn take(&self) -> PendingCommit {
        self.free.take().unwrap_or_else(PendingCommit::empty)
    }

    /// Answers a commit and gives it back. It goes back first, so the caller, woken by the
    /// answer, finds it in the pool for its next request instead of allocating a new one.
    pub(crate) fn answer(&self, commit: PendingCommit, result: crate::error::Result<()>) {
        if let Some(completer) = self.give_back(commit) {
            completer.complete(result);
        }
    }

    /// [`answer`](Self::answer), waking the caller at `wakes`'s next `wake_all`.
    pub(crate) fn answer_deferred(
        &self,
        commit: PendingCommit,
        result: crate::error::Result<()>,
        wakes: &mut crate::completion::DeferredWakes,
    ) {
        if let Some(completer) = self.give_back(commit) {
            completer.complete_deferred(result, wakes);
        }
    }

    /// Takes a commit's completer and gives the commit back, before its answer.
    fn give_back(&self, mut commit: PendingCommit) -> Option<Completer> {
        let completer = commit.completer.take();
        self.recycle(commit);
        completer
    }

    /// Gives an answered commit back; a full pool, or an oversized commit, frees it instead.
    pub(crate) fn recycle(&self, mut commit: PendingCommit) {
        debug_assert!(commit.completer.is_none(), "recycling an unanswered commit");
        commit.complete(Err(crate::error::Error::Closed));
        if commit.is_worth_pooling() {
            self.free.give_back(commit);
        }
    }
}

/// One offset of one request, by index, with what the flush sorts it by.
#[derive(Debug, Clone, Copy)]
struct EntryRef {
    /// (group hash, high half of the topic hash, partition) in one integer: equal keys have
    /// equal sort keys, and one group's and one topic's records sort together. Two keys
    /// that collide here only lose their coalescing (see [`string_hash`]).
    sort_key: u128,
    offsets_partition: u32,
    request: u32,
    offset: u32,
}

impl EntryRef {
    const EMPTY: EntryRef = EntryRef {
        sort_key: 0,
        offsets_partition: 0,
        request: 0,
        offset: 0,
    };

    fn sort_key(group_hash: u64, topic_hash: u64, partition: i32) -> u128 {
        let topic_high = topic_hash & 0xffff_ffff_0000_0000;
        (u128::from(group_hash) << 64) | u128::from(topic_high | u64::from(partition as u32))
    }

    /// Arrival order: requests in the order they came, a request's offsets in its order.
    fn arrival(&self) -> u64 {
        (u64::from(self.request) << 32) | u64::from(self.offset)
    }
}

/// The commits of one flush.
pub(crate) struct GroupCommitBatch {
    pub requests: Vec<PendingCommit>,
    bytes_max: usize,
    partition_bytes_max: Vec<usize>,
    group_commit_bytes_max: usize,
    /// Entries sorted by key, reused between flushes.
    entries: Vec<EntryRef>,
    /// Where each offsets partition's run starts in `entries` (a counting sort's cursors):
    /// one more than the partitions, allocated up front.
    run_starts: Vec<u32>,
}

/// Splits tombstones into requests each within one commit's limits (`COMMIT_PARTITIONS_MAX`
/// offsets, `chunk_bytes_max` encoded bytes): a group may have more offsets than one request
/// may carry. Returns each chunk with the upper bound of its encoded bytes.
pub(crate) fn tombstone_chunks(
    group: &str,
    tombstones: Vec<PendingOffset>,
    chunk_bytes_max: usize,
) -> Vec<(Vec<PendingOffset>, usize)> {
    let mut chunks = Vec::new();
    let mut chunk = Vec::new();
    let mut chunk_bytes = 0;
    let mut tombstones = tombstones.into_iter().peekable();
    // Bounded: every iteration consumes one tombstone.
    while let Some(tombstone) = tombstones.next() {
        chunk_bytes += commit_record_bytes_max(group, &tombstone.topic, "");
        chunk.push(tombstone);
        let next_bytes = tombstones
            .peek()
            .map(|next| commit_record_bytes_max(group, &next.topic, ""));
        let full = chunk.len() == crate::config::COMMIT_PARTITIONS_MAX
            || next_bytes.is_none_or(|next| chunk_bytes + next > chunk_bytes_max);
        if full {
            chunks.push((std::mem::take(&mut chunk), chunk_bytes));
            chunk_bytes = 0;
        }
    }
    chunks
}

impl GroupCommitBatch {
    /// The most encoded bytes one commit may carry into this batch (what validation allows).
    pub(crate) fn commit_bytes_max(&self) -> usize {
        PARTITION_BATCH_BYTES_MAX.min(self.group_commit_bytes_max)
            - crate::format::BATCH_HEADER_BYTES
    }

    pub(crate) fn new(partitions: usize, group_commit_bytes_max: usize) -> GroupCommitBatch {
        GroupCommitBatch {
            requests: Vec::new(),
            bytes_max: 0,
            partition_bytes_max: vec![0; partitions],
            group_commit_bytes_max,
            entries: Vec::new(),
            run_starts: vec![0; partitions + 1],
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    /// Adds a commit unless it would push the batch or its partition's share over a cap;
    /// then it is handed back to go first into the next batch. An empty batch takes any
    /// validated commit (validation bounds a commit's size by the partition cap).
    // The commit moves by value both ways: boxing it would allocate per commit.
    #[allow(clippy::result_large_err)]
    pub(crate) fn try_add(&mut self, commit: PendingCommit) -> Result<(), PendingCommit> {
        let partition = commit.offsets_partition as usize;
        let partition_bytes = self.partition_bytes_max[partition] + commit.bytes_max;
        let over = self.bytes_max + commit.bytes_max > self.group_commit_bytes_max
            || partition_bytes + crate::format::BATCH_HEADER_BYTES > PARTITION_BATCH_BYTES_MAX;
        if over && !self.is_empty() {
            return Err(commit);
        }
        self.bytes_max += commit.bytes_max;
        self.partition_bytes_max[partition] = partition_bytes;
        self.requests.push(commit);
        Ok(())
    }

    /// Sorts the entries by (offsets partition, key hash, arrival) so equal keys are adjacent
    /// with the latest last. Integers only: comparing the strings made this sort most of the
    /// shard's CPU time per flush. A counting sort by offsets partition (which keeps arrival
    /// order), then each partition's run by its packed key: a flush's few thousand entries
    /// in one comparison sort took a tenth of the shard's time.
    pub(crate) fn sort_entries(&mut self) {
        let starts = &mut self.run_starts;
        starts.iter_mut().for_each(|start| *start = 0);
        for request in &self.requests {
            starts[request.offsets_partition as usize + 1] += request.offsets().len() as u32;
        }
        // Prefix sums: starts[p] is where partition p's run begins.
        for p in 1..starts.len() {
            starts[p] += starts[p - 1];
        }
        let total = starts[starts.len() - 1] as usize;
        self.entries.clear();
        self.entries.resize(total, EntryRef::EMPTY);
        for (request_index, request) in self.requests.iter().enumerate() {
            let partition = request.offsets_partition as usize;
            for (offset_index, offset) in request.offsets().iter().enumerate() {
                let at = starts[partition] as usize;
                starts[partition] += 1;
                self.entries[at] = EntryRef {
                    sort_key: EntryRef::sort_key(
                        request.group_hash,
                        offset.topic_hash,
                        offset.partition,
                    ),
                    offsets_partition: request.offsets_partition,
                    request: request_index as u32,
                    offset: offset_index as u32,
                };
            }
        }
        // Each cursor now stands at its run's end, which is the next run's start.
        let mut start = 0;
        for &end in &starts[..starts.len() - 1] {
            let end = end as usize;
            self.entries[start..end].sort_unstable_by_key(|e| (e.sort_key, e.arrival()));
            start = end;
        }
        debug_assert_eq!(start, total);
    }

    /// Calls `f` with each offsets partition in the batch and the latest offset of each key
    /// in it, in key order. Requires [`sort_entries`](Self::sort_entries) first.
    pub(crate) fn for_each_partition<'b>(
        &'b self,
        mut f: impl FnMut(u32, &mut dyn Iterator<Item = (&'b str, &'b PendingOffset)>),
    ) {
        let mut start = 0;
        while start < self.entries.len() {
            let partition = self.entries[start].offsets_partition;
            let end = start
                + self.entries[start..]
                    .iter()
                    .take_while(|e| e.offsets_partition == partition)
                    .count();
            let run = &self.entries[start..end];
            let mut latest = run.iter().enumerate().filter_map(|(i, entry)| {
                let superseded = run
                    .get(i + 1)
                    .is_some_and(|next| self.same_key(*entry, *next));
                (!superseded).then(|| (self.request(*entry).group.as_str(), self.offset(*entry)))
            });
            f(partition, &mut latest);
            start = end;
        }
    }

    fn request(&self, entry: EntryRef) -> &PendingCommit {
        &self.requests[entry.request as usize]
    }

    fn offset(&self, entry: EntryRef) -> &PendingOffset {
        &self.requests[entry.request as usize].offsets()[entry.offset as usize]
    }

    fn same_key(&self, a: EntryRef, b: EntryRef) -> bool {
        if a.sort_key != b.sort_key {
            return false;
        }
        let (ra, rb) = (self.request(a), self.request(b));
        let (oa, ob) = (self.offset(a), self.offset(b));
        ra.group == rb.group && oa.topic == ob.topic && oa.partition == ob.partition
    }

    /// Empties the batch for reuse, keeping its allocations.
    pub(crate) fn clear(&mut self) {
        self.requests.clear();
        self.entries.clear();
        self.bytes_max = 0;
        self.partition_bytes_max.iter_mut().for_each(|b| *b = 0);
    }
}

/// Encodes one partition's latest offsets as one batch into `out`; returns the batch's last
/// offset.
pub(crate) fn encode_partition_batch<'b>(
    out: &mut Vec<u8>,
    base_offset: i64,
    timestamp_ms: i64,
    offsets: &mut dyn Iterator<Item = (&'b str, &'b PendingOffset)>,
) -> Option<i64> {
    out.clear();
    let params = BatchParams {
        base_offset,
        base_timestamp: timestamp_ms,
        ..BatchParams::default()
    };
    let mut writer = BatchWriter::begin(out, params);
    for (group, pending) in offsets {
        let key = OffsetCommitKey {
            group,
            topic: &pending.topic,
            partition: pending.partition,
        };
        if pending.tombstone {
            writer.append_offset_commit(timestamp_ms, &key, None);
            continue;
        }
        let value = OffsetCommitValue {
            offset: pending.offset,
            leader_epoch: pending.leader_epoch.unwrap_or(-1),
            metadata: &pending.metadata,
            commit_timestamp: timestamp_ms,
            expire_timestamp: pending.expire_timestamp_ms,
            topic_id: None,
        };
        let version = value.version_for_write();
        writer.append_offset_commit(timestamp_ms, &key, Some((&value, version)));
    }
    let count = writer.records_count();
    if count == 0 {
        return None;
    }
    writer.finish();
    Some(base_offset + i64::from(count) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::completion::{CommitFuture, CompletionPool};
    use crate::format::{RecordKey, decode_key, parse_batch};

    fn pending(group: &str, offsets: Vec<PendingOffset>) -> PendingCommit {
        let now = Instant::now();
        let deadline = now + std::time::Duration::from_secs(60);
        let (_future, completer) = CommitFuture::pending(deadline, 60_000, &CompletionPool::new(1));
        let mut commit = PendingCommit::empty();
        commit.fill_owned(group, 0, offsets, 200);
        commit.arm(now, deadline, completer);
        commit
    }

    fn value(partition: i32, offset: i64) -> PendingOffset {
        PendingOffset {
            offset,
            ..PendingOffset {
                tombstone: false,
                ..PendingOffset::tombstone("t", partition)
            }
        }
    }

    /// Encodes the batch and returns (partition, Some(offset) or None for a tombstone) in
    /// the batch's record order (key-hash order).
    fn encoded(batch: &mut GroupCommitBatch) -> Vec<(i32, Option<i64>)> {
        batch.sort_entries();
        let mut out = Vec::new();
        batch.for_each_partition(|_, latest| {
            encode_partition_batch(&mut out, 0, 1, latest);
        });
        let view = parse_batch(&out).unwrap();
        view.records()
            .map(|record| {
                let record = record.unwrap();
                let RecordKey::OffsetCommit(key) = decode_key(record.key.unwrap()).unwrap() else {
                    panic!("an offset commit key")
                };
                let value = record
                    .value
                    .map(|v| OffsetCommitValue::decode(v).unwrap().1.offset);
                (key.partition, value)
            })
            .collect()
    }

    fn sorted(mut records: Vec<(i32, Option<i64>)>) -> Vec<(i32, Option<i64>)> {
        records.sort_by_key(|(partition, _)| *partition);
        records
    }

    #[test]
    fn keys_whose_hashes_collide_are_written_in_arrival_order_not_coalesced() {
        let mut batch = GroupCommitBatch::new(1, 1 << 20);
        let other_topic = |offset| PendingOffset {
            topic: "u".into(),
            ..value(0, offset)
        };
        // Topics "t" and "u", partition 0 of each, made to hash alike.
        let mut first = pending("g", vec![value(0, 5), other_topic(6)]);
        let mut second = pending("g", vec![value(0, 7)]);
        for offset in first.offsets.iter_mut().chain(second.offsets.iter_mut()) {
            offset.topic_hash = 42;
        }
        assert!(batch.try_add(first).is_ok());
        assert!(batch.try_add(second).is_ok());
        // t/0 twice, the later last (replay and the cache keep 7), u/0 between them.
        assert_eq!(
            encoded(&mut batch),
            vec![(0, Some(5)), (0, Some(6)), (0, Some(7))]
        );
    }

    #[test]
    fn each_offsets_partition_gets_its_own_run_in_partition_order_latest_per_key() {
        let mut batch = GroupCommitBatch::new(3, 1 << 20);
        let at = |offsets_partition: u32, group: &str, offsets: Vec<PendingOffset>| {
            let mut commit = pending(group, offsets);
            commit.offsets_partition = offsets_partition;
            commit
        };
        // Arrival order interleaves the offsets partitions; g/t/0 is committed three times
        // in partition 2, and h/t/0 (another group's key) twice in partition 0.
        let requests = [
            at(2, "g", vec![value(0, 1), value(1, 2)]),
            at(0, "h", vec![value(0, 3)]),
            at(2, "g", vec![value(0, 4)]),
            at(1, "k", vec![value(5, 5)]),
            at(0, "h", vec![value(0, 6), value(1, 7)]),
            at(2, "g", vec![value(0, 8)]),
        ];
        for request in requests {
            assert!(batch.try_add(request).is_ok());
        }
        batch.sort_entries();
        let mut runs = Vec::new();
        batch.for_each_partition(|partition, latest| {
            let mut run: Vec<_> = latest
                .map(|(group, offset)| (group.to_owned(), offset.partition, offset.offset))
                .collect();
            run.sort();
            runs.push((partition, run));
        });
        let row = |group: &str, partition, offset| (group.to_owned(), partition, offset);
        assert_eq!(
            runs,
            vec![
                (0, vec![row("h", 0, 6), row("h", 1, 7)]),
                (1, vec![row("k", 5, 5)]),
                (2, vec![row("g", 0, 8), row("g", 1, 2)]),
            ]
        );
        // Reused: a second flush of the same batch object starts from nothing.
        batch.clear();
        assert!(batch.try_add(at(1, "k", vec![value(5, 9)])).is_ok());
        batch.sort_entries();
        let mut partitions = Vec::new();
        batch.for_each_partition(|partition, latest| partitions.push((partition, latest.count())));
        assert_eq!(partitions, vec![(1, 1)]);
    }

    #[test]
    fn tombstones_coalesce_with_commits_last_wins() {
        let mut batch = GroupCommitBatch::new(1, 1 << 20);
        // Partition 0: commit then tombstone (tombstone wins); partition 1: tombstone then
        // commit (commit wins); partition 2: tombstone only.
        let first = vec![value(0, 5), PendingOffset::tombstone("t", 1)];
        let second = vec![
            PendingOffset::tombstone("t", 0),
            value(1, 7),
            PendingOffset::tombstone("t", 2),
        ];
        assert!(batch.try_add(pending("g", first)).is_ok());
        assert!(batch.try_add(pending("g", second)).is_ok());
        assert_eq!(
            sorted(encoded(&mut batch)),
            vec![(0, None), (1, Some(7)), (2, None)]
        );
    }
}
