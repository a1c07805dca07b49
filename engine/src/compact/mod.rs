//! The incremental compactor of one shard.
//!
//! Because the latest state is in memory, a record is live iff the in-memory entry points at
//! its offset ([`crate::log::liveness`]), so compaction needs no scan-and-build pass (Kafka's
//! offset map): the compactor
//!
//! 1. picks the dirtiest group of consecutive sealed segments of any partition of the shard
//!    (`select`) whose dirty ratio reaches `min.cleanable.dirty.ratio`, or that starts the
//!    log and holds tombstones past `delete.retention.ms`;
//! 2. copies their live records, with their original offsets, into a `.cleaned` file in
//!    steps of at most [`COMPACTION_STEP_BYTES_MAX`] read (`job`);
//! 3. swaps the copy in crash-safely ([`crate::log::swap`]).
//!
//! The shard runs a step only when its inbox is empty, or, under sustained load, after a
//! flush once the bytes committed since earned it ([`COMPACTION_READ_PER_BYTE_WRITTEN`]), at
//! most [`COMPACTION_STEPS_PER_FLUSH_MAX`] steps (at most one of them a blocking sync), so
//! commits wait behind a bounded amount of compaction. A segment the compactor cannot read
//! or parse is quarantined: skipped from then on, counted, and reported as an
//! [`EngineEvent`](crate::EngineEvent), while the rest of the shard's partitions go on being
//! compacted.

pub(crate) mod job;
pub mod retention;
pub(crate) mod select;

use std::collections::{BTreeSet, HashMap};

use crate::log::liveness::SegmentTable;

/// Most segment bytes one compaction step reads (and so writes).
pub const COMPACTION_STEP_BYTES_MAX: usize = 256 * 1024;

/// Under sustained load (an inbox that never empties) the shard still runs one compaction
/// step after a flush once the flushes since the last step wrote
/// `1 / COMPACTION_READ_PER_BYTE_WRITTEN` of a step's bytes: compaction then reads this many
/// bytes per byte committed, enough to keep a commit storm's log near its live size. At most
/// [`COMPACTION_STEPS_PER_FLUSH_MAX`] steps run after one flush, so a commit waits behind a
/// bounded amount of compaction.
pub const COMPACTION_READ_PER_BYTE_WRITTEN: u64 = 2;

/// Most compaction steps run after one flush under load.
pub const COMPACTION_STEPS_PER_FLUSH_MAX: u32 = 4;

/// Cap of the compaction credit (in steps' bytes), so a long idle-free burst does not
/// leave a debt that later steals every flush.
pub const COMPACTION_CREDIT_STEPS_MAX: u64 = 16;

/// Most groups whose latest group metadata record one partition tracks (the groups work
/// bounds groups per partition the same way).
pub const GROUP_RECORDS_MAX: usize = 1 << 20;

/// Compaction state of one hosted partition that is not in its log or cache: the offset of
/// each group's latest `GroupMetadata` record (live until a newer one or a tombstone), and the
/// quarantined segments.
#[derive(Debug, Default)]
pub(crate) struct PartitionCompaction {
    group_records: HashMap<String, i64>,
    /// Some group's record went untracked (over `GROUP_RECORDS_MAX`): group metadata values
    /// this map does not know are then kept, since one of them may be a group's latest.
    untracked_groups: bool,
    /// Base offsets of segments the compactor could not process.
    pub(crate) quarantined: BTreeSet<i64>,
}

impl PartitionCompaction {
    /// A `GroupMetadata` record (value or tombstone) for `group` was written or replayed at
    /// `offset`: the group's previous record, and a tombstone itself, are dead.
    pub(crate) fn group_record(
        &mut self,
        group: &str,
        offset: i64,
        tombstone: bool,
        table: &mut SegmentTable,
    ) {
        let previous = if tombstone {
            self.group_records.remove(group)
        } else if let Some(latest) = self.group_records.get_mut(group) {
            Some(std::mem::replace(latest, offset))
        } else if self.group_records.len() < GROUP_RECORDS_MAX {
            self.group_records.insert(group.to_owned(), offset);
            None
        } else {
            // Over the bound the record is left counted live and compaction keeps it (see
            // `keeps_unknown_group_records`): safe, only less tidy.
            self.untracked_groups = true;
            None
        };
        if let Some(previous) = previous {
            table.mark_dead(previous);
        }
        if tombstone {
            table.mark_dead(offset);
        }
    }

    /// The offset of `group`'s latest group metadata record.
    pub(crate) fn group_record_offset(&self, group: &str) -> Option<i64> {
        self.group_records.get(group).copied()
    }

    /// Whether group metadata values of groups the map does not know must be kept (some
    /// group went untracked over the bound).
    pub(crate) fn keeps_unknown_group_records(&self) -> bool {
        self.untracked_groups
    }
}

/// The compactor's counters, part of [`ShardMetrics`](crate::ShardMetrics).
#[derive(Debug, Clone, Default)]
pub struct CompactionMetrics {
    /// Compactions finished (segments swapped).
    pub compactions: u64,
    /// Compactions abandoned after an I/O error before their commit point.
    pub compaction_errors: u64,
    /// Steps run: copying steps and the swap's (sync, commit, finish).
    pub steps: u64,
    /// Segment bytes read by the compactor.
    pub bytes_read: u64,
    /// Bytes the compactor wrote (write amplification = this / bytes of commits written).
    pub bytes_written: u64,
    /// Records dropped (dead values, superseded group metadata, expired tombstones).
    pub records_dropped: u64,
    /// Records whose fate took a key decode and a lookup: tombstones, group metadata, records
    /// of unknown key types, and the records of segments whose dead-record map is untracked
    /// ([`crate::log::dead_records`]). Every other record is judged by its offset.
    pub records_tested_by_key: u64,
    /// Tombstones dropped after `delete.retention.ms`.
    pub tombstones_dropped: u64,
    /// Segments quarantined (unreadable or corrupt): skipped by the compactor from then on.
    pub segments_quarantined: u64,
    /// Segments dropped without being read: their stats said no record in them was live
    /// and none was a tombstone.
    pub segments_dropped_unread: u64,
    /// Wall-clock time of the last finished compaction, ms since the Unix epoch (0: none yet).
    pub last_success_ms: i64,
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn groups_over_the_bound_go_untracked_and_unknown_records_are_kept() {
        let mut table = SegmentTable::default();
        table.push_segment(0);
        table.add_records(GROUP_RECORDS_MAX as u64 + 2);
        let mut compaction = PartitionCompaction::default();
        for g in 0..GROUP_RECORDS_MAX {
            compaction.group_record(&format!("g{g}"), g as i64, false, &mut table);
        }
        assert!(!compaction.keeps_unknown_group_records());
        // One group more than the bound: not tracked, so the compactor must keep values of
        // groups it does not know (one of them is this group's latest).
        compaction.group_record("late", GROUP_RECORDS_MAX as i64, false, &mut table);
        assert_eq!(compaction.group_record_offset("late"), None);
        assert!(compaction.keeps_unknown_group_records());
        // Tracked groups still follow their latest record.
        compaction.group_record("g0", GROUP_RECORDS_MAX as i64 + 1, false, &mut table);
        assert_eq!(
            compaction.group_record_offset("g0"),
            Some(GROUP_RECORDS_MAX as i64 + 1)
        );
    }
}
