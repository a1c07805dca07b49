//! Per-segment live/dead accounting, the compactor's input.
//!
//! The in-memory state decides liveness: an offset commit record is live iff the offset
//! cache's entry for its key points at the record's offset, a group metadata record iff it
//! is the group's latest. So nothing is scanned to find dead records: whenever a key's value
//! is replaced or removed (in a flush, or in recovery's replay), the shard calls
//! [`SegmentTable::mark_dead`] with the old record's offset, and the table charges it to the
//! segment holding that offset.
//!
//! Counting is in records, not bytes: the cache stores a record's offset but not its size,
//! and keeping the size would cost every key 4 more bytes for a number only the compactor
//! needs. A segment's live bytes are estimated as `len × live / records` (the records of an
//! offsets partition are of similar size: same key shape, same value version); the dirty
//! ratio the compactor compares with `min.cleanable.dirty.ratio` is `dead / records`.
//!
//! Tombstones count as dead from the moment they are written (they will go), and as live in
//! the segment a compaction writes while they are retained (so a retained tombstone does not
//! keep its segment dirty). Control, transactional and unknown records are always live.
//!
//! Beside the counts, each segment keeps *which* of its records are dead
//! ([`DeadRecords`]), so the compactor drops a dead record by its offset alone.

use super::dead_records::DeadRecords;

/// Sentinel for "no tombstone in the segment".
pub const NO_TOMBSTONE_MS: i64 = i64::MAX;

/// Record counts of one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentStats {
    /// Offset its name carries.
    pub base_offset: i64,
    /// Records in the segment.
    pub records: u64,
    /// Records still live (see the module docs).
    pub live: u64,
    /// Tombstones in the segment.
    pub tombstones: u64,
    /// Timestamp of its oldest tombstone, [`NO_TOMBSTONE_MS`] if none.
    pub tombstone_min_timestamp_ms: i64,
    /// Which of its records are dead.
    pub dead_records: DeadRecords,
}

impl SegmentStats {
    /// An empty segment at `base_offset`.
    pub fn new(base_offset: i64) -> SegmentStats {
        SegmentStats {
            base_offset,
            records: 0,
            live: 0,
            tombstones: 0,
            tombstone_min_timestamp_ms: NO_TOMBSTONE_MS,
            dead_records: DeadRecords::default(),
        }
    }

    /// Records no longer live.
    pub fn dead(&self) -> u64 {
        self.records - self.live
    }

    /// Live bytes of a segment of `len` bytes, estimated from the record counts.
    pub fn live_bytes_estimate(&self, len: u64) -> u64 {
        if self.records == 0 {
            return 0;
        }
        (u128::from(len) * u128::from(self.live) / u128::from(self.records)) as u64
    }
}

/// The stats of every segment of one partition, in offset order; the last is the active
/// segment's.
#[derive(Debug, Clone, Default)]
pub struct SegmentTable {
    segments: Vec<SegmentStats>,
}

impl SegmentTable {
    /// The stats, in offset order.
    pub fn segments(&self) -> &[SegmentStats] {
        &self.segments
    }

    /// Heap bytes of the segments' dead-record maps.
    pub fn dead_records_bytes(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| s.dead_records.heap_bytes() as u64)
            .sum()
    }

    /// Segments whose dead-record map was dropped.
    pub fn untracked_segments(&self) -> u32 {
        let untracked = self
            .segments
            .iter()
            .filter(|s| s.dead_records.is_untracked());
        untracked.count() as u32
    }

    /// Starts accounting for a new last segment; the one before is sealed.
    pub fn push_segment(&mut self, base_offset: i64) {
        debug_assert!(
            self.segments
                .last()
                .is_none_or(|s| s.base_offset < base_offset)
        );
        if let Some(last) = self.segments.last_mut() {
            let span = u64::try_from(base_offset - last.base_offset).unwrap_or(0);
            last.dead_records.seal(span, last.records);
        }
        self.segments.push(SegmentStats::new(base_offset));
    }

    /// Reserves room in the last segment's dead-record map for `records` records, so
    /// appends to it allocate nothing (see [`DeadRecords::reserve`]).
    pub fn reserve_active(&mut self, records: u64) {
        if let Some(last) = self.segments.last_mut() {
            last.dead_records.reserve(records);
        }
    }

    /// Counts `count` new live records appended to the last segment.
    pub fn add_records(&mut self, count: u64) {
        if let Some(last) = self.segments.last_mut() {
            last.records += count;
            last.live += count;
        }
    }

    fn index_of(&self, offset: i64) -> Option<usize> {
        // Most records die in the active segment (a key committed again soon after): one
        // comparison instead of a search, once per replaced key on the commit path.
        if let Some(last) = self.segments.last()
            && offset >= last.base_offset
        {
            return Some(self.segments.len() - 1);
        }
        let after = self.segments.partition_point(|s| s.base_offset <= offset);
        after.checked_sub(1)
    }

    /// The record at `offset` is no longer live. Returns whether it lay in a sealed segment
    /// (one the compactor could now find worth cleaning).
    pub fn mark_dead(&mut self, offset: i64) -> bool {
        let Some(index) = self.index_of(offset) else {
            return false;
        };
        let sealed = index + 1 < self.segments.len();
        let segment = &mut self.segments[index];
        debug_assert!(
            segment.live > 0,
            "dead record {offset} in a segment with none live"
        );
        segment.live = segment.live.saturating_sub(1);
        // In the segment: `index_of` found it at or past the base.
        let within = (offset - segment.base_offset) as u64;
        segment.dead_records.mark(within);
        sealed
    }

    /// The record at `offset` is a tombstone written at `timestamp_ms` (already counted by
    /// [`add_records`](Self::add_records) and, as dead, by [`mark_dead`](Self::mark_dead)).
    pub fn note_tombstone(&mut self, offset: i64, timestamp_ms: i64) {
        if let Some(index) = self.index_of(offset) {
            let segment = &mut self.segments[index];
            segment.tombstones += 1;
            segment.tombstone_min_timestamp_ms =
                segment.tombstone_min_timestamp_ms.min(timestamp_ms);
        }
    }

    /// Replaces the stats of segments `range` by one segment's.
    pub fn replace(&mut self, range: std::ops::Range<usize>, stats: SegmentStats) {
        debug_assert!(
            range.end < self.segments.len(),
            "the active segment is never replaced"
        );
        self.segments.splice(range, [stats]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_records_are_charged_to_the_segment_holding_them() {
        let mut table = SegmentTable::default();
        table.push_segment(0);
        table.add_records(10);
        table.push_segment(10);
        table.add_records(5);
        assert!(table.mark_dead(3));
        assert!(table.mark_dead(9));
        assert!(!table.mark_dead(12));
        table.note_tombstone(11, 500);
        table.note_tombstone(14, 300);
        let [sealed, active] = table.segments() else {
            panic!("two segments")
        };
        assert_eq!((sealed.records, sealed.live, sealed.dead()), (10, 8, 2));
        assert_eq!((active.records, active.live), (5, 4));
        assert_eq!(active.tombstones, 2);
        assert_eq!(active.tombstone_min_timestamp_ms, 300);
        assert_eq!(sealed.live_bytes_estimate(1000), 800);
        // Offsets below the first segment belong to no segment.
        table.replace(0..1, SegmentStats::new(2));
        assert!(!table.mark_dead(1));
        assert_eq!(table.segments()[0].base_offset, 2);
    }

    /// Recovery counts a compacted segment's records batch by batch and learns its span only
    /// when the next segment starts: a mark far into a sparse front (a retained tombstone)
    /// must not drop the map before the segment's count and span are known.
    #[test]
    fn a_sparse_segment_keeps_its_map_when_its_whole_count_fits_the_bound() {
        let mut table = SegmentTable::default();
        table.push_segment(0);
        table.add_records(1);
        table.add_records(1);
        table.mark_dead(10_000);
        table.add_records(200);
        table.push_segment(10_201);
        let sealed = &table.segments()[0].dead_records;
        assert_eq!(sealed.is_dead(10_000), Some(true));
        assert_eq!(sealed.is_dead(9_999), Some(false));
        // A segment this sparse (two records over 100,000 offsets) is left untracked.
        table.add_records(2);
        table.push_segment(110_201);
        assert!(table.segments()[1].dead_records.is_untracked());
    }
}
