//! Which sealed segments to compact next.
//!
//! A partition's sealed segments are grouped greedily from the oldest: consecutive,
//! non-quarantined segments whose estimated live bytes together fit in one segment
//! (`offsets.topic.segment.bytes`), so compaction also merges small compacted segments. A
//! group is cleanable when its dirty ratio (estimated dead bytes / bytes) is at least
//! `min.cleanable.dirty.ratio` and it has dead records, or when it starts the log and holds a
//! tombstone older than `delete.retention.ms` (only a group that starts the log may drop
//! tombstones: every older record of a tombstone's key is then in the same group, dead, and
//! goes in the same swap, so dropping the tombstone can never bring one back).

use std::collections::BTreeSet;

use crate::log::PartitionLog;

/// Settings of the selection, from the config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SelectSettings {
    /// `log.cleaner.min.cleanable.ratio`.
    pub min_cleanable_ratio: f64,
    /// `log.cleaner.delete.retention.ms`.
    pub delete_retention_ms: i64,
    /// `offsets.topic.segment.bytes`: the most estimated live bytes one group may hold.
    pub segment_bytes: u64,
}

/// A group of sealed segments worth compacting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Candidate {
    /// The offsets partition.
    pub partition: u32,
    /// Index of the group's first sealed segment.
    pub first: usize,
    /// Segments in the group.
    pub count: usize,
    /// Estimated dead bytes / bytes.
    pub dirty_ratio: f64,
    /// Tombstones written at or before this may be dropped (`None`: keep every tombstone).
    pub drop_tombstones_through_ms: Option<i64>,
}

/// The most cleanable group of `log`, if any is cleanable at `now_ms`.
pub(crate) fn best_group(
    partition: u32,
    log: &PartitionLog,
    quarantined: &BTreeSet<i64>,
    settings: SelectSettings,
    now_ms: i64,
) -> Option<Candidate> {
    let sealed = log.sealed_segments();
    let stats = log.table().segments();
    debug_assert_eq!(stats.len(), sealed.len() + 1);
    let tombstones_through_ms = now_ms.saturating_sub(settings.delete_retention_ms);
    let mut best: Option<Candidate> = None;
    let mut index = 0;
    // Bounded: every iteration of either loop advances `index`.
    while index < sealed.len() {
        if quarantined.contains(&sealed[index].base_offset) {
            index += 1;
            continue;
        }
        let first = index;
        let (mut bytes, mut live_bytes, mut dead_records) = (0u64, 0u64, 0u64);
        let mut expired_tombstones = false;
        while index < sealed.len() && !quarantined.contains(&sealed[index].base_offset) {
            let segment_live = stats[index].live_bytes_estimate(sealed[index].len);
            if index > first && live_bytes + segment_live > settings.segment_bytes {
                break;
            }
            bytes += sealed[index].len;
            live_bytes += segment_live;
            dead_records += stats[index].dead();
            expired_tombstones |= stats[index].tombstones > 0
                && stats[index].tombstone_min_timestamp_ms <= tombstones_through_ms;
            index += 1;
        }
        let dirty_ratio = if bytes == 0 {
            0.0
        } else {
            (bytes - live_bytes.min(bytes)) as f64 / bytes as f64
        };
        let starts_log = first == 0;
        let dirty_enough = dirty_records_enough(dirty_ratio, dead_records, settings);
        if !(dirty_enough || (starts_log && expired_tombstones)) {
            continue;
        }
        let candidate = Candidate {
            partition,
            first,
            count: index - first,
            dirty_ratio,
            drop_tombstones_through_ms: starts_log.then_some(tombstones_through_ms),
        };
        if best.is_none_or(|b| candidate.dirty_ratio > b.dirty_ratio) {
            best = Some(candidate);
        }
    }
    best
}

fn dirty_records_enough(dirty_ratio: f64, dead_records: u64, settings: SelectSettings) -> bool {
    dead_records > 0 && dirty_ratio >= settings.min_cleanable_ratio
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::LogSettings;
    use crate::storage::SimDisk;
    use std::path::Path;

    const BATCH_BYTES: usize = 60;
    const RECORDS_PER_BATCH: i64 = 10;

    /// A log of `segments` sealed segments (plus an empty active one), each one batch of 10
    /// records, all live.
    fn log(segments: usize) -> PartitionLog {
        let disk = SimDisk::new(1);
        let mut storage = disk.storage();
        let settings = LogSettings {
            segment_bytes: 100,
            preallocate: false,
            dirty_roll_ratio: None,
            journaled: false,
        };
        let mut buf = Vec::new();
        let mut visit = |_: &crate::format::BatchView<'_>, _: u64, _: &mut _| Ok(());
        let (mut log, _) = PartitionLog::open(
            &mut storage,
            Path::new("/d"),
            0,
            settings,
            &mut buf,
            &mut visit,
        )
        .unwrap();
        for _ in 0..=segments {
            log.prepare_append(&mut storage, BATCH_BYTES).unwrap();
            // Only the sizes matter here; the bytes are placeholders.
            log.stage(&[0; BATCH_BYTES]);
            let last = log.next_offset() + RECORDS_PER_BATCH - 1;
            log.commit_append(BATCH_BYTES, last);
        }
        log
    }

    fn settings() -> SelectSettings {
        SelectSettings {
            min_cleanable_ratio: 0.5,
            delete_retention_ms: 1000,
            segment_bytes: 100,
        }
    }

    fn dead(log: &mut PartitionLog, offsets: std::ops::Range<i64>) {
        for offset in offsets {
            log.table_mut().mark_dead(offset);
        }
    }

    #[test]
    fn clean_segments_are_left_alone_and_groups_split_at_quarantined_ones() {
        let mut log = log(3);
        assert_eq!(log.sealed_segments().len(), 3);
        let none = BTreeSet::new();
        assert_eq!(best_group(0, &log, &none, settings(), 0), None);
        dead(&mut log, 10..14); // 40 % dirty: below the ratio
        assert_eq!(best_group(0, &log, &none, settings(), 0), None);
        dead(&mut log, 14..16); // 60 %
        dead(&mut log, 20..29); // 90 %
        let best = best_group(0, &log, &none, settings(), 0).unwrap();
        // Estimated live bytes 60 + 24 + 6 fit one segment: one group of all three, half dead.
        assert_eq!((best.first, best.count), (0, 3));
        assert!(
            (best.dirty_ratio - 0.5).abs() < 1e-9,
            "{}",
            best.dirty_ratio
        );
        assert_eq!(
            best.drop_tombstones_through_ms,
            Some(-1000),
            "it starts the log"
        );
        // A quarantined middle segment splits the group: the first segment alone is clean,
        // the last (one live record of ten) is cleanable on its own.
        let quarantined = BTreeSet::from([10]);
        let best = best_group(0, &log, &quarantined, settings(), 0).unwrap();
        assert_eq!((best.first, best.count), (2, 1));
        assert_eq!(
            best.drop_tombstones_through_ms, None,
            "not the start of the log"
        );
    }

    #[test]
    fn only_a_group_that_starts_the_log_may_drop_tombstones() {
        let mut log = log(3);
        let none = BTreeSet::new();
        // A tombstone at offset 25, in the third segment: never a reason to compact alone.
        dead(&mut log, 25..26);
        log.table_mut().note_tombstone(25, 100);
        assert_eq!(best_group(0, &log, &none, settings(), 10_000), None);
        // In the first segment, past delete.retention.ms: cleanable, tombstones may go.
        dead(&mut log, 5..6);
        log.table_mut().note_tombstone(5, 100);
        let best = best_group(0, &log, &none, settings(), 10_000).unwrap();
        assert_eq!(best.first, 0);
        assert_eq!(best.drop_tombstones_through_ms, Some(9_000));
        // Not yet past retention: nothing to do.
        assert_eq!(best_group(0, &log, &none, settings(), 1_000), None);
        // Quarantining the first segment: the next group no longer starts the log.
        let quarantined = BTreeSet::from([0]);
        assert_eq!(best_group(0, &log, &quarantined, settings(), 10_000), None);
    }
}
