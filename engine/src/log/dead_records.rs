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
//! Bounds, so memory stays within 32 bytes per record of the log (1 bit per record for fresh
//! segments), below the 48 bytes a key costs in the offset cache:
//!
//! * A sealed segment's map holds at most [`BITS_PER_RECORD_MAX`] bits per record of the
//!   segment, plus [`SLACK_BITS`]. A fresh segment's offsets are contiguous (one bit per
//!   record); a compacted segment's have gaps, and a segment compacted many times can span far
//!   more offsets than it holds records. A segment sealed with a span past the bound has its
//!   map dropped: it is *untracked*, and the compactor tests its records by key, as it did
//!   before these maps existed.
//! * A compaction's output that is too sparse, or merges an untracked segment, keeps the map
//!   of the widest *suffix* of its range that its tracked inputs cover within the bound
//!   (`from`; indexes below it are untracked). A storm's compactions merge the sparse head of
//!   the log with fresh segments: without suffixes one sparse head left every later merge
//!   untracked.
//! * A sealed or merged map covers its whole span, so marking its records never grows it.
//!   While a segment is still being filled (the active one, or one recovery is replaying,
//!   whose span is not known yet) its map grows as marks need, up to [`MARK_BITS_MAX`].

/// Bits a map may hold per record of its segment (beyond [`SLACK_BITS`]): 32 bytes. A
/// commit storm's compactions (1.28 M keys, benchmarks.md, session 13) wrote segments
/// spanning 120 to over 1,000 offsets per record they keep; the suffix rule, not this bound,
/// keeps those tracked.
pub const BITS_PER_RECORD_MAX: u64 = 256;

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
    /// Bit `j % 64` of word `j / 64`: the record at offset `base + from + j` is dead. Bits
    /// past the end are clear.
    words: Vec<u64>,
    /// The first index tracked: records below `base + from` are untracked (a compaction kept
    /// only a suffix of its range, see the module docs). 0 but for such a compaction's map.
    from: u64,
    /// The map was dropped: it would have outgrown its bound.
    untracked: bool,
}

/// One segment a compaction replaces, as [`DeadRecords::merged`] takes it.
#[derive(Debug, Clone, Copy)]
pub struct MergedPart<'a> {
    /// Its base offset's distance from the new segment's base.
    pub distance: u64,
    /// Records it holds.
    pub records: u64,
    /// Its map.
    pub dead: &'a DeadRecords,
}

impl DeadRecords {
    /// A map whose records are never looked up (tests, and segments nobody tracks).
    pub fn untracked() -> DeadRecords {
        DeadRecords {
            words: Vec::new(),
            from: 0,
            untracked: true,
        }
    }

    /// Whether the map was dropped (see the module docs).
    pub fn is_untracked(&self) -> bool {
        self.untracked
    }

    /// Whether the record at offset `base + index` is dead; `None` when the map is untracked
    /// or `index` is below its tracked suffix.
    #[inline]
    pub fn is_dead(&self, index: u64) -> Option<bool> {
        if self.untracked || index < self.from {
            return None;
        }
        let j = index - self.from;
        let word = usize::try_from(j / 64).ok()?;
        Some(self.words.get(word).is_some_and(|w| w & bit(j) != 0))
    }

    /// Marks the record at `base + index` dead. Grows the map of a segment still being
    /// filled (up to [`MARK_BITS_MAX`], and drops it past that); a sealed segment's map
    /// already covers its span.
    #[inline]
    pub fn mark(&mut self, index: u64) {
        if self.untracked || index < self.from {
            return;
        }
        let index = index - self.from;
        let word = (index / 64) as usize;
        if word >= self.words.len() {
            // The cap bounds growth before a span is known; a sealed or merged map already
            // covers its span (within its own bound), whatever its size.
            if index >= MARK_BITS_MAX {
                *self = DeadRecords::untracked();
                return;
            }
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

    /// Makes room for `records` records without growing, so marking the active segment's
    /// records allocates nothing until it holds that many (the room's pages are touched only
    /// as records die).
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
        let tracked = span.saturating_sub(self.from);
        if tracked > bound_bits(records) || self.words.len() > words_for(tracked) {
            // Too sparse to keep, or marked past its span (bad data): judged by key.
            *self = DeadRecords::untracked();
            return;
        }
        self.words.resize(words_for(tracked), 0);
        self.words.shrink_to_fit();
    }

    /// The map of a segment that replaces consecutive segments (`parts`, in offset order);
    /// the new segment holds `records` records and spans `span` offsets. It tracks the widest
    /// suffix of the span that is within its bound and that its parts track: a part that is
    /// untracked (or tracks only a suffix) moves the start past it. Untracked if no suffix is
    /// left, or if a part within the suffix has a mark past the span (not this segment's).
    pub fn merged(parts: &[MergedPart<'_>], span: u64, records: u64) -> DeadRecords {
        // The parts reaching into a suffix from `from`, each with its end; a part with no
        // record has nothing to ask about.
        let reaching = |from: u64| {
            let ends = parts.iter().skip(1).map(|next| next.distance).chain([span]);
            parts
                .iter()
                .zip(ends)
                .filter(move |&(part, end)| end > from && part.records > 0)
        };
        let mut from = span.saturating_sub(bound_bits(records));
        // `from` only moves forward: parts the suffix has passed change nothing.
        for (part, end) in reaching(from) {
            if part.dead.untracked {
                from = from.max(end);
            } else if part.dead.from > 0 {
                // Tracks only its own suffix.
                from = from.max(part.distance + part.dead.from);
            }
        }
        if from >= span {
            return DeadRecords::untracked();
        }
        let mut words = vec![0u64; words_for(span - from)];
        for (part, _) in reaching(from) {
            // Where the part's bit 0 lands, relative to the suffix.
            let start = part.distance + part.dead.from;
            let within = match start.checked_sub(from) {
                Some(shift) => or_shifted(&mut words, &part.dead.words, shift, span - from),
                None => or_bits_from(&mut words, &part.dead.words, from - start, span - from),
            };
            if !within {
                return DeadRecords::untracked();
            }
        }
        DeadRecords {
            words,
            from,
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

/// ORs the bits of `part` from bit `skip` on into `map`, bit `skip` of `part` at bit 0 of
/// `map`, a word at a time (a part that starts before a merged map's suffix); false if a set
/// bit would land at or past `span`.
fn or_bits_from(map: &mut [u64], part: &[u64], skip: u64, span: u64) -> bool {
    let (word_skip, bit_skip) = ((skip / 64) as usize, (skip % 64) as u32);
    let Some(kept) = part.get(word_skip..) else {
        return true; // every bit of the part is below the suffix
    };
    for (t, &low) in kept.iter().enumerate() {
        let high = if bit_skip == 0 {
            0
        } else {
            kept.get(t + 1).map_or(0, |&next| next << (64 - bit_skip))
        };
        let word = (low >> bit_skip) | high;
        if word == 0 {
            continue;
        }
        let highest = (t as u64) * 64 + u64::from(63 - word.leading_zeros());
        if highest >= span {
            return false;
        }
        map[t] |= word;
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

    fn reserved(records: u64) -> DeadRecords {
        let mut map = DeadRecords::default();
        map.reserve(records);
        map
    }

    fn dead_in(map: &DeadRecords, span: u64) -> Vec<u64> {
        (0..span)
            .filter(|&i| map.is_dead(i) == Some(true))
            .collect()
    }

    #[test]
    fn marked_records_read_dead_and_the_rest_live() {
        let mut map = reserved(100);
        for index in [0, 63, 64, 99] {
            map.mark(index);
        }
        assert_eq!(dead_in(&map, 200), vec![0, 63, 64, 99]);
        assert_eq!(map.is_dead(u64::MAX), Some(false));
    }

    #[test]
    fn appends_within_the_capacity_do_not_grow_the_map() {
        let mut map = reserved(1000);
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
        let mut map = reserved(10_000);
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
        // 40 records: the bound (40 × 256 + 4096 = 14,336 bits) is past a 10,201 span.
        let mut kept = map.clone();
        kept.seal(10_201, 40);
        assert_eq!(kept.is_dead(10_000), Some(true));
        // Ten records over a span just past their bound.
        map.seal(SLACK_BITS + 10 * BITS_PER_RECORD_MAX + 1, 10);
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

    /// Parts as `merged` takes them: (distance, records, map).
    fn parts<'a>(parts: &[(u64, u64, &'a DeadRecords)]) -> Vec<MergedPart<'a>> {
        parts
            .iter()
            .map(|&(distance, records, dead)| MergedPart {
                distance,
                records,
                dead,
            })
            .collect()
    }

    #[test]
    fn merged_maps_keep_each_part_at_its_distance_from_the_new_base() {
        let mut first = DeadRecords::default();
        first.mark(3);
        let mut second = DeadRecords::default();
        for index in [0, 53, 54, 65, 127] {
            second.mark(index);
        }
        let both = parts(&[(0, 10, &first), (10, 10, &second)]);
        let merged = DeadRecords::merged(&both, 140, 20);
        // Bits carried across a word boundary (53 + 10 = 63, 54 + 10 = 64) and into the
        // next word (127 + 10 = 137).
        assert_eq!(dead_in(&merged, 140), vec![3, 10, 63, 64, 75, 137]);
        // Word-aligned distances copy whole words.
        let aligned = DeadRecords::merged(&parts(&[(64, 10, &second)]), 200, 20);
        assert_eq!(dead_in(&aligned, 200), vec![64, 117, 118, 129, 191]);
        // A part reaching past the span is not this segment's.
        let past = DeadRecords::merged(&parts(&[(95, 10, &second)]), 140, 20);
        assert!(past.is_untracked());
        // An untracked last part leaves nothing tracked; an empty one does not matter.
        let untracked = DeadRecords::untracked();
        let last = DeadRecords::merged(&parts(&[(0, 10, &first), (10, 5, &untracked)]), 140, 20);
        assert!(last.is_untracked());
        let empty = parts(&[(0, 10, &first), (10, 0, &untracked)]);
        assert_eq!(dead_in(&DeadRecords::merged(&empty, 140, 20), 140), vec![3]);
    }

    /// A storm's compactions merge a sparse (untracked) head of the log with fresh segments:
    /// the merged map keeps the suffix the fresh ones cover, and a map too wide for its
    /// records keeps the suffix its bound allows.
    #[test]
    fn merged_maps_keep_the_widest_tracked_suffix() {
        let untracked = DeadRecords::untracked();
        let mut fresh = DeadRecords::default();
        for index in [0, 5, 99] {
            fresh.mark(index);
        }
        let head_and_fresh = parts(&[(0, 3, &untracked), (1000, 100, &fresh)]);
        let merged = DeadRecords::merged(&head_and_fresh, 1100, 50);
        assert!(!merged.is_untracked());
        assert_eq!(merged.is_dead(999), None, "the head is untracked");
        assert_eq!(dead_in(&merged, 1100), vec![1000, 1005, 1099]);
        assert_eq!(merged.is_dead(1001), Some(false));
        // Merged again, behind a later fresh segment: the suffix starts where it did.
        let mut later = DeadRecords::default();
        later.mark(1);
        let again = parts(&[(0, 50, &merged), (1100, 10, &later)]);
        let twice = DeadRecords::merged(&again, 1200, 40);
        assert_eq!(twice.is_dead(999), None);
        assert_eq!(dead_in(&twice, 1200), vec![1000, 1005, 1099, 1101]);
        // Marks after the merge land in the suffix; below it they are ignored.
        let mut marked = twice.clone();
        marked.mark(1150);
        marked.mark(10);
        assert_eq!(dead_in(&marked, 1200), vec![1000, 1005, 1099, 1101, 1150]);
        // One record over a span past its bound: only the last `bound` offsets are tracked,
        // the part's bits below them dropped.
        let mut sparse = DeadRecords::default();
        sparse.mark(10);
        sparse.mark(9000);
        let bound = SLACK_BITS + BITS_PER_RECORD_MAX;
        let wide = DeadRecords::merged(&parts(&[(0, 1, &sparse)]), 10_000, 1);
        assert_eq!(wide.is_dead(10_000 - bound - 1), None);
        assert_eq!(dead_in(&wide, 10_000), vec![9000]);
        assert_eq!(wide.heap_bytes(), (bound as usize).div_ceil(64) * 8);
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
            let merged = DeadRecords::merged(&parts(&[(shift, 300, &part)]), 600, 600);
            let want: Vec<u64> = marks.iter().map(|i| i + shift).collect();
            assert_eq!(dead_in(&merged, 600), want, "shift {shift}");
        } // One record, so the bound (4352 bits) cuts the suffix inside the part at every
        // distance from a word boundary.
        let bound = SLACK_BITS + BITS_PER_RECORD_MAX;
        for cut in 0..200 {
            let span = bound + cut;
            let merged = DeadRecords::merged(&parts(&[(0, 1, &part)]), span, 1);
            let want: Vec<u64> = marks.iter().copied().filter(|&i| i >= cut).collect();
            assert_eq!(dead_in(&merged, span), want, "cut {cut}");
            if let Some(below) = cut.checked_sub(1) {
                assert_eq!(merged.is_dead(below), None, "cut {cut}");
            }
        }
    }
}
