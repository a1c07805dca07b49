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
use std::time::{Duration, Instant};

use crate::log::PartitionLog;

/// Rewrites of a partition's keys a freshly sealed segment waits for ([`Deferral`]): two,
/// so that keys rewritten round by round in any order have all been rewritten once, and
/// keys picked at random all but about e^-2 (14 %) of them.
pub(crate) const DEFERRAL_REWRITES: u64 = 2;

/// Sealed segments background compaction leaves alone at once: the newest only. A waiting
/// segment's bytes count as log bytes, and two rewrites of a large key set are many
/// segments: with every fresh segment waiting, a storm over 1.28 M keys held 2.1× its live
/// data in the log, 2.7× on disk (benchmarks.md, session 11), against 1.1× and 1.6× when
/// nothing waited. The newest is the one that pays to wait: in a storm over few keys it
/// still holds the latest record of most of them, dead a moment later.
pub(crate) const DEFERRED_SEGMENTS_MAX: usize = 1;

/// Background compaction leaves the newest sealed segment alone while it is fresh
/// ([`DEFERRED_SEGMENTS_MAX`]): until the partition has appended [`DEFERRAL_REWRITES`] times
/// as many records since its seal as it holds live ones, and at most
/// `log.cleaner.backoff.ms` (`Config::log_cleaner_backoff_ms`; Kafka's cleaner looks for
/// work that often, so it never compacts a segment the moment it rolls either). In a commit
/// storm over a fixed key set a rolled segment's last live records die within one rewrite
/// of the keys; compacting at once read the whole segment to keep a few of them (about 12
/// steps of up to 256 KiB per 4 MiB roll, 230 µs each on the shard thread, benchmarks.md
/// session 10), where a little later it is dropped unread. Explicit compactions do not wait.
///
/// Background compaction groups only the segments before the one that waits. Under
/// full-segment rolls there is always a fresh segment: deferring every group that reached
/// it stopped the compactor for as long as the storm lasted.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deferral {
    /// Now, on the clock of [`crate::log::segment::SealedSegment::sealed_at`].
    pub now: Instant,
    /// The longest a group waits.
    pub wait_max: Duration,
    /// The earliest time a group left alone becomes cleanable by age alone.
    pub retry_at: Option<Instant>,
}

impl Deferral {
    /// How many of `log`'s sealed segments, from the oldest, background compaction may
    /// take now: all but the newest [`DEFERRED_SEGMENTS_MAX`] while they are fresh. Notes
    /// when the oldest of those stops waiting by age.
    fn eligible_segments(&mut self, log: &PartitionLog) -> usize {
        let live: u64 = log.table().segments().iter().map(|s| s.live).sum();
        let sealed = log.sealed_segments().len();
        let mut eligible = sealed;
        // Bounded by DEFERRED_SEGMENTS_MAX; a later seal has had fewer appends since, and
        // less time, so the waiting segments are the newest.
        while eligible > sealed.saturating_sub(DEFERRED_SEGMENTS_MAX)
            && self.defers(log, eligible - 1, live)
        {
            eligible -= 1;
        }
        eligible
    }

    /// Whether sealed segment `index` waits (with `live` records in the partition), noting
    /// when it stops waiting by age.
    fn defers(&mut self, log: &PartitionLog, index: usize, live: u64) -> bool {
        let sealed = log.sealed_segments();
        let Some(sealed_at) = sealed[index].sealed_at else {
            return false;
        };
        let until = sealed_at + self.wait_max;
        if self.now >= until {
            return false;
        }
        let sealed_at_offset = sealed
            .get(index + 1)
            .map_or(log.active_base_offset(), |next| next.base_offset);
        let appended = log.next_offset().saturating_sub(sealed_at_offset).max(0) as u64;
        if appended >= live.saturating_mul(DEFERRAL_REWRITES) {
            return false;
        }
        self.retry_at = Some(self.retry_at.map_or(until, |at| at.min(until)));
        true
    }
}

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

/// The most cleanable group of `log`, if any is cleanable at `now_ms`; with a `deferral`
/// (background compaction), of the segments before a freshly sealed newest one.
pub(crate) fn best_group(
    partition: u32,
    log: &PartitionLog,
    quarantined: &BTreeSet<i64>,
    (settings, now_ms): (SelectSettings, i64),
    deferral: Option<&mut Deferral>,
) -> Option<Candidate> {
    let eligible = deferral.map_or(log.sealed_segments().len(), |d| d.eligible_segments(log));
    let sealed = &log.sealed_segments()[..eligible];
    let stats = log.table().segments();
    debug_assert_eq!(stats.len(), log.sealed_segments().len() + 1);
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
    fn background_compaction_waits_for_one_rewrite_of_the_keys_or_the_longest_deferral() {
        let mut log = log(2);
        let none = BTreeSet::new();
        // All of the sealed segments dead but one record; 11 live records in the log.
        dead(&mut log, 1..20);
        let explicit = best_group(0, &log, &none, (settings(), 0), None);
        assert_eq!(explicit.map(|c| (c.first, c.count)), Some((0, 2)));
        let sealed_at = log.sealed_segments()[1]
            .sealed_at
            .expect("sealed by a roll");
        const WAIT_MAX: Duration = Duration::from_secs(15);
        let mut deferral = Deferral {
            now: sealed_at,
            wait_max: WAIT_MAX,
            retry_at: None,
        };
        // Ten records appended since the newest sealed segment rolled: fewer than twice
        // the live ones.
        let deferred = best_group(0, &log, &none, (settings(), 0), Some(&mut deferral));
        let newest_waits = Some((0, 1));
        assert_eq!(deferred.map(|c| (c.first, c.count)), newest_waits);
        assert_eq!(deferral.retry_at, Some(sealed_at + WAIT_MAX));
        // At the longest deferral it is cleanable by age alone.
        deferral.now = sealed_at + WAIT_MAX;
        let aged = best_group(0, &log, &none, (settings(), 0), Some(&mut deferral));
        assert_eq!(aged, explicit);
        // Or once two rewrites of the keys have been appended (each new batch replaces the
        // one before: 11 live, then 30 appended since the roll).
        deferral.now = sealed_at;
        let mut rewrite = |log: &mut PartitionLog| {
            let next = log.next_offset();
            log.commit_append(BATCH_BYTES, next + RECORDS_PER_BATCH - 1);
            dead(log, next - RECORDS_PER_BATCH..next);
            best_group(0, log, &none, (settings(), 0), Some(&mut deferral))
        };
        let once = rewrite(&mut log);
        assert_eq!(
            once.map(|c| (c.first, c.count)),
            newest_waits,
            "20 appended, 11 live"
        );
        let rewritten = rewrite(&mut log);
        assert_eq!(rewritten.map(|c| (c.first, c.count)), Some((0, 2)));
    }

    #[test]
    fn only_the_newest_sealed_segment_waits_while_fresh_ones_keep_coming() {
        // Full-segment rolls in a storm: a fresh segment is always there. Twelve sealed
        // segments, all dead but the newest three; 40 records live, so the newest seven
        // are fresh by the rewrite rule (fewer than 80 records appended since their seals).
        let mut log = log(12);
        let none = BTreeSet::new();
        dead(&mut log, 0..90);
        let newest_at = log.sealed_segments()[11].sealed_at.unwrap();
        const WAIT_MAX: Duration = Duration::from_secs(15);
        let mut deferral = Deferral {
            now: newest_at,
            wait_max: WAIT_MAX,
            retry_at: None,
        };
        // The nine dead segments and the first live one, whose 60 bytes fit in one segment:
        // the newest alone waits, and the others are not all it could hold back.
        let best = best_group(0, &log, &none, (settings(), 0), Some(&mut deferral)).unwrap();
        assert_eq!((best.first, best.count), (0, 10));
        assert_eq!(deferral.retry_at, Some(newest_at + WAIT_MAX));
    }

    #[test]
    fn clean_segments_are_left_alone_and_groups_split_at_quarantined_ones() {
        let mut log = log(3);
        assert_eq!(log.sealed_segments().len(), 3);
        let none = BTreeSet::new();
        assert_eq!(best_group(0, &log, &none, (settings(), 0), None), None);
        dead(&mut log, 10..14); // 40 % dirty: below the ratio
        assert_eq!(best_group(0, &log, &none, (settings(), 0), None), None);
        dead(&mut log, 14..16); // 60 %
        dead(&mut log, 20..29); // 90 %
        let best = best_group(0, &log, &none, (settings(), 0), None).unwrap();
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
        let best = best_group(0, &log, &quarantined, (settings(), 0), None).unwrap();
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
        assert_eq!(best_group(0, &log, &none, (settings(), 10_000), None), None);
        // In the first segment, past delete.retention.ms: cleanable, tombstones may go.
        dead(&mut log, 5..6);
        log.table_mut().note_tombstone(5, 100);
        let best = best_group(0, &log, &none, (settings(), 10_000), None).unwrap();
        assert_eq!(best.first, 0);
        assert_eq!(best.drop_tombstones_through_ms, Some(9_000));
        // Not yet past retention: nothing to do.
        assert_eq!(best_group(0, &log, &none, (settings(), 1_000), None), None);
        // Quarantining the first segment: the next group no longer starts the log.
        let quarantined = BTreeSet::from([0]);
        assert_eq!(
            best_group(0, &log, &quarantined, (settings(), 10_000), None),
            None
        );
    }
}
