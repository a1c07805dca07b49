//! The group-commit batch: commits collected while the previous flush was in flight,
//! coalesced per key (last wins) and encoded as one RecordBatch per offsets partition.

use std::time::Instant;

use crate::completion::Completer;
use crate::format::{BatchParams, BatchWriter, OffsetCommitKey, OffsetCommitValue};
use crate::log::reader::PARTITION_FLUSH_BYTES_MAX;

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
}

/// A validated commit waiting for its flush.
pub(crate) struct PendingCommit {
    pub group: String,
    pub offsets_partition: u32,
    pub offsets: Vec<PendingOffset>,
    /// Upper bound of the bytes its records encode to.
    pub bytes_max: usize,
    /// When the engine accepted it.
    pub accepted: Instant,
    /// `offsets.commit.timeout.ms` after it was accepted.
    pub deadline: Instant,
    pub completer: Completer,
    /// The committer's generation and member, checked on the shard; `None`: a simple commit.
    pub fence: Option<Box<crate::group::CommitFence>>,
}

/// One offset of one request, by index.
#[derive(Debug, Clone, Copy)]
struct EntryRef {
    request: u32,
    offset: u32,
}

/// The commits of one flush.
pub(crate) struct GroupCommitBatch {
    pub requests: Vec<PendingCommit>,
    bytes_max: usize,
    partition_bytes_max: Vec<usize>,
    group_commit_bytes_max: usize,
    /// Entries sorted by key, reused between flushes.
    entries: Vec<EntryRef>,
}

impl GroupCommitBatch {
    pub(crate) fn new(partitions: usize, group_commit_bytes_max: usize) -> GroupCommitBatch {
        GroupCommitBatch {
            requests: Vec::new(),
            bytes_max: 0,
            partition_bytes_max: vec![0; partitions],
            group_commit_bytes_max,
            entries: Vec::new(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    /// Adds a commit unless it would push the batch or its partition's share over a cap;
    /// then it is handed back to go first into the next batch. An empty batch takes any
    /// validated commit (validation bounds a commit's size by the partition cap).
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

    /// Sorts the entries by (offsets partition, group, topic, partition, arrival) so equal
    /// keys are adjacent with the latest last.
    pub(crate) fn sort_entries(&mut self) {
        self.entries.clear();
        for (request_index, request) in self.requests.iter().enumerate() {
            for offset_index in 0..request.offsets.len() {
                self.entries.push(EntryRef {
                    request: request_index as u32,
                    offset: offset_index as u32,
                });
            }
        }
        let requests = &self.requests;
        self.entries.sort_unstable_by(|a, b| {
            let (ra, rb) = (&requests[a.request as usize], &requests[b.request as usize]);
            let (oa, ob) = (
                &ra.offsets[a.offset as usize],
                &rb.offsets[b.offset as usize],
            );
            (
                ra.offsets_partition,
                ra.group.as_str(),
                oa.topic.as_str(),
                oa.partition,
            )
                .cmp(&(
                    rb.offsets_partition,
                    rb.group.as_str(),
                    ob.topic.as_str(),
                    ob.partition,
                ))
                .then((a.request, a.offset).cmp(&(b.request, b.offset)))
        });
    }

    /// Calls `f` with each offsets partition in the batch and the latest offset of each key
    /// in it, in key order. Requires [`sort_entries`](Self::sort_entries) first.
    pub(crate) fn for_each_partition<'b>(
        &'b self,
        mut f: impl FnMut(u32, &mut dyn Iterator<Item = (&'b str, &'b PendingOffset)>),
    ) {
        let mut start = 0;
        while start < self.entries.len() {
            let partition = self.request(self.entries[start]).offsets_partition;
            let end = start
                + self.entries[start..]
                    .iter()
                    .take_while(|e| self.request(**e).offsets_partition == partition)
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
        &self.requests[entry.request as usize].offsets[entry.offset as usize]
    }

    fn same_key(&self, a: EntryRef, b: EntryRef) -> bool {
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
        let value = OffsetCommitValue {
            offset: pending.offset,
            leader_epoch: pending.leader_epoch.unwrap_or(-1),
            metadata: &pending.metadata,
            commit_timestamp: timestamp_ms,
            expire_timestamp: -1,
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
