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
//! A sealed segment's map is bounded by its records: at most [`BITS_PER_RECORD_MAX`] bits
//! per record, plus [`SLACK_BITS`]. A fresh segment's offsets are contiguous (one bit per
//! record); a compacted segment's have gaps, and a segment compacted many times can span
//! far more offsets than it holds records. A segment whose span is past the bound when it
//! is sealed (or written by a compaction) has its map dropped: it is *untracked*, and the
//! compactor tests its records by key, as it did before these maps existed. So memory stays
//! within 8 bytes per record of the log (1 bit per record for fresh segments), against the
//! 48 bytes a key costs in the offset cache. A sealed map covers its whole span, so marking
//! its records never grows it. While a segment is still being filled (the active one, or
//! one recovery is replaying, whose span is not known yet) its map grows as marks need, up
//! to [`MARK_BITS_MAX`].

/// Bits a map may hold per record of its segment (beyond [`SLACK_BITS`]).
pub const BITS_PER_RECORD_MAX: u64 = 64;

/// Bits any map may hold whatever its record count: a small segment's gaps cost little.
pub const SLACK_BITS: u64 = 4096;

/// Bits a map may grow to before its segment's span is known (16 MiB): a segment replayed by
/// recovery is sized only when the next one starts, and a mark past this drops the map
/// rather than grow it further. More than a fresh segment of the largest size
/// (`offsets.topic.segment.bytes` ≤ 2 GiB) holds at 17 bytes, the smallest record.
pub const MARK_BITS_MAX: u64 = 1 << 27;

/// The most bits a segment of `records` records may keep a map for.
fn bound_bits(records: u64) -> u64 {
    records
        .saturating_mul(BITS_PER_RECORD_MAX)
        .saturating_add(SLACK_BITS)
}

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

    /// Marks the record at `base + index` dead. Grows the map of a segment still being
    /// filled (up to [`MARK_BITS_MAX`], and drops it past that); a sealed segment's map
    /// already covers its span.
    #[inline]
    pub fn mark(&mut self, index: u64) {
        if self.untracked {
            return;
        }
        if index >= MARK_BITS_MAX {
            *self = DeadRecords::untracked();
            return;
        }
        let word = (index / 64) as usize;
        if word >= self.words.len() {
            // Past the reservation only in recovery (a segment replayed before its span is
            // known) or when an active segment outgrows its expected records: not per
            // commit.
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

    /// The segment is sealed with `records` records over `span` offsets: the map is sized
    /// to the span (marks to come allocate nothing) and gives back the rest of what was
    /// reserved for appends, or is dropped if the span is past its bound.
    pub fn seal(&mut self, span: u64, records: u64) {
        if self.untracked {
            return;
        }
        if span > bound_bits(records) || self.words.len() > words_for(span) {
            // Too sparse to keep, or marked past its span (bad data): judged by key.
            *self = DeadRecords::untracked();
            return;
        }
        self.words.resize(words_for(span), 0);
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
        if span > bound_bits(records) {
            return DeadRecords::untracked();
        }
        let mut merged = vec![0u64; words_for(span)];
        for (shift, part) in parts {
            if part.untracked || !or_shifted(&mut merged, &part.words, shift, span) {
                return DeadRecords::untracked();
            }
        }
        DeadRecords {
            words: merged,
            untracked: false,
        }
    }

    /// Bytes the map holds on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.words.capacity() * 8
    }
}

/// ORs `part` into `map` a word at a time, `part`'s bit 0 at bit `shift` of `map`; false if
/// a set bit would land at or past `span` (the part is not within the span).
fn or_shifted(map: &mut [u64], part: &[u64], shift: u64, span: u64) -> bool {
    let (word_shift, bit_shift) = ((shift / 64) as usize, (shift % 64) as u32);
    for (w, &word) in part.iter().enumerate() {
        if word == 0 {
            continue;
        }
        let highest = shift + (w as u64) * 64 + u64::from(63 - word.leading_zeros());
        if highest >= span {
            return false;
        }
        map[word_shift + w] |= word << bit_shift;
        let carried = if bit_shift == 0 {
            0
        } else {
            word >> (64 - bit_shift)
        };
        if carried != 0 {
            // At or below `highest`, so inside the map.
            map[word_shift + w + 1] |= carried;
        }
    }
    true
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

    fn dead_in(map: &DeadRecords, span: u64) -> Vec<u64> {
        (0..span)
            .filter(|&i| map.is_dead(i) == Some(true))
            .collect()
    }

    #[test]
    fn marked_records_read_dead_and_the_rest_live() {
        let mut map = DeadRecords::with_capacity(100);
        for index in [0, 63, 64, 99] {
            map.mark(index);
        }
        assert_eq!(dead_in(&map, 200), vec![0, 63, 64, 99]);
        assert_eq!(map.is_dead(u64::MAX), Some(false));
    }

    #[test]
    fn appends_within_the_capacity_do_not_grow_the_map() {
        let mut map = DeadRecords::with_capacity(1000);
        let reserved = map.heap_bytes();
        for index in 0..1000 {
            map.mark(index);
        }
        assert_eq!(map.heap_bytes(), reserved);
        map.seal(1000, 1000);
        assert_eq!(map.heap_bytes(), 1000usize.div_ceil(64) * 8);
    }

    #[test]
    fn a_sealed_map_covers_its_span_so_later_marks_do_not_grow_it() {
        // Sealed with its last records still live: their marks come later.
        let mut map = DeadRecords::with_capacity(10_000);
        map.mark(3);
        map.seal(5000, 5000);
        let sealed = map.heap_bytes();
        assert_eq!(sealed, 5000usize.div_ceil(64) * 8);
        map.mark(4999);
        assert_eq!((map.heap_bytes(), map.is_dead(4999)), (sealed, Some(true)));
    }

    #[test]
    fn a_segment_sealed_past_its_bound_is_untracked_and_stays_so() {
        // A sparse front (a retained tombstone far into the span) is fine while filling.
        let mut map = DeadRecords::default();
        map.mark(10_000);
        assert_eq!(map.is_dead(10_000), Some(true));
        // 202 records: the bound is 202 × 64 + 4096 = 17,024 bits, past a 10,201 span.
        let mut kept = map.clone();
        kept.seal(10_201, 202);
        assert_eq!(kept.is_dead(10_000), Some(true));
        // Ten records over 5,000 offsets: past 10 × 64 + 4096.
        map.seal(5000 + 10 * BITS_PER_RECORD_MAX, 10);
        assert!(map.is_untracked());
        assert_eq!(map.is_dead(10_000), None);
        map.mark(0);
        assert_eq!((map.is_dead(0), map.heap_bytes()), (None, 0));
        // Marked past the span it is sealed with: not this segment's records.
        let mut past = DeadRecords::default();
        past.mark(200);
        past.seal(100, 100);
        assert!(past.is_untracked());
        // While filling, a mark past the absolute cap drops the map.
        let mut huge = DeadRecords::default();
        huge.mark(MARK_BITS_MAX);
        assert!(huge.is_untracked());
    }

    #[test]
    fn merged_maps_keep_each_part_at_its_distance_from_the_new_base() {
        let mut first = DeadRecords::default();
        first.mark(3);
        let mut second = DeadRecords::default();
        for index in [0, 53, 54, 65, 127] {
            second.mark(index);
        }
        let merged = DeadRecords::merged([(0, &first), (10, &second)], 140, 20);
        // Bits carried across a word boundary (53 + 10 = 63, 54 + 10 = 64) and into the
        // next word (127 + 10 = 137).
        assert_eq!(dead_in(&merged, 140), vec![3, 10, 63, 64, 75, 137]);
        // Word-aligned distances copy whole words.
        let aligned = DeadRecords::merged([(64, &second)], 200, 20);
        assert_eq!(dead_in(&aligned, 200), vec![64, 117, 118, 129, 191]);
        // Any untracked part, or a span past the bound, leaves the result untracked.
        let untracked = DeadRecords::untracked();
        assert!(DeadRecords::merged([(0, &first), (10, &untracked)], 140, 20).is_untracked());
        assert!(DeadRecords::merged([(0, &first)], SLACK_BITS + 65, 1).is_untracked());
        // A part reaching past the span is not this segment's.
        assert!(DeadRecords::merged([(95, &second)], 140, 20).is_untracked());
    }

    /// The word-wise merge agrees with setting each bit at its distance, for every
    /// distance within a word and a few past it.
    #[test]
    fn the_word_wise_merge_matches_a_bit_by_bit_one() {
        let mut part = DeadRecords::default();
        let marks: Vec<u64> = (0..300).filter(|i| i % 7 == 0 || i % 11 == 3).collect();
        for &index in &marks {
            part.mark(index);
        }
        for shift in 0..200 {
            let merged = DeadRecords::merged([(shift, &part)], 600, 600);
            let want: Vec<u64> = marks.iter().map(|i| i + shift).collect();
            assert_eq!(dead_in(&merged, 600), want, "shift {shift}");
        }
    }
}
