//! Which records of one segment are dead: a bitmap over the segment's offsets, kept up to
//! date as records die, so the compactor tells a dead record from a live one by its offset
//! alone, with neither a key decode nor a cache lookup, and no walk of the cache first.
//!
//! Bit `i` stands for the record at `base_offset + i`. A bit is set exactly when the
//! segment table's [`mark_dead`](super::liveness::SegmentTable::mark_dead) charges the
//! record: its key's value was replaced or removed, or it is a tombstone, or a group
//! metadata record superseded. Offsets with no record (a compacted segment's gaps) keep
//! whatever bit they had: nobody asks about them.
//!
//! A segment's map is bounded by its records: at most [`BITS_PER_RECORD_MAX`] bits per
//! record, plus [`SLACK_BITS`]. A fresh segment's offsets are contiguous (one bit per
//! record); a compacted segment's have gaps, and a segment compacted many times can span
//! far more offsets than it holds records. Marking past the bound drops the map and leaves
//! the segment *untracked*: the compactor then tests its records by key, as it did before
//! these maps existed. So memory stays within 8 bytes per record of the log (1 bit per
//! record for fresh segments), against the 48 bytes a key costs in the offset cache.

/// Bits a map may hold per record of its segment (beyond [`SLACK_BITS`]).
pub const BITS_PER_RECORD_MAX: u64 = 64;

/// Bits any map may hold whatever its record count: a small segment's gaps cost little.
pub const SLACK_BITS: u64 = 4096;

/// The dead records of one segment (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadRecords {
    /// Bit `i % 64` of word `i / 64`: the record at offset `base + i` is dead. Bits past the
    /// end are clear.
    words: Vec<u64>,
    /// The map was dropped: it would have outgrown its bound.
    untracked: bool,
}

impl DeadRecords {
    /// A map that starts with room for `records` records without growing, so appends to the
    /// active segment allocate nothing until it holds that many (its pages are touched only
    /// as records die).
    pub fn with_capacity(records: u64) -> DeadRecords {
        DeadRecords {
            words: Vec::with_capacity(words_for(records)),
            untracked: false,
        }
    }

    /// A map whose records are never looked up (tests, and segments nobody tracks).
    pub fn untracked() -> DeadRecords {
        DeadRecords {
            words: Vec::new(),
            untracked: true,
        }
    }

    /// Whether the map was dropped (see the module docs).
    pub fn is_untracked(&self) -> bool {
        self.untracked
    }

    /// Whether the record at offset `base + index` is dead; `None` when untracked.
    #[inline]
    pub fn is_dead(&self, index: u64) -> Option<bool> {
        if self.untracked {
            return None;
        }
        let word = usize::try_from(index / 64).ok()?;
        Some(self.words.get(word).is_some_and(|w| w & bit(index) != 0))
    }

    /// Marks the record at `base + index` dead, in a segment of `records` records. Grows
    /// the map up to its bound, and drops it past that.
    #[inline]
    pub fn mark(&mut self, index: u64, records: u64) {
        if self.untracked {
            return;
        }
        let bound = records
            .saturating_mul(BITS_PER_RECORD_MAX)
            .saturating_add(SLACK_BITS);
        let word = (index / 64) as usize;
        if index >= bound {
            *self = DeadRecords::untracked();
            return;
        }
        if word >= self.words.len() {
            // Past the capacity only in recovery (a segment replayed before its size is
            // known) or when a segment outgrows its expected records: not per commit.
            self.words.resize(word + 1, 0);
        }
        debug_assert!(
            self.words[word] & bit(index) == 0,
            "record {index} of its segment marked dead twice"
        );
        self.words[word] |= bit(index);
    }

    /// Makes room for records up to `records` without growing (see
    /// [`with_capacity`](Self::with_capacity)).
    pub fn reserve(&mut self, records: u64) {
        if !self.untracked {
            let words = words_for(records);
            self.words.reserve(words.saturating_sub(self.words.len()));
        }
    }

    /// Gives back the room reserved for appends: the segment is sealed.
    pub fn seal(&mut self) {
        self.words.shrink_to_fit();
    }

    /// The map of a segment that replaces consecutive segments, each given with its map and
    /// its first offset's distance from the new segment's base; the new segment holds
    /// `records` records and spans `span` offsets. Untracked if any part is, or if the span
    /// is past the new segment's bound.
    pub fn merged<'a>(
        parts: impl IntoIterator<Item = (u64, &'a DeadRecords)>,
        span: u64,
        records: u64,
    ) -> DeadRecords {
        let bound = records
            .saturating_mul(BITS_PER_RECORD_MAX)
            .saturating_add(SLACK_BITS);
        if span > bound {
            return DeadRecords::untracked();
        }
        let mut merged = DeadRecords::with_capacity(span);
        merged.words.resize(words_for(span), 0);
        for (shift, part) in parts {
            if part.untracked {
                return DeadRecords::untracked();
            }
            for (w, &word) in part.words.iter().enumerate() {
                let mut rest = word;
                // Bounded by the word's set bits.
                while rest != 0 {
                    let index = shift + (w as u64) * 64 + u64::from(rest.trailing_zeros());
                    rest &= rest - 1;
                    if index >= span {
                        return DeadRecords::untracked(); // a part past the span: not ours
                    }
                    merged.words[(index / 64) as usize] |= bit(index);
                }
            }
        }
        merged
    }

    /// Bytes the map holds on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.words.capacity() * 8
    }
}

fn words_for(bits: u64) -> usize {
    usize::try_from(bits.div_ceil(64)).unwrap_or(usize::MAX)
}

#[inline]
fn bit(index: u64) -> u64 {
    1 << (index % 64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marked_records_read_dead_and_the_rest_live() {
        let mut map = DeadRecords::with_capacity(100);
        for index in [0, 63, 64, 99] {
            map.mark(index, 100);
        }
        for index in 0..200 {
            let dead = [0, 63, 64, 99].contains(&index);
            assert_eq!(map.is_dead(index), Some(dead), "record {index}");
        }
    }

    #[test]
    fn appends_within_the_capacity_do_not_grow_the_map() {
        let mut map = DeadRecords::with_capacity(1000);
        let reserved = map.heap_bytes();
        for index in 0..1000 {
            map.mark(index, 1000);
        }
        assert_eq!(map.heap_bytes(), reserved);
        map.seal();
        assert_eq!(map.heap_bytes(), 1000usize.div_ceil(64) * 8);
    }

    #[test]
    fn a_map_marked_past_its_bound_is_dropped_and_stays_untracked() {
        let mut map = DeadRecords::default();
        map.mark(SLACK_BITS - 1, 0);
        assert_eq!(map.is_dead(SLACK_BITS - 1), Some(true));
        // Ten records: the bound is 640 bits past the slack.
        map.mark(SLACK_BITS + 10 * BITS_PER_RECORD_MAX, 10);
        assert!(map.is_untracked());
        assert_eq!(map.is_dead(SLACK_BITS - 1), None);
        map.mark(0, 10);
        assert_eq!((map.is_dead(0), map.heap_bytes()), (None, 0));
    }

    #[test]
    fn merged_maps_keep_each_part_at_its_distance_from_the_new_base() {
        let mut first = DeadRecords::default();
        first.mark(3, 10);
        let mut second = DeadRecords::default();
        second.mark(0, 10);
        second.mark(65, 100);
        let merged = DeadRecords::merged([(0, &first), (10, &second)], 100, 20);
        let dead: Vec<u64> = (0..100)
            .filter(|&i| merged.is_dead(i) == Some(true))
            .collect();
        assert_eq!(dead, vec![3, 10, 75]);
        // Any untracked part, or a span past the bound, leaves the result untracked.
        let untracked = DeadRecords::untracked();
        assert!(DeadRecords::merged([(0, &first), (10, &untracked)], 100, 20).is_untracked());
        assert!(DeadRecords::merged([(0, &first)], SLACK_BITS + 65, 1).is_untracked());
        // A part reaching past the span is not this segment's.
        assert!(DeadRecords::merged([(95, &second)], 100, 20).is_untracked());
    }
}
